"""The immutable view of the world one planning cycle decides on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qorch.api.backend import CalibrationSummary, Provider
from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    Placement,
    VariationalProgress,
)
from qorch.orchestrator.prediction import Prediction


class PodPhase(StrEnum):
    GATED = "Gated"  # still carries Qorch's scheduling gate
    PENDING = "Pending"  # gate removed, not running yet (unbound or starting)
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class PodState:
    name: str
    subtask: str
    attempt: int
    phase: PodPhase
    node: str | None = None
    message: str = ""
    result: dict[str, Any] | None = None
    deleting: bool = False
    # The apiserver refused to create or release the pod (422): the spec can never make
    # one, so the attempt fails for good instead of looking lost.
    permanent: bool = False
    # What the worker reported using (wallSeconds, cpuSeconds, peakMemoryBytes, method,
    # device), apart from the result; None when it reported nothing.
    usage: dict[str, float | str] | None = None
    # A variational loop's progress as its worker serves it (None: not read / not one).
    progress: VariationalProgress | None = None
    ip: str | None = None  # status.podIP
    variational: bool = False  # runs a variational loop (serves /progress)
    # Where the pod was released (its ``qorch.io/pool`` annotation; None while gated) and,
    # for a variational pod, the route its annotation holds and the subtask's move count
    # when that route was set: what a restart reads back if the status write after a
    # narrow or a re-route was lost.
    pool: str | None = None
    pool_moves: int = 0  # the subtask's moves when it was released there (a narrow)
    route: Placement | None = None
    route_moves: int = 0


class JobPhase(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    DONE = "Done"
    ERROR = "Error"
    CANCELLED = "Cancelled"
    # Not a gateway phase: the gateway did not answer, so the job's state is not known.
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class JobState:
    job_id: str
    phase: JobPhase
    message: str = ""
    result: dict[str, Any] | None = None
    qpu_seconds: float = 0.0
    # An Error the gateway knows will recur (the circuit cannot run there): no retry.
    permanent: bool = False
    # The provider's own job id (IBM), kept in the status so a gateway that lost its
    # memory re-attaches to the paid run instead of running it twice.
    remote_job_id: str | None = None
    # As the gateway measured them: submission to start, start to end (None: not known).
    queue_seconds: float | None = None
    execution_seconds: float | None = None
    # Jobs ahead of this queued one at its gateway (None: not known, e.g. IBM's own queue).
    queue_position: int | None = None


@dataclass(frozen=True)
class BackendInfo:
    name: str
    provider: Provider
    num_qubits: int
    healthy: bool = True
    queue_length: int = 0
    price_per_qpu_second: float = 0.0
    calibration: CalibrationSummary | None = None
    # The provider's name of the backend (spec.backendName: ``fake_torino``), which the
    # gateway labels its metrics ``backend`` with; several objects may share it.
    backend_name: str = ""


@dataclass(frozen=True)
class CircuitInfo:
    """What the operator learned parsing a circuit (parsing needs qiskit: not in here)."""

    num_qubits: int | None = None
    depth: int | None = None
    error: str | None = None
    num_clbits: int | None = None
    measurements: int | None = None  # 0: a sampler would have nothing to count
    parameters: tuple[str, ...] = ()  # unbound parameters (nothing can run them as is)
    transient: bool = False  # ``error`` may clear up (an unreadable ConfigMap): wait a while


@dataclass(frozen=True)
class BackendMetrics:
    """What Prometheus says about one quantum backend (None: no data yet)."""

    queue_length: float | None = None
    pending_jobs: float | None = None
    queue_wait_p50_seconds: float | None = None
    execution_p50_seconds: float | None = None
    two_qubit_error: float | None = None
    readout_error: float | None = None
    t1_seconds: float | None = None
    t2_seconds: float | None = None
    up: bool | None = None


@dataclass(frozen=True)
class MetricsView:
    """One reading of the live metrics. ``available`` False is the degraded mode: the
    planner falls back to pod/job states (and, later, predictions) and says so."""

    available: bool
    reason: str = ""
    # By QuantumBackend object name: what the planner looks up. Read from the gateways'
    # ``quantum_backend`` label, then joined by ``qorch.metrics.reader.join_backends``.
    backends: dict[str, BackendMetrics] = field(default_factory=dict)
    # Series of gateways that did not say which QuantumBackend they serve, by the
    # provider's backend name (``backend`` label): joined only where that is unambiguous.
    by_backend_name: dict[str, BackendMetrics] = field(default_factory=dict)
    worker_execution_p50_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    gpu_utilisation: float | None = None


@dataclass(frozen=True)
class PlannerConfig:
    retry_backoff_base: dt.timedelta = dt.timedelta(seconds=10)
    retry_backoff_max: dt.timedelta = dt.timedelta(minutes=5)
    # How long a launched pod may be missing from the cache before it counts as lost.
    lost_pod_grace: dt.timedelta = dt.timedelta(seconds=30)
    # How long a job's state may stay unknown (its gateway does not answer) before the
    # job is given up on and the subtask placed again.
    gateway_unknown_grace: dt.timedelta = dt.timedelta(seconds=60)
    # Queued and running gateway jobs are polled this often at first, backing off to
    # ``job_poll_max`` (a job that ran in 0.2 s is seen done within a poll, not a resync).
    job_poll_min: dt.timedelta = dt.timedelta(milliseconds=250)
    job_poll_max: dt.timedelta = dt.timedelta(seconds=5)
    # How long a circuit source that cannot be read yet (a ConfigMap applied after the
    # workflow) is waited for before the spec counts as invalid.
    source_wait: dt.timedelta = dt.timedelta(seconds=120)
    # A running variational loop's progress is read (and the status updated) this often.
    progress_poll: dt.timedelta = dt.timedelta(seconds=5)


@dataclass(frozen=True)
class MoveRequest:
    """The cluster pass wants a subtask elsewhere; ``reason`` carries the numbers behind it
    (predicted cost here vs there, the price of moving) for the Event and the history."""

    to: Placement
    reason: str
    # How the pass means it done ("narrow": a gated pod whose requests fit the new pool
    # as they are is released there instead of being replaced).
    how: str = ""


@dataclass(frozen=True)
class PredictorReport:
    """How this cycle's predictions were made. ``fallbacks``: one line per model output
    that was answered by the analytic model instead ("queue_wait/p50: <why>"); empty when
    every figure came from a validated model."""

    fallbacks: tuple[str, ...] = ()
    pairs: int = 0


@dataclass(frozen=True)
class WorkflowSnapshot:
    namespace: str
    name: str
    generation: int
    spec: HybridWorkflowSpec
    status: HybridWorkflowStatus
    now: dt.datetime
    pods: dict[str, PodState] = field(default_factory=dict)
    jobs: dict[str, JobState] = field(default_factory=dict)
    backends: dict[str, BackendInfo] = field(default_factory=dict)
    circuits: dict[str, CircuitInfo] = field(default_factory=dict)
    metrics: MetricsView | None = None  # None: no metrics source configured
    config: PlannerConfig = field(default_factory=PlannerConfig)
    created: dt.datetime | None = None  # the workflow's creationTimestamp
    # Predictions for the (subtask, resource) pairs that may be placed this cycle, and how
    # they were made (None: no prediction pass ran this cycle).
    predictions: Mapping[tuple[str, str], Prediction] = field(default_factory=dict)
    predictor: PredictorReport | None = None
    # The cluster pass's word for this workflow (empty: no pass ran, or it is not used):
    # where to start subtasks, which to move, which to hold back (and why).
    moves: Mapping[str, MoveRequest] = field(default_factory=dict)
    placements: Mapping[str, Placement] = field(default_factory=dict)
    held: Mapping[str, str] = field(default_factory=dict)
    # A cluster pass decided for this cycle: a gated pod is released only where the pass
    # commits it (a pass may hold it back, e.g. while its pool has no room).
    cluster_pass: bool = False
