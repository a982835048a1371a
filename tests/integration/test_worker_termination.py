"""A variational worker stopped mid-batch (SIGTERM: a relaunch, or its workflow deleted)
cancels the batch's gateway job instead of leaving it to run, and be billed, for nobody:
a real ``qorch worker`` process against a real ``qorch gateway`` (Aer) whose queue holds
its batch behind another client's job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devenv import gateway as gateway_mod
from devenv.cluster import wait_for
from qorch.worker.variational import Route
from tests.unit.test_worker_variational import env

BELL = 'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;'  # noqa: E501


def test_a_stopped_worker_cancels_its_batch_in_flight(tmp_path: Path) -> None:
    args = ("--provider", "aer", "--max-qubits", "4", "--batch-size", "1",
            "--min-job-seconds", "20")  # fmt: skip
    with gateway_mod.running(tmp_path / "gateway.log", *args) as gw:
        # Another client's job holds the device: the worker's first batch queues behind it.
        status, _, job = gateway_mod.call(
            "POST", f"{gw.url}/v1/jobs",
            {"job_id": "other", "backend": "aer_simulator", "qasm": BELL, "shots": 10},
        )  # fmt: skip
        assert status == 202, job
        route = Route("backend", "sim", gw.url, "aer_simulator")
        worker_env = {**os.environ, **env(tmp_path, route=route, maxIterations=20)}
        worker_env["QORCH_JOB_PREFIX"] = "ns.wf.vqe.1"
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "qorch.cli", "worker"],
            env=worker_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:

            def batch() -> dict[str, object] | None:
                code, _, state = gateway_mod.call("GET", f"{gw.url}/v1/jobs/ns.wf.vqe.1.e1")
                return state if code == 200 and state["phase"] == "Queued" else None

            wait_for("the worker's first batch queued at the gateway", batch, 60)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 143
        finally:
            worker.kill()
            log.close()
        _, _, state = gateway_mod.call("GET", f"{gw.url}/v1/jobs/ns.wf.vqe.1.e1")
        assert state["phase"] == "Cancelled", state
        result = (tmp_path / "termination-log").read_text()
        assert "terminated" in result, result
        _, _, other = gateway_mod.call("GET", f"{gw.url}/v1/jobs/other")
        assert other["phase"] in ("Running", "Done"), other  # nobody else's job is touched
