"""IBM Quantum traces: per-job queue and run times (2019-2020), per-minute queue lengths of
12 backends (2023), and measured run times of real jobs (the Qonductor regression set).
Sources are cited in ``../shared/data/README.md`` and ``models/MODEL_CARD.md``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from qorch.traces._io import PathLike, read_csv, resolve

QUEUE_JOBS_FILE: Final = "ibm-queue-jobs/jobs.csv"
QUEUE_LENGTH_FILE: Final = "ibm-queue-length/pending_jobs.csv.gz"
RUNTIME_FILE: Final = "ibm-job-runtime/runtime.csv"

JobStatus = Literal["DONE", "ERROR", "CANCELLED"]
_STATUSES: Final = ("DONE", "ERROR", "CANCELLED")


@dataclass(frozen=True, slots=True)
class QueueJob:
    """One job of Ravi et al.'s IBM Quantum trace (IISWC 2021). ``depth``, ``width`` and
    ``gate_ops`` are 0 for pulse jobs and some older ones; ``circuits``/``shots`` are 0 for
    jobs that never ran."""

    backend: str
    created_at: datetime  # UTC
    status: JobStatus
    queue_s: float
    run_s: float
    circuits: int
    shots: int
    depth: int
    width: int
    memory_slots: int
    backend_qubits: int
    gate_ops: int
    pulse: bool

    @property
    def started_at(self) -> datetime:
        """When the job left the queue (creation plus queue time)."""
        return self.created_at + timedelta(seconds=self.queue_s)


def read_queue_jobs(path: PathLike | None = None) -> tuple[QueueJob, ...]:
    """``ibm-queue-jobs/jobs.csv``, in file order."""
    file = resolve(path, QUEUE_JOBS_FILE)
    columns = (
        "backend",
        "created_at",
        "status",
        "queue_s",
        "run_s",
        "circuits",
        "shots",
        "depth",
        "width",
        "memory_slots",
        "backend_qubits",
        "gate_ops",
        "pulse",
    )
    jobs = []
    for r in read_csv(file, columns):
        status: JobStatus = r.choice("status", _STATUSES)  # type: ignore[assignment]
        jobs.append(
            QueueJob(
                backend=r.text("backend"),
                created_at=r.time("created_at"),
                status=status,
                queue_s=r.number("queue_s", minimum=0.0),
                run_s=r.number("run_s", minimum=0.0),
                circuits=r.integer("circuits", minimum=0),
                shots=r.integer("shots", minimum=0),
                depth=r.integer("depth", minimum=0),
                width=r.integer("width", minimum=0),
                memory_slots=r.integer("memory_slots", minimum=0),
                backend_qubits=r.integer("backend_qubits", minimum=0),
                gate_ops=r.integer("gate_ops", minimum=0),
                pulse=r.flag("pulse"),
            )
        )
    return tuple(jobs)


@dataclass(frozen=True, slots=True)
class QueueLengthSample:
    """The last status poll of a backend within one minute (Qonductor artifact)."""

    backend: str
    minute: datetime  # UTC, start of the minute
    pending_jobs: int
    operational: bool
    status_msg: str


def read_queue_lengths(path: PathLike | None = None) -> tuple[QueueLengthSample, ...]:
    """``ibm-queue-length/pending_jobs.csv.gz``, in file order (by minute, then backend)."""
    file = resolve(path, QUEUE_LENGTH_FILE)
    columns = ("backend", "minute_utc", "pending_jobs", "operational", "status_msg")
    return tuple(
        QueueLengthSample(
            backend=r.text("backend"),
            minute=r.time("minute_utc"),
            pending_jobs=r.integer("pending_jobs", minimum=0),
            operational=r.flag("operational"),
            status_msg=r.text("status_msg", allow_empty=True),
        )
        for r in read_csv(file, columns)
    )


@dataclass(frozen=True, slots=True)
class RuntimeJob:
    """One measured IBM job (Qonductor regression set): circuit quantities summed over the
    job's circuits, and the time IBM reported."""

    two_qubit_gates: int
    depth_sum: int
    qubits_sum: int
    shots: int
    circuits: int
    time_taken_s: float


def read_runtime_jobs(path: PathLike | None = None) -> tuple[RuntimeJob, ...]:
    """``ibm-job-runtime/runtime.csv``, in file order."""
    file = resolve(path, RUNTIME_FILE)
    columns = ("two_qubit_gates", "depth_sum", "qubits_sum", "shots", "circuits", "time_taken_s")
    jobs = []
    for r in read_csv(file, columns):
        time_taken = r.number("time_taken_s", minimum=0.0)
        if time_taken <= 0.0:
            raise r.error("time_taken_s", f"{time_taken!r} is not a positive duration")
        jobs.append(
            RuntimeJob(
                two_qubit_gates=r.integer("two_qubit_gates", minimum=0),
                depth_sum=r.integer("depth_sum", minimum=0),
                qubits_sum=r.integer("qubits_sum", minimum=0),
                shots=r.integer("shots", minimum=1),
                circuits=r.integer("circuits", minimum=1),
                time_taken_s=time_taken,
            )
        )
    return tuple(jobs)
