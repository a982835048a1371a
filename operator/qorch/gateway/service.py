"""The gateway's job store and dispatcher: validate at the door, queue, batch, execute.

Bad input is refused at submission with a specific message and never enters the queue,
so it cannot disturb other jobs. Queued jobs with the same primitive and shots run
together as one primitive job (one PUB each), which is how IBM bills and schedules
work best. Queued jobs can be cancelled (the orchestrator moves work that way).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from qiskit import QuantumCircuit

from qorch.gateway.backends import PreparedCircuit, QuantumBackendAdapter
from qorch.metrics.exporters import GatewayMetrics
from qorch.orchestrator.snapshot import JobPhase
from qorch.quantum.circuits import CircuitError, load_qasm
from qorch.quantum.results import estimator_result, sampler_result

log = logging.getLogger(__name__)
MAX_FINISHED_JOBS = 10_000


class GatewayRequestError(Exception):
    """A request the gateway refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Submission:
    job_id: str
    backend: str
    qasm: str
    primitive: str
    shots: int
    observables: tuple[str, ...]


@dataclass
class JobRecord:
    submission: Submission
    prepared: PreparedCircuit
    phase: JobPhase = JobPhase.QUEUED
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    message: str = ""
    qpu_seconds: float = 0.0
    remote: Any = None

    def to_json(self) -> dict[str, Any]:
        now = time.monotonic()
        started = self.started_at or (now if self.phase is JobPhase.QUEUED else None)
        return {
            "job_id": self.submission.job_id,
            "backend": self.submission.backend,
            "phase": self.phase.value,
            "message": self.message,
            "result": self.result,
            "qpu_seconds": self.qpu_seconds,
            "queue_seconds": round((started or now) - self.submitted_at, 6),
            "execution_seconds": (
                round(self.finished_at - self.started_at, 6)
                if self.finished_at and self.started_at
                else None
            ),
        }


