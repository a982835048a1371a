"""A simulated quantum backend for the digital twin: the gateway's view of one device on the
twin's clock (float seconds since the start of the replay).

Other clients' work is exogenous: ``others_wait(t)`` is how long a job submitted at ``t``
waits for the jobs already ahead of it (the twin derives it from a real queue-length trace
and a service-time model, ``qorch.sim.exogenous``), and ``others_length(t)`` how many there
are. Qorch's own jobs also queue behind each other, first come first served, one at a time:
a job starts when the others ahead of it are served and Qorch's previous job there has
ended, and runs for the seconds given at submission (what the twin decided the device
takes, not what the predictor said). A queued job may be cancelled; Qorch's jobs behind it
then move up. What the operator reads back is the gateway's ``JobState``, phase and queue
position included, so ``plan`` and the cluster pass see the twin as they see a gateway.

Pure and deterministic: no clock of its own, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from qorch.orchestrator.snapshot import JobPhase, JobState


@dataclass
class SimJob:
    job_id: str
    submitted: float
    run_seconds: float
    start: float = math.inf
    cancelled_at: float | None = None
    result: dict[str, object] | None = None

    @property
    def end(self) -> float:
        return self.start + self.run_seconds

    def phase(self, t: float) -> JobPhase:
        if self.cancelled_at is not None and self.cancelled_at <= t:
            return JobPhase.CANCELLED
        if t < self.start:
            return JobPhase.QUEUED
        return JobPhase.RUNNING if t < self.end else JobPhase.DONE


def _no_others(t: float) -> float:
    return 0.0


def _nobody(t: float) -> int:
    return 0


@dataclass
class SimBackend:
    """One device as its gateway shows it. ``others_wait`` / ``others_length``: the
    exogenous queue (default: none)."""

    name: str
    num_qubits: int
    others_wait: Callable[[float], float] = _no_others
    others_length: Callable[[float], int] = _nobody
    jobs: dict[str, SimJob] = field(default_factory=dict)
    _order: list[str] = field(default_factory=list)  # Qorch's jobs, by submission

    def submit(
        self, job_id: str, t: float, run_seconds: float, result: dict[str, object] | None = None
    ) -> SimJob:
        """Queue a job at ``t``; submitting a known id again changes nothing (as the
        gateway's idempotent submit)."""
        known = self.jobs.get(job_id)
        if known is not None:
            return known
        job = SimJob(job_id, t, max(run_seconds, 0.0), result=result)
        self.jobs[job_id] = job
        self._order.append(job_id)
        self._schedule(t)
        return job

    def cancel(self, job_id: str, t: float) -> bool:
        """Cancel a job still queued at ``t`` (True); one running or ended stays (False)."""
        job = self.jobs.get(job_id)
        if job is None or job.phase(t) is not JobPhase.QUEUED:
            return False
        job.cancelled_at = t
        self._schedule(t)
        return True

    def state(self, job_id: str, t: float) -> JobState | None:
        """The gateway's answer about a job at ``t`` (None: it never heard of it)."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        phase = job.phase(t)
        if phase is JobPhase.QUEUED:
            return JobState(job_id, phase, queue_position=self._ahead(job, t))
        if phase is JobPhase.CANCELLED:
            return JobState(job_id, phase, message="cancelled while queued")
        if phase is JobPhase.RUNNING:
            return JobState(job_id, phase, queue_seconds=job.start - job.submitted)
        return JobState(
            job_id,
            phase,
            result=job.result if job.result is not None else {"simulated": True},
            qpu_seconds=job.run_seconds,
            queue_seconds=job.start - job.submitted,
            execution_seconds=job.run_seconds,
        )

    def start_if_submitted(self, t: float) -> float:
        """When a job submitted at ``t`` would start: after the others' queue it finds and
        after Qorch's jobs already there (what a hindsight oracle knows)."""
        free = max(
            (
                j.end
                for j in self.jobs.values()
                if not (j.cancelled_at is not None and j.cancelled_at <= j.start)
            ),
            default=t,
        )
        return max(t + self.others_wait(t), free, t)

    def queue_length(self, t: float) -> int:
        """Jobs waiting at ``t``: the others' and Qorch's still queued."""
        ours = sum(
            1 for j in self.jobs.values() if j.submitted <= t and j.phase(t) is JobPhase.QUEUED
        )
        return self.others_length(t) + ours

    def next_change(self, t: float) -> float | None:
        """The first time after ``t`` at which one of Qorch's jobs starts or ends."""
        times = [
            x
            for j in self.jobs.values()
            if j.cancelled_at is None
            for x in (j.start, j.end)
            if t < x < math.inf
        ]
        return min(times, default=None)

    def busy_seconds(self, until: float) -> float:
        """Seconds Qorch's jobs held the device up to ``until`` (its utilisation by us)."""
        return sum(
            max(min(j.end, until) - j.start, 0.0)
            for j in self.jobs.values()
            if j.cancelled_at is None or j.cancelled_at > j.start
        )

    # -- the queue ---------------------------------------------------------------------------

    def _schedule(self, t: float) -> None:
        """Start times of Qorch's jobs not yet started at ``t``, first come first served:
        each after the others ahead of it at its submission and after Qorch's previous job
        there (a cancelled one no longer holds anybody up)."""
        free = t
        for job_id in self._order:
            job = self.jobs[job_id]
            if job.cancelled_at is not None and job.cancelled_at <= job.start:
                continue  # cancelled before it started: it holds nothing
            if job.start <= t:
                free = max(free, job.end)  # started already: it keeps its slot
                continue
            job.start = max(job.submitted + self.others_wait(job.submitted), free, t)
            free = job.end

    def _ahead(self, job: SimJob, t: float) -> int:
        """Jobs ahead of a queued one at ``t``: Qorch's submitted before it and not yet
        started, plus the others' queue it found (less what was served since, roughly:
        the fraction of its wait that is left)."""
        ours = 0
        for job_id in self._order:
            if job_id == job.job_id:
                break
            other = self.jobs[job_id]
            if other.phase(t) is JobPhase.QUEUED:
                ours += 1
        found = self.others_length(job.submitted)
        waited = max(t - job.submitted, 0.0)
        total = max(job.start - job.submitted, 1e-9)
        left = max(1.0 - waited / total, 0.0)
        return ours + round(found * left)
