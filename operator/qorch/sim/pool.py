"""A simulated classical pool for the digital twin: its nodes' capacity on the twin's clock,
the pods Qorch creates there, and the background load other tenants put on it.

A pod is created gated (as ``podspec`` creates it); released, it waits until the pool has
room for its requests, first come first served (as one kube-scheduler queue would, without
preemption), then runs for the seconds the twin decided it takes and succeeds. Deleting a
pod frees its room at once. Background load (``background_gpus(t)``, from the GPU cluster
trace in ``qorch.sim.exogenous``) takes GPUs away from what Qorch's pods may use. What
``plan`` reads back is a ``PodState``, as from the apiserver.

Pure and deterministic: the twin calls ``advance(t)`` before it reads, with t never going
back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from qorch.orchestrator.cluster import PodRequest
from qorch.orchestrator.snapshot import PodPhase, PodState


@dataclass
class SimPod:
    name: str
    subtask: str
    attempt: int
    request: PodRequest
    run_seconds: float
    result: dict[str, object] | None = None
    released_at: float | None = None
    start: float = math.inf
    lost_at: float | None = None  # its node was lost then: the pod failed

    @property
    def end(self) -> float:
        return self.start + self.run_seconds


def _no_background(t: float) -> float:
    return 0.0


@dataclass
class SimPool:
    """Capacity is the sum over the pool's nodes (as ``orchestrator.capacity`` reads it)."""

    name: str
    cpu_cores: float
    memory_bytes: float
    gpus: float = 0.0
    background_gpus: Callable[[float], float] = _no_background
    # Node loss: (start, end, share of the pool's nodes lost). Pods running there fail at
    # the start (the newest first, until the rest fit), and the room stays smaller till end.
    outages: tuple[tuple[float, float, float], ...] = ()
    pods: dict[str, SimPod] = field(default_factory=dict)
    _now: float = 0.0
    _outages_applied: int = 0
    # The released pods that may still matter: every pod ended by ``_pruned_to`` is left
    # out (it holds no room, starts and ends nothing at or after that time), so that a
    # week's replay does not scan every pod that ever ran on each read. A question about
    # an earlier time scans ``pods``. Unreleased pods never matter: they start at infinity.
    _live: dict[str, SimPod] = field(default_factory=dict, init=False, repr=False, compare=False)
    _pruned_to: float = field(default=-math.inf, init=False, repr=False, compare=False)
    # How often (twin seconds) the pods that ended are left out (inf: never).
    prune_seconds: float = 600.0

    def create(
        self,
        name: str,
        subtask: str,
        attempt: int,
        request: PodRequest,
        run_seconds: float,
        result: dict[str, object] | None = None,
    ) -> SimPod:
        """A gated pod; creating a known name again changes nothing (a 409)."""
        known = self.pods.get(name)
        if known is not None:
            return known
        pod = SimPod(name, subtask, attempt, request, max(run_seconds, 0.0), result)
        self.pods[name] = pod
        return pod

    def release(self, name: str, t: float) -> bool:
        """Remove the gate: the pod queues for room (False: unknown or released already)."""
        pod = self.pods.get(name)
        if pod is None or pod.released_at is not None:
            return False
        pod.released_at = t
        self._live[name] = pod
        self.advance(t)
        return True

    def take(self, name: str) -> SimPod:
        """Remove a pod that has not been released, to ``put`` it in another pool (a pod
        narrowed to a pool when it is released: ``plan`` narrows gated pods only)."""
        pod = self.pods[name]
        if pod.released_at is not None:
            raise ValueError(f"pod {name} was released in pool {self.name}: it stays there")
        return self.pods.pop(name)

    def put(self, pod: SimPod) -> None:
        """A pod taken from another pool, not yet released."""
        if pod.released_at is not None:
            raise ValueError(f"pod {pod.name} was released elsewhere: it cannot move")
        self.pods[pod.name] = pod

    def end_early(self, pod: SimPod, at: float) -> None:
        """The pod ends at ``at`` (a loop's worker that finished its batches): never later
        than it would have, which is what leaving ended pods out relies on."""
        if at - pod.start > pod.run_seconds:
            raise ValueError(f"pod {pod.name} cannot end later than it would ({at})")
        pod.run_seconds = at - pod.start

    def delete(self, name: str, t: float) -> bool:
        """The pod goes (its room is free at once); False when there was none."""
        self.advance(t)
        self._live.pop(name, None)
        if self.pods.pop(name, None) is None:
            return False
        self.advance(t)
        return True

    def state(self, name: str, t: float) -> PodState | None:
        self.advance(t)
        pod = self.pods.get(name)
        if pod is None:
            return None
        if pod.released_at is None:
            phase = PodPhase.GATED
        elif t < pod.start:
            phase = PodPhase.PENDING
        elif t < pod.end:
            phase = PodPhase.RUNNING
        else:
            phase = PodPhase.SUCCEEDED
        node = None if phase in (PodPhase.GATED, PodPhase.PENDING) else f"{self.name}-node"
        if pod.lost_at is not None and t >= pod.lost_at:
            return PodState(
                pod.name,
                pod.subtask,
                pod.attempt,
                PodPhase.FAILED,
                node=node,
                message=f"the node it ran on left pool {self.name}",
                pool=self.name,
            )
        result = pod.result if pod.result is not None else {"simulated": True}
        return PodState(
            pod.name,
            pod.subtask,
            pod.attempt,
            phase,
            node=node,
            result=result if phase is PodPhase.SUCCEEDED else None,
            usage={"wallSeconds": pod.run_seconds} if phase is PodPhase.SUCCEEDED else None,
            pool=self.name if pod.released_at is not None else None,
        )

    def free(self, t: float) -> tuple[float, float, float]:
        """Room left at ``t`` (cores, bytes, GPUs) after the running pods and the
        background load."""
        self.advance(t)
        return self._room(t)

    def next_change(self, t: float) -> float | None:
        """The first time after ``t`` at which one of the pods starts or ends, or nodes
        leave or come back."""
        self.advance(t)
        times = [x for p in self._matter(t) for x in (p.start, p.end) if t < x < math.inf]
        times += [x for start, end, _ in self.outages for x in (start, end) if t < x < math.inf]
        return min(times, default=None)

    def advance(self, t: float) -> None:
        """Start, in release order, every released pod that fits by ``t``: each waits for
        the ones released before it (no overtaking), and a pod that can never fit the
        pool waits for ever (as an unschedulable pod stays Pending)."""
        if t < self._now:
            return
        ordered = sorted(self.outages)
        while self._outages_applied < len(ordered) and ordered[self._outages_applied][0] <= t:
            lost, _, _ = ordered[self._outages_applied]
            self._outages_applied += 1
            self.advance(lost)
            self._lose_nodes(lost)
        self._prune()
        # Nothing starts before what was already read (a pod seen Pending then stays so
        # up to then), nor before a pod released earlier started.
        matter = list(self._matter(self._now))
        started = [p.start for p in matter if p.start < math.inf]
        floor = max([self._now, *started])
        self._now = t
        waiting = sorted(
            (p for p in matter if p.released_at is not None and p.start == math.inf),
            key=lambda p: (p.released_at, p.name),
        )
        for pod in waiting:
            at = self._earliest_fit(pod, t, floor)
            if at is None:
                break  # the head of the queue waits: so does everybody behind it
            pod.start = floor = at

    def _earliest_fit(self, pod: SimPod, t: float, floor: float) -> float | None:
        """When ``pod`` fits, no earlier than its release and ``floor`` (the start of the
        pod released before it) and no later than ``t`` (None: not by then)."""
        released = pod.released_at if pod.released_at is not None else t
        first = max(released, floor)
        ends = [p.end for p in self._matter(first)] + [end for _, end, _ in self.outages]
        candidates = sorted({first, *(x for x in ends if first < x <= t)})
        for at in candidates:
            if at > t:
                break
            cpu, mem, gpu = self._room(at)
            if (
                pod.request.cpu <= cpu + 1e-9
                and pod.request.memory <= mem + 1e-9
                and (pod.request.gpus <= gpu + 1e-9)
            ):
                return at
        return None

    def capacity_share(self, at: float) -> float:
        """The share of the pool's nodes up at ``at``."""
        lost = [share for start, end, share in self.outages if start <= at < end]
        return 1.0 - min(max(lost, default=0.0), 1.0)

    def _lose_nodes(self, at: float) -> None:
        """Fail running pods, the newest first, until the rest fit what is left."""
        running = sorted(
            (p for p in self._matter(at) if p.start <= at < p.end),
            key=lambda p: (p.start, p.name),
            reverse=True,
        )
        for pod in running:
            cpu, mem, gpu = self._room(at)
            if cpu >= -1e-9 and mem >= -1e-9 and gpu >= -1e-9:
                break
            pod.lost_at = at
            pod.run_seconds = at - pod.start  # it holds nothing from then on

    def _room(self, at: float) -> tuple[float, float, float]:
        used = [0.0, 0.0, 0.0]
        for p in self._matter(at):
            if p.start <= at < p.end:
                used = [u + r for u, r in zip(used, p.request, strict=True)]
        share = self.capacity_share(at)
        gpus = self.gpus * share - min(max(self.background_gpus(at), 0.0), self.gpus * share)
        return (
            self.cpu_cores * share - used[0],
            self.memory_bytes * share - used[1],
            gpus - used[2],
        )

    def running(self, t: float) -> list[SimPod]:
        """The pods running at ``t`` (holding their requests)."""
        return [p for p in self._matter(t) if p.start <= t < p.end]

    def _matter(self, at: float) -> Iterable[SimPod]:
        """The pods that may hold room, start or end at or after ``at``."""
        return self._live.values() if at >= self._pruned_to else self.pods.values()

    def _prune(self) -> None:
        """Leave out of ``_live`` the pods ended by now (a pod's end only ever moves
        earlier: a loop that finishes, a lost node), at most once per ``prune_seconds``."""
        if not math.isfinite(self.prune_seconds) or (
            self._now < self._pruned_to + self.prune_seconds
        ):
            return
        self._pruned_to = self._now
        self._live = {n: p for n, p in self._live.items() if p.end > self._pruned_to}
