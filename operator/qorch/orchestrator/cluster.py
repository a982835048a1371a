"""``decide(ClusterSnapshot) -> ClusterDecision``: one decision pass over the whole cluster.

The seed's Workflow Orchestrator loop: every unfinished subtask of every workflow is decided
at once, so placements see each other. Twenty identical workflows applied together must not
all take the shortest queue: after each placement on a quantum backend, its predicted run
time is added to that backend's queue wait for the decisions that follow (a backend runs one
job at a time, so a queue's wait is the sum of the run times ahead; Qonductor estimates it
the same way, ``shared/notes/allocation.md``), and a pod placed on a pool takes its requests
from the pool's free capacity.

Order (HEFT's lesson, ``shared/notes/allocation.md``): subtasks that already hold a place
(a queued job, a released or gated pod) are decided first, because they are ahead of
anything submitted now; then new placements. Within each group: the tightest deadline first
(the deadline minus the workflow's best achievable P90 completion), then the largest upward
rank (a step's duration plus the longest path after it: it holds up the most), then workflow
key and subtask name. Both figures are taken on each subtask's fastest resource, not on the
current assignment, so the order does not shift between passes because of the pass's own
decisions (which would make a stationary world look changed).

Waits: a backend's predicted wait is taken to include the jobs Qorch already queued there
(the predictor reads the backend's own queue). The queued jobs this pass decides are taken
out of it (at most ``BackendLoad.qorch_run_seconds``) and modelled one by one, in queue order
(longest waiting first, then decision order): a job that stays waits for the jobs ahead of
it that are still there, less the time it has already waited; a job submitted now (a new
placement, or a job moved here) waits for all of them plus what the pass sent there before
it. So a pass over the previous pass's placements sees the waits that pass saw (no
flapping), and a moved job goes to the back of its new queue, behind the jobs it finds.

Capacity: a pool's free capacity (``PoolCapacity``: allocatable minus the requests of the
pods bound there) is first charged with the released pods not bound yet (the scheduler has
them), then with each pod this pass places or keeps gated-then-released. A pool without room
for a pod is SKIPPED for it (not given a wait estimate): a pod placed there would sit
pending, and the next pass, which sees it pending, is better placed to judge. Capacity is
summed over the pool, not per node. A pool the snapshot gives no capacity for is not limited.

Moves (issue 13, item 3; ``DESIGN.md``, "Moving work on Kubernetes"). Movable: a gated pod
(narrowed to another pool when the pod's requests fit it, else replaced), a released pod
not running yet (deleted and started elsewhere), a job still queued at a gateway (cancelled
and started elsewhere). Running work is not moved by this pass. Each movable subtask is
scored where it is (a queued job: only the wait left at its position) and elsewhere as a new
submission with the price of moving added to its predicted seconds
(``CANCEL_ROUND_TRIP_SECONDS``, ``POD_RESTART_SECONDS`` or ``GATED_REPLACE_SECONDS``); the
queue position given up is what that difference costs, and the reason states it. It moves
only when

    1 - 2 ** (score there - score here) > threshold      (``relative_gain``)

(``spec.reallocation.threshold``), ``+ hysteresis`` when the subtask moved within the last
``RECENT_MOVE_INTERVALS`` pass intervals or would go back where it last came from; never
beyond ``spec.reallocation.maxMovesPerSubtask`` moves, never when ``enabled`` is false. A
move that keeps the budget or deadline where staying breaks it needs no gain; a gated pod
whose pool has no room may move without one (staying is not possible now). Without a
change in the world a pass proposes no move: staying was the best choice when the place was
taken, every other place is no better than then, and moving there costs its price too.

Classical steps are placed by rule (a GPU pool when they request GPUs, else CPU pools
first, as ``RulePolicy``), on a pool with room; they are not moved.

Pure: no I/O, never raises on the input it is given; the same snapshot gives the same
decision.
"""

from __future__ import annotations

import datetime as dt
import gc
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Literal, NamedTuple

from qorch.api.workflow import (
    ClassicalPool,
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    Placement,
    ReallocationSpec,
    ResourceKind,
    SubtaskSpec,
)
from qorch.orchestrator.cost import (
    CandidateScore,
    Objective,
    Ranking,
    Workflow,
    WorkflowCost,
    batches_left,
)
from qorch.orchestrator.cost import usable as _usable
from qorch.orchestrator.prediction import QPU, Prediction
from qorch.orchestrator.simulation import (
    memory_quantity,
    runs_on_gpu,
    simulation_method,
    worker_memory_bytes,
)
from qorch.orchestrator.snapshot import BackendInfo
from qorch.orchestrator.text import SHORT_LIMIT, bounded

