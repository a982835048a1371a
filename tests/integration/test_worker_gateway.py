"""A variational worker's batches at a real ``qorch gateway`` (Aer): the batch's result
comes back when its job ends (the submission waits for it, ``wait_seconds``), not at the
worker's next poll; a gateway that refuses to wait is polled instead."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devenv import gateway as gateway_mod
from qorch.gateway.base import JobRequest
from qorch.gateway.client import GatewayResponseError, HttpGatewayClient
from qorch.orchestrator.snapshot import JobPhase, JobState
from qorch.worker.variational import Evaluator, Route, VariationalTask
from tests.unit.test_worker_variational import env


def test_a_batch_at_a_gateway_ends_when_its_job_does_not_at_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status_requests: list[float] = []
    real_status = HttpGatewayClient.status

    async def status(self: HttpGatewayClient, *args: Any, **kw: Any) -> Any:
        status_requests.append(kw.get("wait_seconds", 0.0))
        return await real_status(self, *args, **kw)

    monkeypatch.setattr(HttpGatewayClient, "status", status)
    args = ("--provider", "aer", "--max-qubits", "4", "--min-job-seconds", "0.5")
    with gateway_mod.running(tmp_path / "gateway.log", *args) as gw:
        route = Route("backend", "sim", gw.url, "aer_simulator")
        task = VariationalTask.from_env(env(tmp_path, route=route, maxIterations=2))
        timings = {}
        requests = {}
        # The first: the gateway's first job, timed, then timed again once it is warm.
        for evaluation, wait in enumerate((10.0, 10.0, 0.0)):
            # Polls 3 s apart: a batch that waited for the next poll takes 3 s or more.
            evaluator = Evaluator(task, poll_seconds=3.0, wait_seconds=wait)
            try:
                point = np.zeros(evaluator.dimension)
                began, asked = time.monotonic(), len(status_requests)
                energy, _ = evaluator.energy(route, point, evaluation)
                timings[wait] = time.monotonic() - began
                requests[wait] = status_requests[asked:]
            finally:
                evaluator.close()
            assert math.isfinite(energy)
    assert 0.5 <= timings[10.0] < 2.5, timings  # the job holds the device 0.5 s
    assert timings[0.0] >= 3.0, timings  # the poll, as before
    assert requests[10.0] == []  # the submission's answer had the result
    assert requests[0.0] and set(requests[0.0]) == {0.0}


class RefusesWaiting:
    """A gateway client whose gateway predates ``wait_seconds`` (a rolling upgrade)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def submit_and_wait(self, request: JobRequest, wait_seconds: float) -> JobState:
        self.calls.append(("submit", wait_seconds))
        if wait_seconds:
            raise GatewayResponseError(
                "POST /v1/jobs: 400 unknown field 'wait_seconds'", retryable=False, status=400
            )
        return JobState(job_id=request.job_id, phase=JobPhase.QUEUED)

    async def status(self, backend: str, job_ids: list[str], *, wait_seconds: float = 0.0) -> Any:
        self.calls.append(("status", wait_seconds))
        return {}


def test_a_gateway_that_refuses_to_wait_is_polled(tmp_path: Path) -> None:
    task = VariationalTask.from_env(env(tmp_path, maxIterations=2))
    evaluator = Evaluator(task, poll_seconds=0.01, wait_seconds=10.0)
    client: Any = RefusesWaiting()
    request = JobRequest(job_id="j", backend="sim", qasm="", primitive="estimator")
    try:
        state = asyncio.run(evaluator._submit(client, request))
        assert state.phase is JobPhase.QUEUED
        asyncio.run(evaluator._status(client, "sim", "j"))
    finally:
        evaluator.close()
    assert client.calls == [("submit", 10.0), ("submit", 0.0), ("status", 0.0)]
    assert evaluator.wait_seconds == 0.0