class GatewayService:
    def __init__(
        self,
        adapter: QuantumBackendAdapter,
        metrics: GatewayMetrics,
        *,
        batch_size: int = 8,
        price_per_qpu_second: float = 0.0,
    ) -> None:
        self.adapter = adapter
        self.metrics = metrics
        self.batch_size = batch_size
        self.price = price_per_qpu_second
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._label = {"backend": adapter.name}
        metrics.price.labels(**self._label).set(price_per_qpu_second)
        metrics.num_qubits.labels(**self._label).set(adapter.num_qubits)
        metrics.healthy.labels(**self._label).set(1)
        self.refresh_calibration()

    # ---- requests -------------------------------------------------------------------

    def submit(self, sub: Submission) -> JobRecord:
        existing = self.jobs.get(sub.job_id)
        if existing is not None:
            if existing.submission != sub:
                raise GatewayRequestError(409, f"job {sub.job_id!r} exists with another payload")
            return existing  # a resubmission after a crash: the same job, not a second one
        if sub.backend != self.adapter.name:
            raise GatewayRequestError(
                404, f"unknown backend {sub.backend!r}: this gateway serves {self.adapter.name!r}"
            )
        circuit = self._parse(sub)
        try:
            prepared = self.adapter.prepare(circuit, sub.observables)
        except Exception as exc:  # transpiler errors for circuits the target cannot run
            raise GatewayRequestError(
                422, f"circuit cannot run on {self.adapter.name}: {exc}"
            ) from exc
        record = JobRecord(sub, prepared)
        self.jobs[sub.job_id] = record
        self._update_queue_gauge()
        self._wakeup.set()
        return record

    def _parse(self, sub: Submission) -> QuantumCircuit:
        if sub.primitive not in ("sampler", "estimator"):
            raise GatewayRequestError(
                422, f"primitive must be sampler or estimator, not {sub.primitive!r}"
            )
        if not 1 <= sub.shots <= 1_000_000:
            raise GatewayRequestError(422, f"shots must be 1..1000000, not {sub.shots}")
        try:
            circuit = load_qasm(sub.qasm)
        except CircuitError as exc:
            raise GatewayRequestError(422, str(exc)) from exc
        if circuit.num_qubits > self.adapter.num_qubits:
            raise GatewayRequestError(
                422,
                f"circuit has {circuit.num_qubits} qubits but {self.adapter.name} has "
                f"{self.adapter.num_qubits}",
            )
        if sub.primitive == "sampler":
            if circuit.num_clbits == 0:
                raise GatewayRequestError(
                    422, "a sampler circuit needs measurements (e.g. `c = measure q;`)"
                )
            if sub.observables:
                raise GatewayRequestError(422, "observables apply to the estimator only")
        else:
            if not sub.observables:
                raise GatewayRequestError(422, "the estimator needs at least one observable")
            for obs in sub.observables:
                if len(obs) != circuit.num_qubits or set(obs) - set("IXYZ"):
                    raise GatewayRequestError(
                        422, f"observable {obs!r} must be {circuit.num_qubits} letters of IXYZ"
                    )
            circuit = circuit.remove_final_measurements(inplace=False)
        return circuit

    def status(self, job_ids: list[str]) -> list[JobRecord]:
        return [self.jobs[j] for j in job_ids if j in self.jobs]

    def cancel(self, job_id: str) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            raise GatewayRequestError(404, f"unknown job {job_id!r}")
        if record.phase is JobPhase.QUEUED:
            self._finish(record, JobPhase.CANCELLED, "cancelled while queued")
        elif record.phase is JobPhase.RUNNING:
            if record.remote is None or not hasattr(record.remote, "cancel"):
                raise GatewayRequestError(
                    409, f"job {job_id!r} is already executing and cannot be cancelled"
                )
            record.remote.cancel()
            self._finish(record, JobPhase.CANCELLED, "cancelled while running")
        return record

    # ---- execution ------------------------------------------------------------------

    def queued(self) -> list[JobRecord]:
        return [j for j in self.jobs.values() if j.phase is JobPhase.QUEUED]

    def next_batch(self) -> list[JobRecord]:
        queued = self.queued()
        if not queued:
            return []
        key = (queued[0].submission.primitive, queued[0].submission.shots)
        same = [j for j in queued if (j.submission.primitive, j.submission.shots) == key]
        return same[: self.batch_size]

    async def run_forever(self) -> None:
        while True:
            batch = self.next_batch()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self.execute(batch)

    async def execute(self, batch: list[JobRecord]) -> None:
        now = time.monotonic()
        for record in batch:
            record.phase = JobPhase.RUNNING
            record.started_at = now
            self.metrics.queue_wait.labels(**self._label).observe(now - record.submitted_at)
        self._update_queue_gauge()
        primitive, shots = batch[0].submission.primitive, batch[0].submission.shots
        try:
            remote = await asyncio.to_thread(
                self.adapter.run, primitive, [r.prepared for r in batch], shots
            )
            for record in batch:
                record.remote = remote
            result = await asyncio.to_thread(remote.result)
            usage = await asyncio.to_thread(_usage_seconds, remote)
        except Exception as exc:
            log.warning("batch of %d %s jobs failed: %s", len(batch), primitive, exc)
            for record in batch:
                if record.phase is JobPhase.RUNNING:
                    self._finish(record, JobPhase.ERROR, f"execution failed: {exc}")
            return
        for i, record in enumerate(batch):
            if record.phase is not JobPhase.RUNNING:
                continue  # cancelled meanwhile
            record.result = (
                sampler_result(result[i])
                if primitive == "sampler"
                else estimator_result(result[i], record.submission.observables)
            )
            record.qpu_seconds = usage / len(batch)
            self._finish(record, JobPhase.DONE, "")

    def _finish(self, record: JobRecord, phase: JobPhase, message: str) -> None:
        record.phase = phase
        record.message = message
        record.finished_at = time.monotonic()
        outcome = {JobPhase.DONE: "done", JobPhase.ERROR: "error", JobPhase.CANCELLED: "cancelled"}[
            phase
        ]
        self.metrics.jobs.labels(**self._label, outcome=outcome).inc()
        if record.started_at is not None and phase is JobPhase.DONE:
            self.metrics.execution.labels(
                **self._label, primitive=record.submission.primitive
            ).observe(record.finished_at - record.started_at)
        if record.qpu_seconds:
            self.metrics.qpu_seconds.labels(**self._label).inc(record.qpu_seconds)
            self.metrics.cost.labels(**self._label).inc(record.qpu_seconds * self.price)
        self._update_queue_gauge()
        self._forget_old()

    def _update_queue_gauge(self) -> None:
        self.metrics.queue_length.labels(**self._label).set(len(self.queued()))

    def _forget_old(self) -> None:
        finished = [k for k, j in self.jobs.items() if j.finished_at is not None]
        for key in finished[: max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self.jobs[key]

    def refresh_calibration(self) -> None:
        cal = self.adapter.calibration()
        for gauge, value in (
            (self.metrics.two_qubit_error, cal.medianTwoQubitError),
            (self.metrics.readout_error, cal.medianReadoutError),
            (self.metrics.t1, cal.medianT1Seconds),
            (self.metrics.t2, cal.medianT2Seconds),
        ):
            if value is not None:
                gauge.labels(**self._label).set(value)
        pending = self.adapter.pending_jobs()
        self.metrics.backend_pending_jobs.labels(**self._label).set(
            pending if pending is not None else len(self.queued())
        )


def _usage_seconds(remote: Any) -> float:
    usage = getattr(remote, "usage", None)
    if usage is None:
        return 0.0
    try:
        return float(usage() or 0.0)
    except Exception:  # local jobs and some runtimes do not report usage
        return 0.0
