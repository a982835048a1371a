"""The runtime: the operator's cycle (read the world, predict, decide, plan, apply) over
every active workflow, on a ``Clock``, against a ``World``.

A cycle admits the workflows that have arrived, lets the world catch up to now, builds each
active workflow's ``WorkflowSnapshot``, runs the prediction pass (``Predictions``), the
policy's pass (``CyclePolicy``; ``ClusterPass`` for the operator's) and ``plan`` for each,
and hands every plan to the world to apply. The next cycle is the earliest of: the world's
next change (a real world cannot know it and polls), an arrival, a time a plan asked to be
looked at again, the policy's pass tick and the resync. The clock waits until then: the
wall clock sleeps, the simulated clock jumps.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from qorch.api.workflow import HybridWorkflowSpec, HybridWorkflowStatus, WorkflowPhase
from qorch.orchestrator.capacity import NodeInfo, PodUsage
from qorch.orchestrator.plan import Plan, plan
from qorch.orchestrator.snapshot import WorkflowSnapshot
from qorch.runtime.clock import Clock
from qorch.runtime.policy import CyclePolicy, CycleView
from qorch.runtime.predictions import Predictions

FINISHED = (WorkflowPhase.SUCCEEDED, WorkflowPhase.FAILED)


class Workflow(Protocol):
    """A HybridWorkflow as the runtime carries it (the world keeps what else it needs)."""

    spec: HybridWorkflowSpec
    status: HybridWorkflowStatus
    sources: dict[str, str]  # each circuit subtask's source, once admitted
    arrival: float  # seconds since the run started
    finished: float | None

    @property
    def key(self) -> str: ...


W = TypeVar("W", bound=Workflow)
W_contra = TypeVar("W_contra", bound=Workflow, contravariant=True)


class World(Protocol[W_contra]):
    """The resources the decisions act on: a cluster's stand-in."""

    async def admit(self, wf: W_contra, t: float) -> None:
        """A workflow arrives: read its circuits."""
        ...

    async def advance(self, t: float) -> None:
        """Catch up to ``t`` (what ran, ended, failed since the last cycle)."""
        ...

    async def snapshot(self, wf: W_contra, t: float) -> WorkflowSnapshot:
        """The workflow as ``plan`` reads it at ``t`` (no predictions yet)."""
        ...

    def nodes(self) -> list[NodeInfo]: ...

    def usage(self, t: float) -> list[PodUsage]: ...

    async def apply(self, wf: W_contra, decided: Plan, t: float) -> None:
        """Carry out the plan's actions (the status is the runtime's to store)."""
        ...

    def record(self, wf: W_contra, snapshot: WorkflowSnapshot, decided: Plan, t: float) -> None:
        """Note what the plan did, for the run's report."""
        ...

    def recheck_at(self, wf: W_contra, decided: Plan, t: float) -> Sequence[float]:
        """When this workflow must be looked at again whatever else happens (retry times,
        the next poll of a job nobody reports on); each is a cycle of its own."""
        ...

    def next_change(self, t: float) -> float | None:
        """The next time something in the world changes (None: nothing scheduled)."""
        ...

    def cycle_done(self, t: float) -> None:
        """After every cycle (the world's own sampling)."""
        ...


