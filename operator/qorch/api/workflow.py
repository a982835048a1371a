"""The ``HybridWorkflow`` custom resource (namespaced, short name ``hwf``)."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator

from qorch.api.meta import (
    Condition,
    ResourceName,
    StrictModel,
    SubtaskName,
    schema_extra,
)

MAX_SUBTASKS = 200
# Kubernetes' rules for what ends up in pods: label/annotation keys and label values
# (checked on map keys by validation, which the schema cannot express cheaply).
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
MAX_QASM_BYTES = 65536
MAX_RESULT_BYTES = 4096
DEFAULT_THRESHOLD = 0.2
DEFAULT_HYSTERESIS = 0.05


class Primitive(StrEnum):
    SAMPLER = "sampler"
    ESTIMATOR = "estimator"


class ConfigMapKeyRef(StrictModel):
    name: ResourceName = Field(description="ConfigMap in the workflow's namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key holding the OpenQASM source.")


class CircuitSpec(StrictModel):
    """A circuit evaluation: runs on a quantum backend or is simulated on a classical pool."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": schema_extra(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "has(self.qasm) != has(self.configMapRef)",
                        "message": "give exactly one of qasm or configMapRef",
                    },
                    # Optional fields have no schema defaults, so every rule guards with has().
                    {
                        "rule": "!has(self.primitive) || self.primitive != 'estimator' || "
                        "(has(self.observables) && size(self.observables) > 0)",
                        "message": "an estimator circuit needs at least one observable",
                    },
                    {
                        "rule": "(has(self.primitive) && self.primitive == 'estimator') || "
                        "!has(self.observables)",
                        "message": "observables apply to the estimator primitive only",
                    },
                ]
            }
        )
    }

    qasm: str | None = Field(
        default=None,
        max_length=MAX_QASM_BYTES,
        description="OpenQASM 3 (or 2) source of the circuit.",
    )
    configMapRef: ConfigMapKeyRef | None = Field(
        default=None, description="ConfigMap key holding the OpenQASM source instead of qasm."
    )
    primitive: Primitive = Field(
        default=Primitive.SAMPLER, description="sampler (counts) or estimator (expectation values)."
    )
    shots: int = Field(default=1024, ge=1, le=1_000_000, description="Shots per evaluation.")
    observables: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Pauli strings for the estimator, e.g. 'ZZI' (leftmost = highest qubit).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CircuitSpec:
        if (self.qasm is None) == (self.configMapRef is None):
            raise ValueError("give exactly one of qasm or configMapRef")
        if self.primitive is Primitive.ESTIMATOR and not self.observables:
            raise ValueError("an estimator circuit needs at least one observable")
        if self.primitive is Primitive.SAMPLER and self.observables:
            raise ValueError("observables apply to the estimator primitive only")
        return self


class ClassicalResources(StrictModel):
    cpu: str = Field(
        default="500m",
        max_length=16,
        pattern=r"^([0-9]+m?|[0-9]*\.[0-9]+)$",
        description="CPU request, Kubernetes quantity.",
    )
    memory: str = Field(
        default="512Mi",
        max_length=16,
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
        description="Memory request and limit, Kubernetes quantity.",
    )
    gpu: int = Field(
        default=0, ge=0, le=16, description="nvidia.com/gpu count; >0 needs a GPU pool."
    )


class ClassicalSpec(StrictModel):
    """A classical step run as a pod from a container image."""

    image: str = Field(
        min_length=1, max_length=512, pattern=r"^\S+$", description="Container image."
    )
    command: list[str] = Field(
        default_factory=list, max_length=64, description="Entrypoint override."
    )
    args: list[str] = Field(default_factory=list, max_length=256)
    env: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Plain environment variables (no secrets here).",
    )
    resources: ClassicalResources = Field(default_factory=ClassicalResources)
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra annotations on the subtask's pods (e.g. for admission webhooks).",
    )


