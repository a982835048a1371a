"""PMA end to end: a real Prometheus scrapes real gateway and worker processes, the
reader gets the numbers back through PromQL, and (issue 13, item 5) what it reads changes
where the planner puts work, joined to the right QuantumBackend object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devenv import gateway as gateway_mod
from devenv.cluster import wait_for
from devenv.controlplane import free_port
from devenv.prometheus import Prometheus
from qorch.api.backend import Provider
from qorch.metrics.reader import PrometheusReader, join_backends
from qorch.orchestrator import BackendInfo
from tests.integration.test_chart import docs_of, helm
from tests.integration.test_chart_gateways import gateway_args, gateway_of, render_values
from tests.unit.test_metrics_join import placed_on

pytestmark = pytest.mark.prometheus
__all__ = ["helm"]  # the module-scoped fixture that builds helm
STD = 'OPENQASM 3.0; include "stdgates.inc"; '
GHZ = STD + "qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;"
# About 3 s of noisy simulation at a million shots on fake_manila: a queue that lasts.
CHAIN = "h q[0]; cx q[0], q[1]; cx q[1], q[2]; cx q[2], q[3]; cx q[3], q[4]; "
HEAVY = STD + "qubit[5] q; bit[5] c; " + CHAIN * 10 + "c = measure q;"


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
            worker_target = f"127.0.0.1:{worker_port}"
            prometheus.set_targets("worker", [worker_target])
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
                backend = view.by_backend_name.get("fake_manila")
                # Each figure is its own query: one read may straddle the first scrape.
                # This worker scraped, not only a series another test's worker left in the
                # session's Prometheus: it is killed once this holds.
                scraped = prometheus.query(f'up{{job="worker",instance="{worker_target}"}}')
                ready = (
                    backend is not None
                    and backend.queue_length is not None
                    and backend.execution_p50_seconds is not None
                    and ("statevector", "CPU") in view.worker_execution_p50_seconds
                    and bool(scraped)
                    and scraped[0]["value"][1] == "1"
                )
                return view if ready else None

            view = wait_for("metrics through PromQL", complete, 60, interval=1)
            with urllib.request.urlopen(f"{gw.url}/v1/backend", timeout=5) as resp:
                info = json.loads(resp.read())
        finally:
            worker.kill()
            worker.wait(5)
    # The gateway logs what it decides, not every request: no access line per status poll
    # and no line per transpiler pass (the jobs above made dozens of each).
    log = (session_dir / "gateway-fake.log").read_text(errors="replace")
    assert "gateway for fake_manila" in log
    chatter = [
        line
        for line in log.splitlines()
        if " INFO aiohttp.access " in line or " INFO qiskit." in line
    ]
    assert not chatter, chatter[:5]
    assert view.available
    # A hand-run gateway (no --quantum-backend): its series are known by backend name, and
    # join the one QuantumBackend with that backendName, whatever the object is called.
    # (Prometheus is shared by the session: other tests' labelled gateways may be there.)
    assert not [name for name in view.backends if "manila" in name]
    backend = view.by_backend_name["fake_manila"]
    only = BackendInfo("manila", Provider.FAKE, 5, backend_name="fake_manila")
    assert join_backends(view, [only])[0].backends["manila"] == backend
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


def test_a_queue_read_through_prometheus_moves_work_to_the_other_gateway_of_one_backend(
    prometheus: Prometheus, session_dir: Path
) -> None:
    """Two QuantumBackends with one backendName (fake_manila), each served by its own
    gateway, which labels its series with the object it serves (as the chart runs it).
    Their statuses tie, so without live data the planner picks manila-a by name. Real load
    queues up at manila-a; read through the real Prometheus, that queue sends the subtask
    to manila-b. The old join looked objects up by the ``backend`` label, where both
    gateways are one series "fake_manila": it found nothing and placed on manila-a."""
    backends = [
        BackendInfo("manila-a", Provider.FAKE, 5, backend_name="fake_manila"),
        BackendInfo("manila-b", Provider.FAKE, 5, backend_name="fake_manila"),
    ]
    assert placed_on(backends, None) == "manila-a"
    argv = ("--provider", "fake", "--backend", "fake_manila", "--batch-size", "1")
    with (
        gateway_mod.running(
            session_dir / "gateway-manila-a.log", *argv, "--quantum-backend", "manila-a"
        ) as a,
        gateway_mod.running(
            session_dir / "gateway-manila-b.log", *argv, "--quantum-backend", "manila-b"
        ) as b,
    ):
        prometheus.set_targets("join", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        for i in range(12):
            # Other clients' work; distinct shots, so each job is a batch of its own. The
            # gateway's exit at the end of the block drops what is left.
            body = {"job_id": f"load{i}", "backend": "fake_manila", "qasm": HEAVY}
            post(f"{a.url}/v1/jobs", {**body, "shots": 1_000_000 - i})

        def busy_and_idle() -> bool:
            busy = prometheus.query('qorch_gateway_queue_length{quantum_backend="manila-a"}')
            # An idle gateway exports its pending jobs (0) from the start, its own queue
            # length only once it has had a job.
            idle = prometheus.query('qorch_backend_pending_jobs{quantum_backend="manila-b"}')
            return bool(busy and float(busy[0]["value"][1]) >= 5 and idle) and all(
                float(s["value"][1]) == 0 for s in idle
            )

        wait_for("manila-a's queue in Prometheus", busy_and_idle, 30, interval=0.5)
        view = PrometheusReader(prometheus.url).read()
        assert placed_on(backends, view) == "manila-b"
        busy, idle = view.backends["manila-a"], view.backends["manila-b"]
        assert (busy.queue_length or 0) >= 4 and not idle.queue_length and busy.up and idle.up
        # Every series of these two gateways names its object (Prometheus is shared by the
        # session: other tests' unlabelled gateways may be there too).
        assert "fake_manila" not in view.by_backend_name
        # What the old join keyed by: one series for both gateways, no object in it.
        old = prometheus.query("max by (backend) (qorch_gateway_queue_length{job='join'})")
        assert [s["metric"].get("backend") for s in old] == ["fake_manila"]


@pytest.mark.controlplane  # shares test_chart's helm fixture (built into the cache)
def test_the_chart_tells_each_gateway_its_quantum_backend(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chart backends of one device: each gateway labels its metrics with its own
    QuantumBackend, as parsed by the real `qorch gateway` CLI."""
    twins = [
        {"name": name, "provider": "fake", "backendName": "fake_torino", "numQubits": 133}
        for name in ("torino-a", "torino-b")
    ]
    docs = docs_of(render_values(helm, tmp_path, {"backends": twins}).stdout)
    for name in ("torino-a", "torino-b"):
        args = gateway_args(gateway_of(docs, name), monkeypatch)
        assert (args.quantum_backend, args.backend) == (name, "fake_torino")
