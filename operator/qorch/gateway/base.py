"""What the operator needs from a quantum gateway. The HTTP client and fakes implement it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from qorch.orchestrator.snapshot import JobState


@dataclass(frozen=True)
class JobRequest:
    """One circuit evaluation. ``job_id`` is chosen by the caller, so a resubmission after
    a crash is recognised by the gateway instead of running twice."""

    job_id: str
    backend: str
    qasm: str
    primitive: str = "sampler"
    shots: int = 1024
    observables: tuple[str, ...] = field(default_factory=tuple)
    # Set on a resubmission when the provider already has the run (IBM job id): the
    # gateway re-attaches to it instead of paying for a second run.
    remote_job_id: str | None = None


@dataclass(frozen=True)
class GatewayTarget:
    """Where the gateway of a QuantumBackend object answers, and the backend name it serves
    (``spec.backendName``, e.g. ``ibm_torino``; the object's own name is the cluster's)."""

    url: str
    backend_name: str


class GatewayError(RuntimeError):
    """The gateway refused or could not be reached; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class GatewayClient(Protocol):
    async def submit(self, request: JobRequest) -> None: ...

    async def status(self, backend: str, job_ids: Iterable[str]) -> dict[str, JobState]:
        """States of the jobs the gateway knows; unknown ids are absent from the result."""
        ...

    async def cancel(self, backend: str, job_id: str) -> None: ...
