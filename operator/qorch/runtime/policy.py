"""What a cycle's decision pass is: a ``CyclePolicy`` may rewrite the cycle's snapshots (the
pass's word on where work goes and what moves) and names the ``PlacementPolicy`` that
``plan`` uses. ``ClusterPass`` is the operator's own (``QORCH_CLUSTER_PASS``): predictor,
cost function and ``decide_cluster`` over every workflow at once; the twin's baselines are
other policies (``qorch.sim.policies``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from qorch.api.workflow import ObjectiveSpec
from qorch.orchestrator.capacity import NodeInfo, PodUsage
from qorch.orchestrator.cluster_view import decide_cluster, requests_for
from qorch.orchestrator.placement import DecidedPolicy, PlacementPolicy, RulePolicy
from qorch.orchestrator.snapshot import WorkflowSnapshot


@dataclass
class CycleView:
    """What a policy sees of one cycle before the plans run."""

    now: float
    snapshots: dict[str, WorkflowSnapshot]
    nodes: list[NodeInfo]
    pods: list[PodUsage]
    tick: bool  # a pass tick (``pass_seconds``) falls on this cycle


class CyclePolicy(Protocol):
    """How a policy takes part in a cycle. ``world`` is the runtime's world, for a policy
    that reads it (the twin's oracle knows the future)."""

    name: str
    reallocation: bool  # False: every workflow runs with ``reallocation.enabled: false``
    pass_seconds: float | None  # a cycle at least this often while work is active
    # Whether the pass weighs launched work each cycle (queued jobs, unbound or simulating
    # pods, running loops: the cluster pass counts and moves them), so needs predictions
    # for it. False: predictions only for what is still to be placed.
    weighs_launched: bool
    # None: each workflow's own objective; else every workflow runs with this one.
    objective: ObjectiveSpec | None

    def placement_policy(self) -> PlacementPolicy: ...

    def decide(self, view: CycleView, world: Any) -> dict[str, WorkflowSnapshot]: ...


class ClusterPass:
    """The operator with its cluster pass, as ``QORCH_CLUSTER_PASS`` runs it."""

    name = "qorch"
    reallocation = True
    weighs_launched = True
    objective: ObjectiveSpec | None = None

    def __init__(self, pass_seconds: float | None = 60.0) -> None:
        self.pass_seconds = pass_seconds
        self.policy = DecidedPolicy(RulePolicy())

    def placement_policy(self) -> PlacementPolicy:
        return self.policy

    def decide(self, view: CycleView, world: Any) -> dict[str, WorkflowSnapshot]:
        decision = decide_cluster(view.snapshots, view.nodes, view.pods)
        out = {}
        for key, snap in view.snapshots.items():
            places, moves, held = requests_for(decision, key)
            out[key] = dataclasses.replace(
                snap, placements=places, moves=moves, held=held, cluster_pass=True
            )
        return out