class Runtime(Generic[W]):
    def __init__(
        self,
        world: World[W],
        workflows: Sequence[W],
        policy: CyclePolicy,
        predictions: Predictions,
        clock: Clock,
        *,
        resync_seconds: float | None = None,
    ) -> None:
        self.world = world
        self.policy = policy
        self.predictions = predictions
        self.clock = clock
        # Every active workflow is re-planned at least this often (None: only when asked).
        self.resync = resync_seconds
        self.waiting = sorted(workflows, key=lambda w: (w.arrival, w.key))
        self.active: dict[str, W] = {}
        self.done: list[W] = []
        self.wakeups: list[tuple[float, str]] = []  # (time, workflow key)
        # Wall seconds of each cycle's decision (predictions, the policy's pass, the plans).
        self.decision_seconds: list[float] = []
        self.last_cycle = 0.0
        self._last_tick = -math.inf

    @property
    def workflows(self) -> list[W]:
        return [*self.done, *self.active.values(), *self.waiting]

    async def run(
        self,
        *,
        horizon: float | None = None,
        limit: float | None = None,
        on_cycle: Callable[[float], None] | None = None,
    ) -> bool:
        """Cycle until every workflow has finished. Past ``horizon`` the run goes on only
        while work is active (a workflow still arriving then is admitted), and it stops
        past ``limit`` with work left. Returns whether all that was admitted finished."""
        while self.waiting or self.active:
            now = self.clock.now()
            if limit is not None and now > limit:
                return False
            if horizon is not None and now > horizon and not self.active:
                break
            await self.cycle()
            if on_cycle is not None:
                on_cycle(now)
            await self.clock.wait_until(self._next_cycle(limit))
        return not self.active

    async def cycle(self) -> None:
        t = self.last_cycle = self.clock.now()
        while self.waiting and self.waiting[0].arrival <= t:
            await self._admit(self.waiting.pop(0), t)
        while self.wakeups and self.wakeups[0][0] <= t:
            heapq.heappop(self.wakeups)
        await self.world.advance(t)
        tick = self.policy.pass_seconds is not None and (
            t >= self._last_tick + self.policy.pass_seconds - 1e-9
        )
        if tick:
            self._last_tick = t
        built = {key: await self.world.snapshot(wf, t) for key, wf in self.active.items()}
        # One decision: the predictions, the policy's pass and every workflow's plan (what
        # the operator computes for a cycle; applying the actions is the world's part).
        decided_at = time.perf_counter()
        sources: Mapping[str, Mapping[str, str]] = {
            key: wf.sources for key, wf in self.active.items()
        }
        predicted = await self.predictions.predict(
            built, sources, launched=self.policy.weighs_launched
        )
        view = CycleView(t, predicted, self.world.nodes(), self.world.usage(t), tick)
        snapshots = self.policy.decide(view, self.world)
        placement = self.policy.placement_policy()
        plans = {key: plan(snap, placement) for key, snap in snapshots.items()}
        if plans:
            self.decision_seconds.append(time.perf_counter() - decided_at)
        for key, decided in plans.items():
            wf = self.active[key]
            await self.world.apply(wf, decided, t)
            wf.status = decided.status
            self.predictions.record_outcomes(snapshots[key], decided)
            self.world.record(wf, snapshots[key], decided, t)
            if decided.status.phase in FINISHED:
                wf.finished = self.clock.now()  # applied (the simulated clock: t)
                self.done.append(self.active.pop(key))
                continue
            for again in self.world.recheck_at(wf, decided, t):
                heapq.heappush(self.wakeups, (again, key))
        self.world.cycle_done(t)

    async def _admit(self, wf: W, t: float) -> None:
        # A policy that never moves work runs every workflow with moves switched off.
        reallocation = wf.spec.reallocation.model_copy(
            update={"enabled": self.policy.reallocation and wf.spec.reallocation.enabled}
        )
        update: dict[str, object] = {"reallocation": reallocation}
        if self.policy.objective is not None:  # a what-if: every workflow asks for this
            update["objective"] = self.policy.objective.model_copy(deep=True)
        wf.spec = wf.spec.model_copy(update=update)
        await self.world.admit(wf, t)
        self.active[wf.key] = wf

    def _next_cycle(self, limit: float | None) -> float:
        now = self.clock.now()
        times = []
        if limit is not None:
            times.append(limit + self.clock.resolution)
        if self.waiting:
            times.append(self.waiting[0].arrival)
        nxt = self.world.next_change(now)
        if nxt is not None:
            times.append(nxt)
        if self.wakeups:
            times.append(self.wakeups[0][0])
        if self.active:
            if self.policy.pass_seconds is not None:
                times.append(self._last_tick + self.policy.pass_seconds)
            if self.resync is not None:
                times.append(self.last_cycle + self.resync)
        return min(times, default=now)