class Optimizer(StrEnum):
    COBYLA = "COBYLA"
    SPSA = "SPSA"


class PauliTerm(StrictModel):
    pauli: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[IXYZ]+$",
        description="Pauli string, one letter per qubit (leftmost = highest qubit).",
    )
    coefficient: float = Field(description="Real coefficient of the term.")


# Batches SPSA spends measuring the gradient before its first step (5 samples x 2).
SPSA_CALIBRATION_EVALUATIONS = 10


class VariationalSpec(StrictModel):
    """A variational loop (VQE, QAOA): an optimizer in a worker pod on a classical pool that
    sends one batch of circuits per evaluation to the resource Qorch currently routes it
    to, and minimises the energy of ``hamiltonian`` over the ansatz's parameters."""

    model_config = StrictModel.model_config | {
        "json_schema_extra": schema_extra(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "has(self.qasm) != has(self.configMapRef)",
                        "message": "give exactly one of qasm or configMapRef",
                    },
                ]
            }
        )
    }

    qasm: str | None = Field(
        default=None,
        max_length=MAX_QASM_BYTES,
        description="OpenQASM 3 source of the ansatz; its parameters are `input float[64]` "
        "declarations, in the order declared (initialPoint and the result follow it).",
    )
    configMapRef: ConfigMapKeyRef | None = Field(
        default=None, description="ConfigMap key holding the ansatz source instead of qasm."
    )
    hamiltonian: list[PauliTerm] = Field(
        min_length=1, max_length=256, description="The observable to minimise, a sum of terms."
    )
    optimizer: Optimizer = Field(default=Optimizer.COBYLA)
    maxIterations: int = Field(default=100, ge=1, le=10000)
    tolerance: float = Field(default=1e-4, ge=1e-12, le=1, description="Convergence tolerance.")
    initialPoint: list[float] | None = Field(
        default=None, max_length=1000, description="Start parameters (default 0.1 each)."
    )
    shots: int = Field(
        default=4096, ge=1, le=1_000_000, description="Shots per batch on a quantum backend."
    )
    resources: ClassicalResources = Field(
        default_factory=ClassicalResources, description="The optimizer pod's requests."
    )

    @model_validator(mode="after")
    def _one_source(self) -> VariationalSpec:
        if (self.qasm is None) == (self.configMapRef is None):
            raise ValueError("give exactly one of qasm or configMapRef")
        return self

    @property
    def wants_gpu(self) -> bool:
        """Its optimizer pod requests GPUs: it runs (and simulates) on a GPU pool only."""
        return self.resources.gpu > 0

    @property
    def max_evaluations(self) -> int:
        """The most batches the loop sends (``qorch worker``): COBYLA one per iteration;
        SPSA two per iteration and ten to calibrate its learning rate."""
        if self.optimizer is Optimizer.SPSA:
            return 2 * self.maxIterations + SPSA_CALIBRATION_EVALUATIONS
        return self.maxIterations


