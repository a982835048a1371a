"""PMA end to end: a real Prometheus scrapes real gateway and worker processes, and the
reader gets the numbers back through PromQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from qorch.metrics.reader import PrometheusReader
from tests.harness import gateway as gateway_mod
from tests.harness.cluster import wait_for
from tests.harness.controlplane import free_port
from tests.harness.prometheus import Prometheus

pytestmark = pytest.mark.prometheus
STD = 'OPENQASM 3.0; include "stdgates.inc"; '
GHZ = STD + "qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;"


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def test_prometheus_scrapes_gateway_and_worker_and_reader_reads_them(
    prometheus: Prometheus, session_dir: Path
) -> None:
    with gateway_mod.running(
        session_dir / "gateway-fake.log",
        "--provider",
        "fake",
        "--backend",
        "fake_manila",
        "--price-per-qpu-second",
        "1.6",
    ) as gw:
        worker_port = free_port()
        env = {
            **os.environ,
            "QORCH_QASM": GHZ,
            "QORCH_METRICS_PORT": str(worker_port),
            "QORCH_METRICS_ADDR": "127.0.0.1",
            "QORCH_METRICS_LINGER_SECONDS": "30",
            "QORCH_RESULT_PATH": str(session_dir / "worker-result.json"),
            "QORCH_GATEWAY_URL": gw.url,
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "qorch.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            prometheus.set_targets("gateway", [f"127.0.0.1:{gw.port}"])
            prometheus.set_targets("worker", [f"127.0.0.1:{worker_port}"])
            for i in range(3):
                post(
                    f"{gw.url}/v1/jobs",
                    {"job_id": f"m{i}", "backend": "fake_manila", "qasm": GHZ, "shots": 200},
                )
            done = wait_for(
                "gateway jobs done",
                lambda: all(
                    j["phase"] == "Done"
                    for j in post(f"{gw.url}/v1/jobs/status", {"job_ids": ["m0", "m1", "m2"]})[
                        "jobs"
                    ]
                ),
                120,
            )
            assert done
            reader = PrometheusReader(prometheus.url)

            def complete() -> Any:
                view = reader.read()
                backend = view.backends.get("fake_manila")
                ready = (
                    backend is not None
                    and backend.execution_p50_seconds is not None
                    and ("statevector", "CPU") in view.worker_execution_p50_seconds
                )
                return view if ready else None

            view = wait_for("metrics through PromQL", complete, 60, interval=1)
            with urllib.request.urlopen(f"{gw.url}/v1/backend", timeout=5) as resp:
                info = json.loads(resp.read())
        finally:
            worker.kill()
            worker.wait(5)
    assert view.available
    backend = view.backends["fake_manila"]
    cal = info["calibration"]
    assert backend.two_qubit_error == pytest.approx(cal["medianTwoQubitError"])
    assert backend.readout_error == pytest.approx(cal["medianReadoutError"])
    assert backend.t1_seconds == pytest.approx(cal["medianT1Seconds"])
    assert backend.queue_length == 0 and backend.up is True
    assert backend.execution_p50_seconds is not None and backend.execution_p50_seconds > 0
    assert view.worker_execution_p50_seconds[("statevector", "CPU")] > 0
    up = prometheus.query('max_over_time(up{job="worker"}[5m])')
    assert up and up[0]["value"][1] == "1"


def test_reader_degrades_clearly_when_prometheus_is_down() -> None:
    view = PrometheusReader(f"http://127.0.0.1:{free_port()}", timeout_seconds=1).read()
    assert view.available is False
    assert "unavailable" in view.reason and "Connection" in view.reason
    assert view.backends == {}
