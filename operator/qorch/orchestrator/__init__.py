"""Pure decision code: validation, placement, planning. No I/O, no frameworks."""

from qorch.orchestrator.placement import Infeasible, PlacementPolicy, RulePolicy
from qorch.orchestrator.plan import (
    Action,
    CancelJob,
    CreatePod,
    DeletePod,
    Event,
    Plan,
    ReleasePod,
    StoreResult,
    SubmitJob,
    job_id,
    plan,
    pod_name,
)
from qorch.orchestrator.snapshot import (
    BackendInfo,
    CircuitInfo,
    JobPhase,
    JobState,
    PlannerConfig,
    PodPhase,
    PodState,
    WorkflowSnapshot,
)

__all__ = [
    "Action",
    "BackendInfo",
    "CancelJob",
    "CircuitInfo",
    "CreatePod",
    "DeletePod",
    "Event",
    "Infeasible",
    "JobPhase",
    "JobState",
    "PlacementPolicy",
    "Plan",
    "PlannerConfig",
    "PodPhase",
    "PodState",
    "ReleasePod",
    "RulePolicy",
    "StoreResult",
    "SubmitJob",
    "WorkflowSnapshot",
    "job_id",
    "plan",
    "pod_name",
]