class SubtaskSpec(StrictModel):
    model_config = StrictModel.model_config | {
        "json_schema_extra": schema_extra(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "(has(self.circuit) ? 1 : 0) + (has(self.classical) ? 1 : 0)"
                        " + (has(self.variational) ? 1 : 0) == 1",
                        "message": "a subtask is exactly one of circuit, classical or variational",
                    },
                ]
            }
        )
    }

    name: SubtaskName = Field(description="Unique within the workflow; a DNS-1123 label.")
    dependsOn: list[SubtaskName] = Field(
        default_factory=list,
        max_length=50,
        description="Subtasks that must succeed before this one starts.",
        json_schema_extra=schema_extra(**{"x-kubernetes-list-type": "set"}),
    )
    circuit: CircuitSpec | None = None
    classical: ClassicalSpec | None = None
    variational: VariationalSpec | None = None
    maxRetries: int = Field(
        default=2, ge=0, le=10, description="Relaunches after a failed attempt before giving up."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SubtaskSpec:
        kinds = (self.circuit, self.classical, self.variational)
        if sum(k is not None for k in kinds) != 1:
            raise ValueError("a subtask is exactly one of circuit, classical or variational")
        return self

    @property
    def source(self) -> CircuitSpec | VariationalSpec | None:
        """Where the subtask's circuit (or ansatz) comes from; None for classical steps."""
        return self.circuit if self.circuit is not None else self.variational


class Toleration(StrictModel):
    key: str | None = Field(default=None, max_length=316, pattern=QUALIFIED_NAME)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ClassicalPool(StrictModel):
    """A set of nodes subtask pods may run on, chosen by node labels."""

    name: ResourceName
    nodeSelector: dict[str, str] = Field(
        default_factory=dict, max_length=16, description="Labels the pool's nodes carry."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=16)
    gpu: bool = Field(default=False, description="Nodes have nvidia.com/gpu.")
    maxQubits: int = Field(
        default=30, ge=1, le=100, description="Largest circuit this pool simulates exactly."
    )
    pricePerHourUSD: float | None = Field(
        default=None,
        ge=0,
        description="USD per hour of one worker pod on this pool (default: the operator's "
        "price for a CPU or a GPU pod, see the model card).",
    )


def default_pools() -> list[ClassicalPool]:
    return [
        ClassicalPool(name="cpu", nodeSelector={"qorch.io/pool": "cpu"}, maxQubits=28),
        ClassicalPool(
            name="gpu",
            nodeSelector={"qorch.io/pool": "gpu"},
            gpu=True,
            maxQubits=32,
            tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        ),
    ]


class ResourcesSpec(StrictModel):
    quantumBackends: list[ResourceName] = Field(
        default_factory=list,
        max_length=20,
        description="Names of cluster QuantumBackends this workflow may use.",
    )
    classicalPools: list[ClassicalPool] = Field(
        default_factory=default_pools,
        max_length=10,
        description="Classical node pools; default: cpu and gpu by the qorch.io/pool label.",
    )


class ObjectivePreset(StrEnum):
    SPEED = "speed"
    ACCURACY = "accuracy"
    COST = "cost"
    BALANCED = "balanced"


class Weights(StrictModel):
    time: float = Field(ge=0, le=1)
    error: float = Field(ge=0, le=1)
    cost: float = Field(ge=0, le=1)


class ObjectiveSpec(StrictModel):
    model_config = StrictModel.model_config | {
        "json_schema_extra": schema_extra(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "!has(self.weights) || "
                        "self.weights.time + self.weights.error + self.weights.cost > 0.0",
                        "message": "at least one weight must be positive",
                    },
                ]
            }
        )
    }

    preset: ObjectivePreset = Field(default=ObjectivePreset.BALANCED)
    weights: Weights | None = Field(
        default=None, description="Explicit weights; override the preset."
    )


class BudgetSpec(StrictModel):
    maxCostUSD: float | None = Field(default=None, ge=0, le=1e6)
    deadlineSeconds: int | None = Field(default=None, ge=1, le=30 * 86400)


class ReallocationSpec(StrictModel):
    model_config = StrictModel.model_config | {
        "json_schema_extra": schema_extra(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "(has(self.hysteresis) ? self.hysteresis : "
                        f"{DEFAULT_HYSTERESIS}) <= (has(self.threshold) ? self.threshold : "
                        f"{DEFAULT_THRESHOLD})",
                        "message": "hysteresis must not exceed threshold",
                    },
                ]
            }
        )
    }

    enabled: bool = True
    intervalSeconds: int = Field(default=15, ge=1, le=3600)
    threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        ge=0,
        le=1,
        description="Relative cost gain a move must beat: 1 - 2^(cost there - cost here), "
        "the cost being the workflow's weighted terms, one unit each for twice the time, "
        "ten points of fidelity or twice the spend (0.2: staying costs 1.25x what moving "
        "does).",
    )
    hysteresis: float = Field(
        default=DEFAULT_HYSTERESIS,
        ge=0,
        le=1,
        description="Added to threshold for a subtask that moved recently or would move "
        "back where it came from.",
    )
    maxMovesPerSubtask: int = Field(default=2, ge=0, le=10)

    @model_validator(mode="after")
    def _hysteresis_below_threshold(self) -> ReallocationSpec:
        if self.hysteresis > self.threshold:
            raise ValueError("hysteresis must not exceed threshold")
        return self


