"""``ScriptedGateway``: an in-memory TEST DOUBLE of a quantum gateway (test code only:
the product always talks to real gateways over HTTP).

It computes nothing: a job is queued for ``queue_seconds``, runs for ``run_seconds``
and ends Done with a result that says it is fake (or Error, for backends listed in
``failing_backends``). It lets the operator's lifecycle be tested without the real
gateway service; the real one is ``qorch gateway``. ``tests.harness.scripted_operator``
runs ``qorch operator`` with it in place of the HTTP client.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from qorch.gateway.base import GatewayError, JobRequest
from qorch.orchestrator.snapshot import JobPhase, JobState


@dataclass
class _Job:
    request: JobRequest
    submitted: float
    cancelled: bool = False


@dataclass
class ScriptedGateway:
    queue_seconds: float = 0.5
    run_seconds: float = 0.5
    failing_backends: frozenset[str] = frozenset()
    known_backends: frozenset[str] | None = None
    jobs: dict[str, _Job] = field(default_factory=dict)
    submissions: int = 0

    async def submit(self, request: JobRequest) -> None:
        if self.known_backends is not None and request.backend not in self.known_backends:
            raise GatewayError(f"unknown backend {request.backend!r}", retryable=False)
        self.submissions += 1
        self.jobs.setdefault(request.job_id, _Job(request, time.monotonic()))

    async def status(self, backend: str, job_ids: Iterable[str]) -> dict[str, JobState]:
        now = time.monotonic()
        out: dict[str, JobState] = {}
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None:
                continue
            age = now - job.submitted
            if job.cancelled:
                out[job_id] = JobState(job_id, JobPhase.CANCELLED, "cancelled")
            elif age < self.queue_seconds:
                out[job_id] = JobState(job_id, JobPhase.QUEUED)
            elif age < self.queue_seconds + self.run_seconds:
                out[job_id] = JobState(job_id, JobPhase.RUNNING)
            elif job.request.backend in self.failing_backends:
                out[job_id] = JobState(job_id, JobPhase.ERROR, "scripted failure")
            else:
                out[job_id] = JobState(
                    job_id, JobPhase.DONE, result={"scripted": True}, qpu_seconds=self.run_seconds
                )
        return out

    async def cancel(self, backend: str, job_id: str) -> None:
        if job_id in self.jobs:
            self.jobs[job_id].cancelled = True