# Cancelling a queued job and submitting its replacement: two gateway calls and the
# provider's acknowledgement of the cancel (seconds on IBM Runtime); an estimate, not a
# measurement.
CANCEL_ROUND_TRIP_SECONDS: Final = 5.0
# Deleting a released (or running) pod and creating its replacement: a delete, a create and
# a new scheduling round; the replacement's container start is POD_START_SECONDS.
POD_RESTART_SECONDS: Final = 5.0
# What a pod that has not started yet needs before its simulation runs: scheduling and a
# container start with the worker image present on the node (a cold pull is more). Added to
# every pool candidate of a subtask whose pod is not running, here and there alike.
POD_START_SECONDS: Final = 10.0
# Replacing a gated pod (other requests, or a job instead): two apiserver writes; it has
# not started, so nothing is lost. Narrowing it to a pool it fits costs nothing.
GATED_REPLACE_SECONDS: Final = 2.0
# A subtask moved within this many of its workflow's pass intervals
# (``reallocation.intervalSeconds``) needs ``threshold + hysteresis`` to move again.
RECENT_MOVE_INTERVALS: Final = 10


class Stage(StrEnum):
    """Where an unfinished subtask's current attempt stands."""

    BLOCKED = "blocked"  # dependencies not done (or a retry backoff): not placeable now
    READY = "ready"  # nothing launched: placeable now
    GATED = "gated"  # pod created with Qorch's scheduling gate: the pass commits or moves it
    RELEASED = "released"  # pod released, not running yet (a pending simulation): movable
    QUEUED = "queued"  # job queued at a gateway: movable
    RUNNING = "running"  # pod or job running: only a running simulation pod is relaunched


HOLDING: Final = frozenset({Stage.GATED, Stage.RELEASED, Stage.QUEUED})
DECIDED: Final = HOLDING | {Stage.READY}


@dataclass(frozen=True)
class SubtaskEntry:
    """One unfinished subtask. ``resource``: where its current attempt is (a gated pod: the
    pool it was created for). ``since``: when it entered its stage (queued at, released at,
    started at). ``moves``, ``last_moved``, ``moved_from``: its move history (the status)."""

    name: str
    stage: Stage
    resource: str | None = None
    since: dt.datetime | None = None
    num_qubits: int | None = None
    moves: int = 0
    last_moved: dt.datetime | None = None
    moved_from: str | None = None
    # A variational loop: the pool its optimizer pod runs on, the one pool its batches
    # may be simulated on (its ``resource`` is its route).
    pod_pool: str | None = None
    # A queued job whose gateway says how many jobs are ahead of it: its wait is theirs,
    # whatever joined the queue after it (None: not known, the live queue is used).
    jobs_ahead: int | None = None


@dataclass(frozen=True)
class WorkflowEntry:
    """One workflow: its spec and status, its unfinished subtasks (the spec's others count
    as finished), the predictions per (subtask, resource), when it started, and measured
    durations of classical steps (default: the cost function's)."""

    key: str  # namespace/name
    spec: HybridWorkflowSpec
    status: HybridWorkflowStatus
    subtasks: Mapping[str, SubtaskEntry]
    predictions: Mapping[tuple[str, str], Prediction]
    started: dt.datetime | None = None
    classical_seconds: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendLoad:
    """A quantum backend and the jobs Qorch has queued there (all of them, decided by this
    pass or not), with their predicted run seconds; the predictions' wait counts them."""

    info: BackendInfo
    qorch_jobs: int = 0
    qorch_run_seconds: float = 0.0


@dataclass(frozen=True)
class PoolCapacity:
    """Free capacity of a pool: allocatable minus the requests of the pods bound there."""

    cpu_cores: float
    memory_bytes: float
    gpus: float = 0.0


def capacity_key(pool: ClassicalPool) -> str:
    """Pools are defined per workflow: two workflows may give one name to pools that
    select other nodes, or other names to one set of nodes. Free capacity is keyed by what
    selects the nodes (``ClusterSnapshot.pools``), not by the name."""
    selector = ",".join(f"{k}={v}" for k, v in sorted(pool.nodeSelector.items()))
    tolerations = ";".join(
        sorted(
            ",".join(f"{k}={v}" for k, v in sorted(t.model_dump(exclude_none=True).items()))
            for t in pool.tolerations
        )
    )
    return f"{{{selector}}}[{tolerations}]"


@dataclass(frozen=True)
class ClusterSnapshot:
    now: dt.datetime
    workflows: Sequence[WorkflowEntry]
    backends: Mapping[str, BackendLoad]
    # Free capacity per pool, by ``capacity_key``; a pool not listed is not limited.
    pools: Mapping[str, PoolCapacity] = field(default_factory=dict)


@dataclass(frozen=True)
class Place:
    """Start (READY) or commit (GATED: release where it was created) ``subtask`` there.
    ``prediction``: the figures it was placed on (queue wait as adjusted in the pass);
    None with ``score`` for a classical step placed by rule."""

    workflow: str
    subtask: str
    placement: Placement
    score: float | None
    prediction: Prediction | None
    reason: str


MoveHow = Literal["narrow", "replace-pod", "cancel-job", "relaunch"]


@dataclass(frozen=True)
class Move:
    """Move ``subtask`` from ``source`` to ``target``. ``how``: narrow a gated pod to
    another pool; delete a pod (gated or released) and start the new attempt; cancel a
    queued job and start the new attempt; relaunch: delete a running simulation pod (its
    progress is lost) and start the new attempt. Scores are the workflow's (lower is better);
    ``gain`` is relative to ``here`` (inf: staying was not possible). ``price_seconds``:
    the price of moving, the queue position given up (counted by scoring ``here`` on the
    wait left) plus the round trip (added to ``there``'s predicted seconds)."""

    workflow: str
    subtask: str
    source: Placement
    target: Placement
    how: MoveHow
    score_here: float | None
    score_there: float
    gain: float
    required: float
    price_seconds: float
    prediction: Prediction
    reason: str


