"""A short slice of ``bench/gateway.py`` (issue 16): the benchmark runs end to end on a real
gateway, and what it measures holds where it does not depend on the machine's speed: every
job comes back with its shots, jobs submitted together run together (batches, not one
primitive call per job), and the gateway writes nothing to its log while serving them (no
line per request or per transpiler pass). The timings themselves are the benchmark's to
report, side by side on a quiet machine, not this test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devenv.controlplane import REPO

JOBS = 24


def test_the_gateway_benchmark_runs_and_batches_jobs_submitted_together(tmp_path: Path) -> None:
    out = tmp_path / "gateway.json"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gateway.py"), "--jobs", str(JOBS),
         "--in-flight", "8", "--lone", "2", "--backends", "aer,fake_manila",
         "--json", str(out), "--log-dir", str(tmp_path / "logs")],
        check=True, timeout=600, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    figures = json.loads(out.read_text())
    assert set(figures["backends"]) == {"aer", "fake_manila"}
    for name, backend in figures["backends"].items():
        gateway = backend["gateway"]
        sizes = {int(size): count for size, count in gateway["batch_sizes"].items()}
        assert sum(size * count for size, count in sizes.items()) == JOBS, (name, sizes)
        assert max(sizes) > 1 and gateway["batches"] < JOBS, (name, sizes)
        assert gateway["log_bytes_during_jobs"] == 0, (name, gateway["log_by_logger"])
        assert gateway["latency_ms"]["median"] > 0
        assert backend["direct"]["batched_s"] > 0 and backend["ratio_gateway_batched"] > 0