class HybridWorkflowSpec(StrictModel):
    subtasks: list[SubtaskSpec] = Field(
        min_length=1,
        max_length=MAX_SUBTASKS,
        description="The steps of the workflow, a DAG through dependsOn. Immutable.",
        # A map-list keyed by name: the apiserver itself rejects duplicate names.
        json_schema_extra=schema_extra(
            **{
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "x-kubernetes-validations": [
                    {
                        "rule": "self == oldSelf",
                        "message": "subtasks are immutable; create a new workflow to change them",
                    },
                ],
            }
        ),
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    reallocation: ReallocationSpec = Field(default_factory=ReallocationSpec)


class WorkflowPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class SubtaskPhase(StrEnum):
    PENDING = "Pending"  # waiting for dependencies
    LAUNCHING = "Launching"  # pod created gated (its pool not yet committed) or job submitted
    SCHEDULED = "Scheduled"  # placement applied (pod on its pool, job queued); not yet running
    RUNNING = "Running"
    RETRYING = "Retrying"  # last attempt failed; next one after backoff
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"  # never ran: the workflow failed first


class ResourceKind(StrEnum):
    POOL = "pool"
    BACKEND = "backend"


class Placement(StrictModel):
    kind: ResourceKind
    name: str = Field(max_length=63)


class HistoryEntry(StrictModel):
    time: str
    event: str = Field(max_length=64)
    message: str = Field(default="", max_length=1024)


class PredictedOutcome(StrictModel):
    """What the predictor expected of the placement that was chosen, kept beside the
    outcome so that the prediction error is visible per subtask."""

    source: Literal["model", "analytic"] = Field(
        description="model: every figure came from a loaded model; analytic: at least one "
        "came from the analytic fallback (notes say which)."
    )
    queueSecondsP10: float = Field(ge=0)
    queueSecondsP50: float = Field(ge=0)
    queueSecondsP90: float = Field(ge=0)
    runSeconds: float = Field(ge=0, description="QPU execution or simulation wall time.")
    fidelity: float = Field(ge=0, le=1, description="Expected success probability.")
    costUSD: float = Field(ge=0)
    peakMemoryBytes: int = Field(default=0, ge=0)
    notes: list[str] = Field(default_factory=list, max_length=5)


class ActualOutcome(StrictModel):
    """What the attempt that succeeded took (None: not reported)."""

    queueSeconds: float | None = Field(default=None, ge=0)
    runSeconds: float | None = Field(default=None, ge=0)
    costUSD: float | None = Field(default=None, ge=0)
    peakMemoryBytes: int | None = Field(default=None, ge=0)


class MoveIntent(StrictModel):
    """A move the planner committed to: recorded before the old attempt is cancelled, so that
    a restart between "cancel the old" and "start the new" neither loses the subtask nor
    takes the cancelled attempt for a failure."""

    to: Placement
    reason: str = Field(default="", max_length=1024)
    since: str
    relaunch: bool = Field(
        default=False,
        description="The old attempt runs (a simulation pod): it is stopped, its progress lost.",
    )


class VariationalProgress(StrictModel):
    """How far a variational loop got, as its worker last reported (it comes from inside
    a pod: bounded, finite, or refused)."""

    optimizer: str = Field(default="", max_length=16)
    iterations: int = Field(default=0, ge=0, le=2**53)
    evaluations: int = Field(default=0, ge=0, le=2**53, description="Batches sent so far.")
    energy: float | None = Field(
        default=None, allow_inf_nan=False, description="Energy of the last batch."
    )
    bestEnergy: float | None = Field(default=None, allow_inf_nan=False)
    batches: dict[str, int] = Field(
        default_factory=dict, max_length=64, description="Batches run per resource."
    )
    qpuSeconds: dict[str, float] = Field(
        default_factory=dict,
        max_length=64,
        description="QPU seconds the backends billed for this attempt's batches, per backend.",
    )
    spentUSD: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="What this attempt's batches cost so far at the backends' prices "
        "(counted in the workflow's costUSD as they run).",
    )
    updatedAt: str | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _bounded_batches(self) -> VariationalProgress:
        if any(len(k) > 63 or not 0 <= v <= 2**53 for k, v in self.batches.items()):
            raise ValueError("batches: resource names up to 63 characters, counts >= 0")
        if any(
            len(k) > 63 or not (math.isfinite(v) and 0 <= v <= 1e12)
            for k, v in self.qpuSeconds.items()
        ):
            raise ValueError("qpuSeconds: backend names up to 63 characters, finite seconds >= 0")
        return self