@dataclass(frozen=True)
class Wait:
    """A placeable subtask that gets no place this pass, and why."""

    workflow: str
    subtask: str
    reason: str


@dataclass(frozen=True)
class ClusterDecision:
    places: tuple[Place, ...] = ()
    moves: tuple[Move, ...] = ()
    waits: tuple[Wait, ...] = ()
    # The score of where every decided circuit subtask is or goes, by (workflow, subtask).
    scores: Mapping[tuple[str, str], float] = field(default_factory=dict)


# ---- pod requests ----------------------------------------------------------------------


class PodRequest(NamedTuple):
    """What a subtask's pod requests: cores, bytes, GPUs."""

    cpu: float
    memory: float
    gpus: float


_QUANTITY = re.compile(r"^([0-9]*\.?[0-9]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_SUFFIX: Final = {
    None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
}  # fmt: skip


def quantity(text: str) -> float:
    """A Kubernetes quantity as a number (0 when unreadable: the schema checks it)."""
    m = _QUANTITY.match(text.strip())
    return float(m.group(1)) * _SUFFIX[m.group(2)] if m else 0.0


def pod_request(sub: SubtaskSpec, pool: ClassicalPool, num_qubits: int | None) -> PodRequest:
    """What the subtask's pod requests on ``pool``, as ``podspec.build_pod`` sizes it."""
    if sub.classical is not None:
        r = sub.classical.resources
        return PodRequest(quantity(r.cpu), quantity(r.memory), float(r.gpu))
    if sub.variational is not None:
        r = sub.variational.resources
        # Room for the state only where its batches may be simulated in the pod.
        simulable = num_qubits is None or num_qubits <= pool.maxQubits
        state = worker_memory_bytes(num_qubits) if simulable else 0
        room = quantity(memory_quantity(max(int(quantity(r.memory)), state)))
        return PodRequest(quantity(r.cpu), room, float(r.gpu))
    gpu = pool.gpu and (num_qubits is None or runs_on_gpu(simulation_method(num_qubits)))
    memory = quantity(memory_quantity(worker_memory_bytes(num_qubits)))
    return PodRequest(1.0, memory, 1.0 if gpu else 0.0)


# ---- adjusted predictions --------------------------------------------------------------


def _queue_shifted(p: Prediction, seconds: float) -> Prediction:
    """``p`` with ``seconds`` more queue wait at every quantile (never below zero).

    Built field by field: a pass shifts every QPU pair of a backend Qorch queues on (16,000
    and more), and ``_replace`` costs several times as much."""
    if seconds == 0.0 or p.kind != QPU:
        return p
    q10 = max(p.queue_seconds_p10 + seconds, 0.0)
    q50 = max(p.queue_seconds_p50 + seconds, 0.0)
    q90 = max(p.queue_seconds_p90 + seconds, 0.0)
    return Prediction(
        p.subtask, p.resource, p.kind, p.feasible,
        max(p.seconds_p10 + q10 - p.queue_seconds_p10, 0.0),
        max(p.seconds_p50 + q50 - p.queue_seconds_p50, 0.0),
        max(p.seconds_p90 + q90 - p.queue_seconds_p90, 0.0),
        q10, q50, q90,
        p.run_seconds, p.fidelity, p.usd, p.peak_memory_bytes, p.source, p.notes,
    )  # fmt: skip


def _delayed(p: Prediction, seconds: float) -> Prediction:
    """``p`` finishing ``seconds`` later (the price of moving there)."""
    if seconds == 0.0:
        return p
    return p._replace(
        seconds_p10=p.seconds_p10 + seconds,
        seconds_p50=p.seconds_p50 + seconds,
        seconds_p90=p.seconds_p90 + seconds,
    )


def _run_seconds(p: Prediction) -> float:
    return p.run_seconds if math.isfinite(p.run_seconds) and p.run_seconds > 0 else 0.0


def _seconds_since(now: dt.datetime, since: dt.datetime | None) -> float:
    """Seconds from ``since`` to ``now``; 0 when unknown, in the future, or not comparable
    (a naive and an aware time)."""
    if since is None:
        return 0.0
    try:
        return max((now - since).total_seconds(), 0.0)
    except TypeError:
        return 0.0


def _remaining(p: Prediction, running_for: float) -> Prediction:
    """A running attempt: no queue left, and its run less what it has run."""
    left = max(_run_seconds(p) - running_for, 0.0)
    return p._replace(
        queue_seconds_p10=0.0, queue_seconds_p50=0.0, queue_seconds_p90=0.0,
        seconds_p10=left, seconds_p50=left, seconds_p90=left,
    )  # fmt: skip


# ---- the pass --------------------------------------------------------------------------


_Id = tuple[str, str]  # (workflow key, subtask)
_QueueKey = tuple[float, int]  # (-seconds waited, decision order): who is ahead


