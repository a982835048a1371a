"""A short slice of ``bench/scale.py`` (issue 16): the benchmark runs end to end on its own
control plane (20 CPU and 4 GPU KWOK nodes, the GPU trace replayed beside it), and what it
measures holds where it does not depend on the machine's speed: every workflow Succeeded,
every subtask got exactly one pod and it was bound and Succeeded, and no status came near
its size budget; the operator SIGKILLed half way is replaced, the replacement takes over
well inside the dead one's 60 s peering lease, and nothing runs twice. The timings and
ratios are the benchmark's to report, not this test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.controlplane import REPO
from qorch.orchestrator.plan import STATUS_BUDGET_BYTES
from qorch.traces import default_traces_dir

pytestmark = pytest.mark.controlplane

SHAPES = {"50x1": (50, 1), "5x10": (5, 10)}
OBJECT_LIMIT_BYTES = 256 * 1024


def test_the_scale_benchmark_places_every_subtask_once(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    # The GPU trace beside it where this machine has the traces (``../shared/data``).
    background = (default_traces_dir() / "gpu-cluster").is_dir()
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--shapes", ",".join(SHAPES),
         "--json", str(out), "--workdir", str(tmp_path / "work"), "--timeout", "240",
         "--kill-at", "0.5",
         *([] if background else ["--no-background"])],
        timeout=900, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:]
    figures = json.loads(out.read_text())
    if background:
        assert figures["settings"]["background"]["planned_pods"] > 0
    assert [r["shape"] for r in figures["results"]] == list(SHAPES)
    for result in figures["results"]:
        w, k = SHAPES[result["shape"]]
        sched, qorch = result["scheduler"], result["qorch"]
        assert sched["complete"] and sched["pods_seen"] == w * k, sched
        assert sched["all_bound_s"] > 0 and sched["all_succeeded_s"] >= sched["all_bound_s"]
        assert qorch["complete"], qorch["stuck"]
        assert qorch["workflows"] == {"Succeeded": w}, qorch["workflows"]
        # Exactly one pod per subtask: as many pods as subtasks, none shared by two.
        assert qorch["pods_seen"] == w * k and qorch["duplicate_subtasks"] == 0, qorch
        assert qorch["failed_pods"] == 0 and qorch["all_succeeded_s"] is not None
        assert qorch["all_bound_s"] is not None and qorch["workflows_succeeded_s"] is not None
        assert 0 < qorch["max_status_bytes"] <= STATUS_BUDGET_BYTES
        assert qorch["max_event_bytes"] < OBJECT_LIMIT_BYTES
        assert qorch["status_writes_per_workflow"] >= 1
        assert qorch["operator_cpu_s"] > 0 and qorch["operator_peak_rss_mib"] > 0
        assert qorch["background_failed"] == 0 and sched["background_failed"] == 0
        assert result["ratio_bound"] > 0 and result["ratio_succeeded"] > 0
        # SIGKILLed half way: the rest completed (above, nothing twice), and the new
        # operator took over without waiting out the dead one's 60 s peering lease.
        assert qorch["killed_at_pods"] >= w * k // 2, qorch
        assert qorch["takeover_s"] is not None and qorch["takeover_s"] < 45, qorch
    _prices_the_requests_of(out, tmp_path)


def _prices_the_requests_of(scale_json: Path, tmp_path: Path) -> None:
    """``bench/apiserver_cost.py`` on the scale run's figures: every kind of request is
    priced, and the Qorch phase's extra requests are the workflows' own (one apply each,
    every status write), so the floor it derives counts what the phase sent."""
    out = tmp_path / "cost.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "apiserver_cost.py"), "--requests", "40",
         "--rounds", "1", "--scale-json", str(scale_json), "--json", str(out),
         "--workdir", str(tmp_path / "cost")],
        timeout=300, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:]
    cost = json.loads(out.read_text())
    assert set(cost["prices_ms"]) == {
        "APPLY hybridworkflows", "PATCH hybridworkflows status", "POST events", "POST pods",
        "PATCH pods status",
    }  # fmt: skip
    prices = cost["prices_ms"]
    for kind in ("APPLY hybridworkflows", "PATCH hybridworkflows status"):
        assert set(prices[kind]) == {"1", "10", "100"}, prices  # per workflow size
    assert all(ms > 0 for by_size in prices.values() for ms in by_size.values()), prices
    # What is priced per size is that size: 100 subtasks' status is ~55 KB, one's ~1 KB.
    status = prices["PATCH hybridworkflows status"]
    assert status["100"] > 3 * status["1"], status
    figures = {r["shape"]: r for r in json.loads(scale_json.read_text())["results"]}
    assert [row["shape"] for row in cost["floors"]] == list(figures)
    for row in cost["floors"]:
        qorch = figures[row["shape"]]["qorch"]
        w, _ = SHAPES[row["shape"]]
        assert row["extra_requests"]["APPLY hybridworkflows"] == w
        assert row["extra_requests"]["PATCH hybridworkflows status"] == qorch["status_writes"]
        assert row["extra_request_cpu_s"] > 0
        assert 1 < row["floor_without_operator"] <= row["floor_with_operator"], row