class SubtaskStatus(StrictModel):
    name: str
    phase: SubtaskPhase = SubtaskPhase.PENDING
    attempts: int = Field(default=0, ge=0, description="Pods or jobs started so far.")
    failures: int = Field(
        default=0, ge=0, description="Failed attempts; these count against maxRetries."
    )
    placement: Placement | None = None
    podName: str | None = None
    jobId: str | None = None
    remoteJobId: str | None = Field(
        default=None,
        max_length=128,
        description="The provider's job id (IBM): a resubmission re-attaches to it.",
    )
    launchedAt: str | None = None
    startedAt: str | None = None
    finishedAt: str | None = None
    retryAfter: str | None = None
    unreachableSince: str | None = Field(
        default=None, description="Since when the job's gateway has not answered."
    )
    moves: int = Field(default=0, ge=0)
    movedFrom: str | None = Field(
        default=None,
        max_length=63,
        description="Where its last move (or re-route) took it from: moving back there "
        "needs the reallocation's hysteresis on top of its threshold.",
    )
    route: Placement | None = Field(
        default=None,
        description="Variational subtasks: where the next batch goes (a backend, or the "
        "pod's own pool to simulate it there); moves change it without a restart.",
    )
    progress: VariationalProgress | None = None
    moving: MoveIntent | None = Field(
        default=None, description="A move under way: the old attempt is being cancelled."
    )
    message: str = Field(default="", max_length=4096)
    predicted: PredictedOutcome | None = Field(
        default=None, description="The prediction the placement of this attempt used."
    )
    actual: ActualOutcome | None = Field(
        default=None, description="What the successful attempt took, beside `predicted`."
    )
    result: dict[str, Any] | None = Field(
        default=None,
        description="Small result (counts or expectation values).",
        json_schema_extra=schema_extra(**{"x-kubernetes-preserve-unknown-fields": True}),
    )
    history: list[HistoryEntry] = Field(default_factory=list, max_length=32)


class HybridWorkflowStatus(StrictModel):
    phase: WorkflowPhase = WorkflowPhase.PENDING
    observedGeneration: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=schema_extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
        ),
    )
    subtasks: list[SubtaskStatus] = Field(default_factory=list, max_length=MAX_SUBTASKS)
    progress: str = Field(default="0/0", description="Succeeded/total subtasks.")
    moves: int = Field(default=0, ge=0)
    costUSD: float = Field(default=0.0, ge=0)
    startedAt: str | None = None
    finishedAt: str | None = None


class HybridWorkflow(StrictModel):
    apiVersion: Literal["qorch.io/v1alpha1"] = "qorch.io/v1alpha1"
    kind: Literal["HybridWorkflow"] = "HybridWorkflow"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: HybridWorkflowSpec
    status: HybridWorkflowStatus | None = None