@dataclass
class _Flow:
    """One workflow's state during the pass."""

    entry: WorkflowEntry
    specs: dict[str, SubtaskSpec]
    pools: dict[str, ClassicalPool]
    resources: tuple[str, ...]
    predictions: Mapping[tuple[str, str], Prediction]
    cost: WorkflowCost
    realloc: ReallocationSpec
    assignment: dict[str, str] = field(default_factory=dict)
    placed: dict[str, Prediction] = field(default_factory=dict)


class _Pass:
    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.now = snapshot.now
        self.backends = snapshot.backends
        self.free: dict[str, list[float]] = {
            name: [c.cpu_cores, c.memory_bytes, c.gpus] for name, c in snapshot.pools.items()
        }
        # Per backend: Qorch's queued jobs this pass decides (run seconds, count), those of
        # them moved away so far (queue key, run seconds), and what the pass sent there.
        self.resident: dict[str, float] = {}
        self.resident_n: dict[str, int] = {}
        self.gone: dict[str, list[tuple[_QueueKey, float]]] = {}
        self.gone_seconds: dict[str, float] = {}
        self.tail: dict[str, float] = {}
        self.tail_n: dict[str, int] = {}
        # Per queued subtask: its place in its backend's queue and the run seconds ahead.
        self.position: dict[tuple[str, str], tuple[_QueueKey, float]] = {}
        self.places: list[Place] = []
        self.moves: list[Move] = []
        self.waits: list[Wait] = []
        self.scores: dict[tuple[str, str], float] = {}
        entries: dict[str, WorkflowEntry] = {}
        for e in snapshot.workflows:
            entries.setdefault(e.key, e)
        self.entries = [entries[k] for k in sorted(entries)]

    # -- setup ---------------------------------------------------------------------------

    def _queued(self) -> list[tuple[WorkflowEntry, SubtaskEntry, float]]:
        """The jobs queued at a backend that this pass decides anew, with their run
        seconds; their totals per backend are the resident queue, and the wait to take out
        of the predictions (at most what Qorch has there)."""
        queued = []
        for e in self.entries:
            names = {sub.name for sub in e.spec.subtasks}
            for s in e.subtasks.values():
                if s.stage is not Stage.QUEUED or s.resource is None or s.name not in names:
                    continue
                p = e.predictions.get((s.name, s.resource))
                if p is not None and _usable(p) and p.kind == QPU:
                    queued.append((e, s, _run_seconds(p)))
                    self.resident[s.resource] = self.resident.get(s.resource, 0.0) + queued[-1][2]
                    self.resident_n[s.resource] = self.resident_n.get(s.resource, 0) + 1
        return queued

    def _base_shift(self) -> dict[str, float]:
        shift = {}
        for name, seconds in self.resident.items():
            load = self.backends.get(name)
            ours = max(load.qorch_run_seconds, 0.0) if load is not None else 0.0
            if min(ours, seconds) > 0:
                shift[name] = -min(ours, seconds)
        return shift

    def _queue_positions(
        self, queued: list[tuple[WorkflowEntry, SubtaskEntry, float]], order: dict[_Id, int]
    ) -> None:
        """Each queued job's place in its backend's queue: longest waiting first, then in
        the pass's decision order (the order the pass that placed them used)."""
        lines: dict[str, list[tuple[_QueueKey, float, _Id]]] = {}
        for e, s, run in queued:
            ident = (e.key, s.name)
            qkey = (-_seconds_since(self.now, s.since), order.get(ident, len(order)))
            lines.setdefault(s.resource or "", []).append((qkey, run, ident))
        for line in lines.values():
            line.sort()
            ahead = 0.0
            for qkey, run, ident in line:
                self.position[ident] = (qkey, ahead)
                ahead += run

    def _arrival(self, backend: str) -> float:
        """Queue wait added for a job submitted now: Qorch's queued jobs still there, and
        what this pass sent there."""
        gone = self.gone_seconds.get(backend, 0.0)
        return self.resident.get(backend, 0.0) - gone + self.tail.get(backend, 0.0)

    def _stay(self, flow: _Flow, s: SubtaskEntry) -> float:
        """Queue wait added for a queued job that stays: the run seconds of Qorch's jobs
        ahead of it still there, less the time it has waited (it moved up meanwhile)."""
        qkey, ahead = self.position.get((flow.entry.key, s.name), ((0.0, 0), 0.0))
        gone = sum(run for k, run in self.gone.get(s.resource or "", ()) if k < qkey)
        return ahead - gone - _seconds_since(self.now, s.since)

    def _loop_stays(self, backend: str, p: Prediction, predicted_wait: float) -> float:
        """Queue wait added for a variational loop's next batches where its route is now:
        each goes in anew, as a job submitted now would (``_arrival``), except that the
        loop's own batch queued there now will have left. The live queue length counts it,
        and so does the wait predicted from it (``predicted_wait``, before this pass's
        shifts: its share is that over the length), as ``_arrival`` counts its run seconds.
        Scored with its own batch ahead of it, a loop looked a job's wait slower per batch
        where it is than anywhere else, and the next pass moved it back where it came from
        (the week's replay, issue 14). Whether its batch is in the queue right now is not
        known (the optimizer may be between batches, or its batch running): the share is
        taken off anyway, which errs toward staying for a pass or two, never toward a move.
        Every batch is scored as a fresh one: the current batch's place is not weighed."""
        load = self.backends.get(backend)
        length = load.info.queue_length if load is not None else 0
        own_share = max(predicted_wait, 0.0) / length if length >= 1 else 0.0
        return self._arrival(backend) - _run_seconds(p) - own_share

    def _flow(self, e: WorkflowEntry, shift: Mapping[str, float]) -> _Flow:
        spec = e.spec
        specs = {s.name: s for s in spec.subtasks}
        finished = [n for n in specs if n not in e.subtasks]
        workflow = Workflow.from_spec(
            spec,
            classical_seconds=e.classical_seconds,
            finished=finished,
            batches=batches_left(spec, e.status),
        )
        predictions = e.predictions
        if shift:
            predictions = {
                k: _queue_shifted(p, shift[k[1]]) if k[1] in shift else p
                for k, p in e.predictions.items()
            }
        elapsed = _seconds_since(self.now, e.started)
        objective = Objective.from_spec(spec, elapsed_seconds=elapsed, spent_usd=e.status.costUSD)
        flow = _Flow(
            entry=e,
            specs=specs,
            pools={p.name: p for p in spec.resources.classicalPools},
            resources=workflow.resources,
            predictions=predictions,
            cost=WorkflowCost(workflow, predictions, objective),
            realloc=spec.reallocation,
        )
        for s in e.subtasks.values():
            p = predictions.get((s.name, s.resource)) if s.resource is not None else None
            # Only running work is fixed. What the pass decides (holders included) enters
            # the assignment as it is decided; until then the cost function assumes it on
            # its fastest resource, so that two queued jobs stuck behind one spike do not
            # each find moving pointless because the other still holds the path.
            if p is None or not _usable(p) or s.stage is not Stage.RUNNING:
                continue
            flow.assignment[s.name] = s.resource or ""
            flow.placed[s.name] = _remaining(p, _seconds_since(self.now, s.since))
        return flow

    def _request(self, flow: _Flow, s: SubtaskEntry, pool: str) -> PodRequest | None:
        spec, where = flow.specs.get(s.name), flow.pools.get(pool)
        return None if spec is None or where is None else pod_request(spec, where, s.num_qubits)

    def _free(self, flow: _Flow, pool: str) -> list[float] | None:
        where = flow.pools.get(pool)
        return self.free.get(capacity_key(where)) if where is not None else None

    def _fits(self, flow: _Flow, pool: str, req: PodRequest) -> bool:
        free = self._free(flow, pool)
        if free is None:
            return True  # capacity not known: not limited
        eps = 1e-9
        return (
            req.cpu <= free[0] + eps and req.memory <= free[1] + eps and req.gpus <= free[2] + eps
        )

    def _charge(self, flow: _Flow, pool: str, req: PodRequest | None, sign: float = 1.0) -> None:
        free = self._free(flow, pool)
        if free is not None and req is not None:
            free[0] -= sign * req.cpu
            free[1] -= sign * req.memory
            free[2] -= sign * req.gpus

    # -- the decisions -------------------------------------------------------------------

    def run(self) -> ClusterDecision:
        queued = self._queued()
        shift = self._base_shift()  # baked into each workflow's predictions
        flows = [self._flow(e, shift) for e in self.entries]
        items: list[tuple[tuple[int, float, float, str, str], _Flow, SubtaskEntry]] = []
        for flow in flows:
            e = flow.entry
            # Released pods are the scheduler's already: their requests come off first.
            for s in sorted(e.subtasks.values(), key=lambda s: s.name):
                if s.stage is Stage.RELEASED and s.resource in flow.pools:
                    self._charge(flow, s.resource, self._request(flow, s, s.resource))
            todo = [
                s
                for s in e.subtasks.values()
                if s.name in flow.specs
                and (
                    (s.stage in DECIDED and (s.stage is Stage.READY or s.resource is not None))
                    or self._relaunchable(flow, s)
                )
            ]
            if not todo:
                continue
            deadline = flow.cost.objective.deadline_seconds
            slack = (
                math.inf if deadline is None else deadline - flow.cost.estimate({}).completion_p90
            )
            ranks = flow.cost.upward_ranks({})
            for s in todo:
                key = (
                    0 if s.stage in HOLDING else 1,
                    slack,
                    -ranks.get(s.name, 0.0),
                    e.key,
                    s.name,
                )
                items.append((key, flow, s))
        items.sort(key=lambda item: item[0])
        self._queue_positions(
            queued, {(f.entry.key, s.name): i for i, (_, f, s) in enumerate(items)}
        )
        for _, flow, s in items:
            if s.stage is Stage.QUEUED and s.name in flow.placed:
                flow.placed[s.name] = _queue_shifted(flow.placed[s.name], self._stay(flow, s))
        for _, flow, s in items:
            if flow.specs[s.name].classical is not None:
                self._classical(flow, s)
            else:
                self._circuit(flow, s)
        return ClusterDecision(
            tuple(self.places), tuple(self.moves), tuple(self.waits), dict(self.scores)
        )

    def _classical(self, flow: _Flow, s: SubtaskEntry) -> None:
        key = flow.entry.key
        spec = flow.specs[s.name]
        if s.stage is Stage.GATED:
            options = [s.resource] if s.resource in flow.pools else []
        elif s.stage is Stage.READY:
            assert spec.classical is not None
            pools = flow.entry.spec.resources.classicalPools
            if spec.classical.resources.gpu > 0:
                options = [p.name for p in pools if p.gpu]
            else:
                options = [p.name for p in sorted(pools, key=lambda p: p.gpu)]
        else:
            return  # released: the scheduler has it; classical steps are not moved
        for pool in options:
            assert pool is not None
            req = self._request(flow, s, pool)
            if req is not None and self._fits(flow, pool, req):
                self._charge(flow, pool, req)
                reason = f"pool {pool}: first pool by rule with room for the pod"
                self.places.append(
                    Place(key, s.name, Placement(kind=ResourceKind.POOL, name=pool), None, None,
                          reason)
                )  # fmt: skip
                return
        why = "no allowed pool has room for the pod" if options else "no allowed pool can run it"
        self.waits.append(Wait(key, s.name, why))

    @staticmethod
    def _relaunchable(flow: _Flow, s: SubtaskEntry) -> bool:
        """A circuit simulated by a running pod: it may be relaunched elsewhere when the
        gain pays for the progress it loses (a running QPU job, a classical step or a
        variational loop is never relaunched)."""
        spec = flow.specs.get(s.name)
        return (
            s.stage is Stage.RUNNING
            and s.resource in flow.pools
            and spec is not None
            and spec.circuit is not None
            and s.pod_pool is None
        )

    def _circuit(self, flow: _Flow, s: SubtaskEntry) -> None:
        key, name, current = flow.entry.key, s.name, s.resource
        holding = s.stage in HOLDING or s.stage is Stage.RUNNING
        price_of: dict[str, float] = {}
        credit = 0.0
        no_room = False  # a gated pod's pool cannot take it now
        candidates: list[Prediction] = []
        for r in flow.resources:
            p = flow.predictions.get((name, r))
            if p is None or not _usable(p):
                continue
            if p.kind == QPU:
                load = self.backends.get(r)
                if r != current and (load is None or not load.info.healthy):
                    continue
                if r == current and s.stage is Stage.QUEUED and s.pod_pool is not None:
                    stored = flow.entry.predictions.get((name, r), p)
                    p = _queue_shifted(p, self._loop_stays(r, p, stored.queue_seconds_p50))
                elif r == current and s.stage is Stage.QUEUED and s.jobs_ahead is not None:
                    # Its place in the queue is known: only the jobs ahead of it count
                    # (one that joined the queue after it never delays it).
                    fresh = p.queue_seconds_p50 + self._arrival(r)
                    wait = s.jobs_ahead * _run_seconds(p)
                    credit = max(fresh - wait, 0.0)
                    p = _queue_shifted(p, wait - p.queue_seconds_p50)
                elif r == current and s.stage is Stage.QUEUED:
                    stay = self._stay(flow, s)
                    credit = max(self._arrival(r) - _run_seconds(p) - stay, 0.0)
                    p = _queue_shifted(p, stay)
                else:
                    p = _queue_shifted(p, self._arrival(r))
            else:
                if s.pod_pool is not None and r != s.pod_pool:
                    continue  # another pool would need another pod
                pool = flow.pools.get(r)
                if pool is not None and s.num_qubits is not None and s.num_qubits > pool.maxQubits:
                    continue  # the pool's maxQubits: larger circuits are not simulated there
                loop = flow.specs[name].variational if name in flow.specs else None
                if pool is not None and loop is not None and loop.wants_gpu and not pool.gpu:
                    continue  # its optimizer pod requests GPUs
                req = self._request(flow, s, r)
                if req is None:
                    continue
                bound = s.stage in (Stage.RELEASED, Stage.RUNNING) and r == current
                already_charged = bound or r == s.pod_pool
                if s.stage is Stage.RUNNING and r == current:
                    p = _remaining(p, _seconds_since(self.now, s.since))
                elif s.pod_pool is None:  # its pod still has to start
                    p = _delayed(p, POD_START_SECONDS)
                if not already_charged and not self._fits(flow, r, req):
                    no_room = no_room or r == current
                    continue
            if r != current and holding:
                price_of[r] = self._price(flow, s, r)
                p = _delayed(p, price_of[r])
            candidates.append(p)
        ranking = flow.cost.rank(name, flow.assignment, candidates=candidates, placed=flow.placed)
        best = ranking.best
        here = None
        if holding:
            here = next((c for c in ranking.candidates if c.resource == current), None)

        if not holding:
            if best is None:
                self.waits.append(Wait(key, name, bounded(ranking.reason, SHORT_LIMIT)))
                return
            self._commit(flow, s, best)
            self.places.append(
                Place(key, name, _placement(best.prediction), best.score, best.prediction,
                      self._place_reason(best, ranking))
            )  # fmt: skip
            return

        assert current is not None
        if best is None or best.resource == current:
            self._keep(flow, s, here, ranking, no_room)
            return
        verdict = self._verdict(flow, s, here, best, no_room)
        if verdict is None:
            self._keep(flow, s, here, ranking, no_room, refused=best if no_room else None)
            return
        gain, required = verdict
        price = price_of.get(best.resource, 0.0)
        source_kind = ResourceKind.POOL if current in flow.pools else ResourceKind.BACKEND
        self._commit(flow, s, best)
        self.moves.append(
            Move(
                workflow=key,
                subtask=name,
                source=Placement(kind=source_kind, name=current),
                target=_placement(best.prediction),
                how=self._how(flow, s, best.resource),
                score_here=here.score if here is not None else None,
                score_there=best.score,
                gain=gain,
                required=required,
                price_seconds=price + credit,
                prediction=best.prediction,
                reason=self._move_reason(s, here, best, gain, required, price, credit),
            )
        )

    def _keep(
        self,
        flow: _Flow,
        s: SubtaskEntry,
        here: CandidateScore | None,
        ranking: Ranking,
        no_room: bool = False,
        refused: CandidateScore | None = None,
    ) -> None:
        """The subtask stays where it is: its load counts there, a gated pod is released."""
        key = flow.entry.key
        if here is None:
            if s.stage is Stage.GATED:
                why = (
                    f"pool {s.resource} has no room for the pod now"
                    if no_room
                    else f"no usable prediction for pool {s.resource}"
                )
                if refused is not None:
                    why += f"; {refused.resource} would take it but moves are not allowed "
                    why += "(" + self._refusal(flow, s) + ")"
                self.waits.append(Wait(key, s.name, bounded(why, SHORT_LIMIT)))
            return
        self._commit(flow, s, here)
        if s.stage is Stage.GATED:
            self.places.append(
                Place(key, s.name, _placement(here.prediction), here.score, here.prediction,
                      self._place_reason(here, ranking))
            )  # fmt: skip

    def _commit(self, flow: _Flow, s: SubtaskEntry, chosen: CandidateScore) -> None:
        """Where the subtask goes counts for the decisions that follow."""
        p = chosen.prediction
        r = p.resource
        flow.assignment[s.name] = r
        flow.placed[s.name] = p
        self.scores[(flow.entry.key, s.name)] = chosen.score
        if p.kind == QPU:
            if not (s.stage is Stage.QUEUED and r == s.resource):  # a resident that stays
                self.tail[r] = self.tail.get(r, 0.0) + _run_seconds(p)
                self.tail_n[r] = self.tail_n.get(r, 0) + 1
        elif not (s.stage in (Stage.RELEASED, Stage.RUNNING) and r == s.resource) and (
            r != s.pod_pool
        ):
            self._charge(flow, r, self._request(flow, s, r))
        if (
            s.stage in (Stage.RELEASED, Stage.RUNNING)
            and s.resource is not None
            and (r != s.resource and s.resource in flow.pools)
        ):
            self._charge(flow, s.resource, self._request(flow, s, s.resource), sign=-1.0)
        if s.stage is Stage.QUEUED and s.resource is not None and r != s.resource:
            ident = (flow.entry.key, s.name)
            old = flow.predictions.get((s.name, s.resource))
            if ident in self.position and old is not None:
                run = _run_seconds(old)
                self.gone.setdefault(s.resource, []).append((self.position[ident][0], run))
                self.gone_seconds[s.resource] = self.gone_seconds.get(s.resource, 0.0) + run

    def _price(self, flow: _Flow, s: SubtaskEntry, target: str) -> float:
        if s.stage is Stage.QUEUED:
            return CANCEL_ROUND_TRIP_SECONDS
        if s.stage in (Stage.RELEASED, Stage.RUNNING):
            return POD_RESTART_SECONDS
        return 0.0 if self._how(flow, s, target) == "narrow" else GATED_REPLACE_SECONDS

    def _how(self, flow: _Flow, s: SubtaskEntry, target: str) -> MoveHow:
        if s.stage is Stage.QUEUED:
            return "cancel-job"
        if s.stage is Stage.RUNNING:
            return "relaunch"
        if s.stage is Stage.GATED and s.resource is not None and target in flow.pools:
            old, new = self._request(flow, s, s.resource), self._request(flow, s, target)
            if old is not None and old == new:
                return "narrow"
        return "replace-pod"

    def _recent(self, flow: _Flow, s: SubtaskEntry) -> bool:
        if s.last_moved is None:
            return False
        window = RECENT_MOVE_INTERVALS * flow.realloc.intervalSeconds
        return _seconds_since(self.now, s.last_moved) < window

    def _refusal(self, flow: _Flow, s: SubtaskEntry) -> str:
        if not flow.realloc.enabled:
            return "reallocation disabled"
        cap = flow.realloc.maxMovesPerSubtask
        return f"move cap reached: {s.moves} of {cap}" if s.moves >= cap else ""

    def _verdict(
        self,
        flow: _Flow,
        s: SubtaskEntry,
        here: CandidateScore | None,
        best: CandidateScore,
        no_room: bool,
    ) -> tuple[float, float] | None:
        """(gain, required) when the move is worth it and allowed, else None. Where it
        is has no usable prediction: not knowing is no reason to move (only a gated pod
        whose pool has no room moves without a gain: it cannot stay as it is)."""
        if self._refusal(flow, s) or (here is None and not no_room):
            return None
        threshold = flow.realloc.threshold
        back = best.resource == s.moved_from
        required = threshold + (flow.realloc.hysteresis if back or self._recent(flow, s) else 0)
        if here is None:
            return math.inf, required  # staying is not possible now
        gain = relative_gain(here.score, best.score)
        if not here.admissible and best.admissible:
            return gain, required  # staying breaks the budget or the deadline, moving keeps it
        return (gain, required) if gain > required else None

    # -- words ---------------------------------------------------------------------------

    def _place_reason(self, best: CandidateScore, ranking: Ranking) -> str:
        p = best.prediction
        text = f"on {best.resource}: score {best.score:.3f} ({_figures(best)})"
        if p.kind == QPU:
            r = best.resource
            gone = len(self.gone.get(r, ()))
            ours = self.resident_n.get(r, 0) - gone + self.tail_n.get(r, 0) - 1
            text += f"; queue wait {p.queue_seconds_p50:.0f}s P50"
            if ours > 0:
                text += f" counting {ours} other job(s) of Qorch's there"
        runner = next((c for c in ranking.candidates if c.resource != best.resource), None)
        if runner is not None:
            text += f"; next best {runner.resource} {runner.score:.3f}"
        if ranking.unmet:
            text += f"; {ranking.reason}"
        return bounded(text, SHORT_LIMIT)

    def _move_reason(
        self,
        s: SubtaskEntry,
        here: CandidateScore | None,
        there: CandidateScore,
        gain: float,
        required: float,
        price: float,
        credit: float,
    ) -> str:
        what = {
            Stage.QUEUED: "cancel round trip",
            Stage.RELEASED: "pod restart",
            Stage.RUNNING: "pod restart",
            Stage.GATED: "pod replacement" if price else "narrowing",
        }.get(s.stage, "move")
        given_up = "queue position given up"
        if s.stage is Stage.RUNNING:  # the run so far is lost: there starts from nothing
            credit, given_up = _seconds_since(self.now, s.since), "progress lost"
        there_text = (
            f"there {there.score:.3f} on {there.resource} ({_figures(there)}); "
            f"price of moving {price + credit:.0f}s: {credit:.0f}s {given_up} "
            f"+ {price:.0f}s {what}"
        )
        if here is None:
            text = f"cannot stay on {s.resource} (no room, or no usable prediction); {there_text}"
        else:
            text = (
                f"cost here {here.score:.3f} on {here.resource} ({_figures(here)}) vs {there_text}"
            )
            if not here.admissible and there.admissible:
                text += f"; staying breaks the {' and '.join(here.violations)}, moving keeps it"
            else:
                text += f"; gain {gain:.0%} > required {required:.0%}"
        return bounded(f"move {s.name}: {text}", SHORT_LIMIT)


