"""The runtime (``qorch.runtime``): the one decision loop ``qorch run`` drives on the wall
clock and ``qorch simulate`` on a simulated clock. A small world of classical steps (a pod
runs for a fixed time after its release) stands in for either; the planner, the cluster
pass and the clocks are the real ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    SubtaskPhase,
    WorkflowPhase,
)
from qorch.orchestrator.capacity import NodeInfo, PodUsage
from qorch.orchestrator.plan import CreatePod, DeletePod, Plan, ReleasePod
from qorch.orchestrator.snapshot import PlannerConfig, PodPhase, PodState, WorkflowSnapshot
from qorch.predictor import CircuitCache
from qorch.runtime.clock import SimulatedClock, WallClock
from qorch.runtime.loop import Runtime
from qorch.runtime.policy import ClusterPass
from qorch.runtime.predictions import InlinePredictions
from qorch.sim.twin import make_predictor

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
GIB = 2.0**30


@dataclass
class Flow:
    name: str
    arrival: float
    spec: HybridWorkflowSpec
    status: HybridWorkflowStatus = field(default_factory=HybridWorkflowStatus)
    sources: dict[str, str] = field(default_factory=dict)
    finished: float | None = None

    @property
    def key(self) -> str:
        return f"test/{self.name}"


def flow(name: str, arrival: float = 0.0, steps: int = 1, *, reallocate: bool = True) -> Flow:
    """``steps`` classical steps, one after another."""
    subtasks: list[dict[str, Any]] = [
        {
            "name": f"s{i}",
            "classical": {"image": "busybox"},
            **({"dependsOn": [f"s{i - 1}"]} if i else {}),
        }
        for i in range(steps)
    ]
    spec = HybridWorkflowSpec.model_validate(
        {"subtasks": subtasks, "reallocation": {"enabled": reallocate}}
    )
    return Flow(name, arrival, spec)


@dataclass
class Pod:
    subtask: str
    attempt: int
    released: float | None = None


class StepWorld:
    """Each pod runs ``run_seconds`` after its release; announces its ends (``next_change``)
    as the twin does, or none at all (``announce=False``), as a real world does."""

    def __init__(self, clock: Any, run_seconds: float = 30.0, *, announce: bool = True) -> None:
        self.clock = clock
        self.run_seconds = run_seconds
        self.announce = announce
        self.pods: dict[str, Pod] = {}
        self.cycles: list[float] = []
        self.admitted: list[tuple[str, float]] = []
        self.applied: list[tuple[str, str, float]] = []

    async def admit(self, wf: Flow, t: float) -> None:
        self.admitted.append((wf.name, t))

    async def advance(self, t: float) -> None:
        self.cycles.append(t)

    def _state(self, name: str, pod: Pod, t: float) -> PodState:
        if pod.released is None:
            return PodState(name, pod.subtask, pod.attempt, PodPhase.GATED)
        if t < pod.released + self.run_seconds:
            return PodState(name, pod.subtask, pod.attempt, PodPhase.RUNNING, node="n1")
        return PodState(name, pod.subtask, pod.attempt, PodPhase.SUCCEEDED, node="n1", result={})

    async def snapshot(self, wf: Flow, t: float) -> WorkflowSnapshot:
        mine = {st.podName for st in wf.status.subtasks if st.podName}
        return WorkflowSnapshot(
            namespace="test",
            name=wf.name,
            generation=1,
            spec=wf.spec,
            status=wf.status,
            now=self.clock.wall(t),
            pods={n: self._state(n, p, t) for n, p in self.pods.items() if n in mine},
            jobs={},
            backends={},
            circuits={},
            config=PlannerConfig(),
            created=self.clock.wall(wf.arrival),
        )

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo("n1", {"qorch.io/pool": "cpu"}, 64.0, 256 * GIB)]

    def usage(self, t: float) -> list[PodUsage]:
        return []

    async def apply(self, wf: Flow, decided: Plan, t: float) -> None:
        for action in decided.actions:
            if isinstance(action, CreatePod):
                self.pods[action.pod_name] = Pod(action.subtask, action.attempt)
            elif isinstance(action, ReleasePod):
                self.pods[action.pod_name].released = t
            elif isinstance(action, DeletePod):
                self.pods.pop(action.pod_name, None)
            self.applied.append((wf.name, type(action).__name__, t))

    def record(self, wf: Flow, snapshot: WorkflowSnapshot, decided: Plan, t: float) -> None:
        pass

    def recheck_at(self, wf: Flow, decided: Plan, t: float) -> list[float]:
        if self.announce or decided.requeue_after is None:
            return []
        return [t + decided.requeue_after.total_seconds()]

    def next_change(self, t: float) -> float | None:
        if not self.announce:
            return t + 0.25  # unknown: poll
        ends = [p.released + self.run_seconds for p in self.pods.values() if p.released is not None]
        return min((e for e in ends if e > t), default=None)

    def cycle_done(self, t: float) -> None:
        pass


def predictions() -> InlinePredictions:
    return InlinePredictions(make_predictor(None), CircuitCache())


def simulated(
    workflows: list[Flow], *, step: float = 5.0, resync: float | None = None, **kw: Any
) -> tuple[Runtime[Flow], StepWorld]:
    clock = SimulatedClock(START, step)
    world = StepWorld(clock, **kw)
    policy = ClusterPass(pass_seconds=None)
    return Runtime(world, workflows, policy, predictions(), clock, resync_seconds=resync), world


# ---- the clocks -------------------------------------------------------------------------------
def test_the_simulated_clock_steps_up_to_its_grid_and_never_back() -> None:
    clock = SimulatedClock(START, 5.0)
    asyncio.run(clock.wait_until(12.0))
    assert clock.now() == 15.0 and clock.wall(15.0) == START + dt.timedelta(seconds=15)
    asyncio.run(clock.wait_until(3.0))  # in the past: one step on
    assert clock.now() == 20.0
    asyncio.run(clock.wait_until(25.0))  # on the grid: exactly there
    assert clock.now() == 25.0


def test_the_wall_clock_sleeps_and_leaves_a_minimum_between_cycles() -> None:
    clock = WallClock(min_wait_seconds=0.05)
    before = time.monotonic()
    asyncio.run(clock.wait_until(clock.now() + 0.2))
    assert 0.19 <= time.monotonic() - before < 1.0
    before = time.monotonic()
    asyncio.run(clock.wait_until(0.0))  # already past
    assert time.monotonic() - before >= 0.049


# ---- the loop on a simulated clock -------------------------------------------------------------
def test_it_cycles_at_arrivals_and_at_the_worlds_changes_only() -> None:
    runtime, world = simulated([flow("a", arrival=12.0, steps=2)])
    finished = asyncio.run(runtime.run(limit=1000.0))
    assert finished and runtime.done and not runtime.active
    wf = runtime.done[0]
    assert wf.status.phase is WorkflowPhase.SUCCEEDED
    assert [st.phase for st in wf.status.subtasks] == [SubtaskPhase.SUCCEEDED] * 2
    assert world.admitted == [("a", 15.0)]  # the arrival, rounded up to the step
    # The first cycle at 0; s0 is created and released at 15, ends at 45; s1 then, ends
    # at 75: nothing between.
    assert world.cycles == [0.0, 15.0, 45.0, 75.0]
    assert wf.finished == 75.0


def test_a_resync_adds_cycles_while_work_is_active() -> None:
    runtime, world = simulated([flow("a")], resync=10.0)
    asyncio.run(runtime.run(limit=1000.0))
    assert world.cycles == [0.0, 10.0, 20.0, 30.0]  # released at 0, ends at 30


def test_the_limit_stops_a_run_with_work_left() -> None:
    runtime, world = simulated([flow("a", steps=3)], run_seconds=100.0)
    assert asyncio.run(runtime.run(limit=150.0)) is False
    assert runtime.active and max(world.cycles) <= 150.0


def test_past_the_horizon_with_nothing_active_the_run_ends() -> None:
    runtime, world = simulated([flow("early", arrival=0.0), flow("late", arrival=500.0)])
    asyncio.run(runtime.run(horizon=100.0, limit=1000.0))
    assert [name for name, _ in world.admitted] == ["early"]
    assert [w.name for w in runtime.waiting] == ["late"]


def test_workflows_planned_in_the_same_cycle_see_one_decision() -> None:
    runtime, world = simulated([flow("a"), flow("b")])
    asyncio.run(runtime.run(limit=1000.0))
    created = [(name, t) for name, kind, t in world.applied if kind == "CreatePod"]
    assert created == [("a", 0.0), ("b", 0.0)]
    assert len(runtime.decision_seconds) == len(world.cycles)


@pytest.mark.parametrize("moves", [True, False])
def test_a_policy_without_moves_switches_them_off_at_admission(moves: bool) -> None:
    runtime, _ = simulated([flow("a")])
    runtime.policy.reallocation = moves  # type: ignore[misc]
    asyncio.run(runtime.run(limit=1000.0))
    assert runtime.done[0].spec.reallocation.enabled is moves


# ---- the same loop on the wall clock ---------------------------------------------------------
def test_on_the_wall_clock_a_world_that_announces_nothing_is_polled() -> None:
    clock = WallClock()
    world = StepWorld(clock, run_seconds=0.3, announce=False)
    runtime: Runtime[Flow] = Runtime(
        world, [flow("a", steps=2)], ClusterPass(pass_seconds=None), predictions(), clock
    )
    started = time.monotonic()
    assert asyncio.run(runtime.run(limit=20.0))
    took = time.monotonic() - started
    assert 0.6 <= took < 10.0  # two steps of 0.3 s, seen within a poll or two
    assert runtime.done[0].status.phase is WorkflowPhase.SUCCEEDED
    assert len(world.cycles) >= 3


@pytest.mark.parametrize("weighs", [True, False])
def test_predictions_cover_launched_work_only_when_the_policy_weighs_it(weighs: bool) -> None:
    runtime, _ = simulated([flow("a")])
    runtime.policy.weighs_launched = weighs  # type: ignore[misc]
    asked: list[bool] = []
    predict = runtime.predictions.predict

    async def recording(*args: Any, launched: bool = True) -> dict[str, WorkflowSnapshot]:
        asked.append(launched)
        return await predict(*args, launched=launched)

    runtime.predictions.predict = recording  # type: ignore[assignment]
    asyncio.run(runtime.run(limit=1000.0))
    assert asked and set(asked) == {weighs}


def test_a_policy_with_an_objective_sets_it_on_every_workflow_at_admission() -> None:
    from qorch.api.workflow import ObjectiveSpec, Weights

    runtime, _ = simulated([flow("a"), flow("b")])
    asyncio.run(runtime.run(limit=1000.0))
    assert {w.spec.objective.weights for w in runtime.done} == {None}  # their own
    wanted = ObjectiveSpec(weights=Weights(time=0.02, error=0.98, cost=0.0))
    runtime, _ = simulated([flow("a"), flow("b")])
    runtime.policy.objective = wanted
    asyncio.run(runtime.run(limit=1000.0))
    assert [w.spec.objective for w in runtime.done] == [wanted, wanted]
    assert runtime.done[0].spec.objective is not runtime.done[1].spec.objective