def _figures(c: CandidateScore) -> str:
    return f"completion {c.time.raw:.0f}s P50, 1-fidelity {c.error.raw:.3f}, ${c.usd.raw:.2f}"


def _placement(p: Prediction) -> Placement:
    kind = ResourceKind.BACKEND if p.kind == QPU else ResourceKind.POOL
    return Placement(kind=kind, name=p.resource)


def decide(snapshot: ClusterSnapshot) -> ClusterDecision:
    """Placements for every subtask placeable now, moves for those worth moving, and why
    for those that wait; see the module docstring for the rules.

    The garbage collector is paused during the pass, as during a prediction pass
    (``Predictor.predict``): a pass allocates ~10^5 objects that are not garbage, and a
    collection triggered by them walks the operator's whole heap (measured: p99 of a
    1,000-subtask pass 420 -> 245 ms, ``bench/decision_pass.py``)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _Pass(snapshot).run()
    finally:
        if collecting:
            gc.enable()


_GAIN_EXPONENT: Final = 64.0  # 1 - 2 ** 64: far below any threshold, and finite


def relative_gain(here: float, there: float) -> float:
    """How much better ``there`` is than ``here``, as a fraction of what staying costs.

    One unit of a score's term is twice the best completion time, ten points of fidelity,
    or (without a budget) twice the cheapest spend; time and spend are base-2 logs, so for
    them ``2 ** score`` is the cost as a factor over the ideal, and the gain is
    ``1 - 2 ** (there - here)`` for every term alike. Time weighing alone, a move that
    finishes the workflow 20% sooner gains 20%; weighing a third (``balanced``), it
    gains 1 - 0.8 ** (1/3), 7%. The score difference divided by the score itself (the
    distance from the ideal) made a place a percent slower than the ideal look a hundred
    percent worse: replaying the week of real queues, loops moved for 1% of their
    predicted completion, and back again a pass later (issue 14)."""
    # Clamped: a breach of the budget or deadline can put thousands of units between two
    # scores, and 2 ** 1024 overflows (the pass never raises).
    return 1.0 - math.pow(2.0, min(max(there - here, -_GAIN_EXPONENT), _GAIN_EXPONENT))
