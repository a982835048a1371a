"""``plan(snapshot) -> Plan``: one reconciliation decision for one workflow, no I/O.

The planner compares the recorded subtask states with what the cluster shows (pods,
gateway jobs) and returns the next status plus the actions that move the world towards
it. Actions are idempotent by construction: child names are deterministic
(``<workflow>-<subtask>-<attempt>``), so replaying a plan after a crash creates nothing
twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import ValidationError

from qorch.api.meta import Condition
from qorch.api.workflow import (
    ActualOutcome,
    ClassicalPool,
    HistoryEntry,
    HybridWorkflowStatus,
    MoveIntent,
    Placement,
    ResourceKind,
    SubtaskPhase,
    SubtaskSpec,
    SubtaskStatus,
    VariationalProgress,
    WorkflowPhase,
)
from qorch.orchestrator.lifecycle import ACTIVE, TERMINAL, check_transition
from qorch.orchestrator.outcomes import job_outcome, pod_outcome, predicted_outcome
from qorch.orchestrator.placement import Infeasible, PlacementPolicy
from qorch.orchestrator.prices import pod_usd
from qorch.orchestrator.snapshot import (
    JobPhase,
    JobState,
    PodPhase,
    PodState,
    WorkflowSnapshot,
)
from qorch.orchestrator.text import MESSAGE_LIMIT, SHORT_LIMIT, bounded, bounded_name
from qorch.orchestrator.validation import validate

MAX_HISTORY = 32
# Results up to this size (compact JSON) live in the status; larger ones in a ConfigMap
# (which holds up to ~1 MiB), with a summary and a reference left in the status.
STATUS_RESULT_LIMIT_BYTES = 4096
# The whole status, serialised, stays under this (etcd stores an object of at most
# ~1.5 MiB, spec included): ``_fit_budget`` compacts history, messages and results.
STATUS_BUDGET_BYTES = 512 * 1024
# Kubernetes object names (pods, ConfigMaps) and gateway job ids are DNS subdomains.
NAME_LIMIT = 253


# ---- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePod:
    """Create the subtask's pod, gated: nothing schedules it until ``ReleasePod``. A
    ``ReleasePod`` right after it in the same plan is done by the create (the applier
    creates the pod released: one write)."""

    subtask: str
    attempt: int
    pod_name: str
    pool: str
    num_qubits: int | None = None  # circuits: sizes the pod's memory for the simulation
    route: Placement | None = None  # variational: where its first batch goes
    # The results of the subtasks it depends on, mounted as files <dependency>.json.
    inputs: tuple[DependencyResult, ...] = ()
    moves: int = 0  # variational: the subtask's moves so far (written beside its route)


@dataclass(frozen=True)
class DependencyResult:
    """One dependency's result for a pod to read: inline (from the status), or the
    ConfigMap a large result was stored in (key ``result.json``)."""

    subtask: str
    result: dict[str, Any] | None = None
    config_map: str | None = None


@dataclass(frozen=True)
class RoutePod:
    """Re-route a running variational loop: its next batches go to ``route``. One patch
    of the pod's ``qorch.io/route`` annotation, which the worker reads before each batch;
    nothing restarts."""

    pod_name: str
    route: Placement
    moves: int = 0  # the subtask's moves with this route (written beside it on the pod)


@dataclass(frozen=True)
class ReleasePod:
    """ONE update: narrow the pod to ``pool`` and remove Qorch's scheduling gate."""

    pod_name: str
    pool: str
    moves: int = 0  # a narrow: the subtask's moves with it (written beside the pool)


@dataclass(frozen=True)
class DeletePod:
    pod_name: str
    reason: str


@dataclass(frozen=True)
class SubmitJob:
    subtask: str
    attempt: int
    job_id: str
    backend: str
    # The provider's id of a run the gateway forgot: it re-attaches instead of re-running.
    remote_job_id: str | None = None


@dataclass(frozen=True)
class CancelJob:
    job_id: str
    backend: str
    reason: str


@dataclass(frozen=True)
class StoreResult:
    """A result too large for the status goes to a ConfigMap owned by the workflow."""

    subtask: str
    config_map: str
    result: dict[str, Any]


Action = CreatePod | ReleasePod | DeletePod | SubmitJob | CancelJob | StoreResult | RoutePod


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Plan:
    status: HybridWorkflowStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: dt.timedelta | None = None


# ---- naming ----------------------------------------------------------------------------


def pod_name(workflow: str, subtask: str, attempt: int) -> str:
    return bounded_name(workflow, NAME_LIMIT, f"-{subtask}-{attempt}")


def job_id(namespace: str, workflow: str, subtask: str, attempt: int) -> str:
    return bounded_name(f"{namespace}.{workflow}", NAME_LIMIT, f".{subtask}.{attempt}")


# A variational loop names its batches' jobs ``<prefix>.e<evaluation>``: room for that.
LOOP_JOB_SUFFIX_MAX = len(".e") + 8


def loop_job_prefix(namespace: str, workflow: str, subtask: str, attempt: int) -> str:
    """The prefix of a variational loop's gateway jobs: with its batch suffix, a job id
    is a DNS subdomain too (at most ``NAME_LIMIT``) however long the names are."""
    return bounded_name(
        f"{namespace}.{workflow}", NAME_LIMIT - LOOP_JOB_SUFFIX_MAX, f".{subtask}.{attempt}"
    )


def result_config_map(workflow: str, subtask: str) -> str:
    return bounded_name(workflow, NAME_LIMIT, f"-{subtask}-result")


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(t: str) -> dt.datetime:
    return dt.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


# ---- the planner -----------------------------------------------------------------------


@dataclass
class _Cycle:
    """Mutable scratch state of one planning call; only the frozen Plan leaves it."""

    snap: WorkflowSnapshot
    status: HybridWorkflowStatus
    policy: PlacementPolicy
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue: dt.timedelta | None = None
    hold_launches: bool = False  # the current generation failed validation

    @property
    def now(self) -> str:
        return _iso(self.snap.now)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event(reason, bounded(message, SHORT_LIMIT), warning))

    def requeue_in(self, delay: dt.timedelta) -> None:
        delay = max(delay, dt.timedelta(0))
        self.requeue = delay if self.requeue is None else min(self.requeue, delay)

    def set_condition(self, type_: str, status: str, reason: str, message: str) -> bool:
        """Set a condition; True when its status, reason or message changed."""
        message = bounded(message, MESSAGE_LIMIT)
        conds = [c for c in self.status.conditions if c.type != type_]
        old = next((c for c in self.status.conditions if c.type == type_), None)
        if old and (old.status, old.reason, old.message) == (status, reason, message):
            return False
        when = old.lastTransitionTime if old and old.status == status else self.now
        conds.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                lastTransitionTime=when,
                observedGeneration=self.snap.generation,
            )
        )
        self.status.conditions = sorted(conds, key=lambda c: c.type)
        return True

    def move(self, st: SubtaskStatus, new: SubtaskPhase, event: str, message: str = "") -> None:
        check_transition(st.name, st.phase, new)
        message = bounded(message, MESSAGE_LIMIT)
        if st.phase == new and st.message == message:
            return
        st.phase = new
        st.message = message
        st.history = [
            *st.history,
            HistoryEntry(time=self.now, event=event, message=bounded(message, SHORT_LIMIT)),
        ][-MAX_HISTORY:]


def _initial_status(snap: WorkflowSnapshot) -> HybridWorkflowStatus:
    status = _copy_status(snap.status)
    known = {s.name for s in status.subtasks}
    for sub in snap.spec.subtasks:
        if sub.name not in known:
            status.subtasks.append(SubtaskStatus(name=sub.name))
    return status


def _copy_status(status: HybridWorkflowStatus) -> HybridWorkflowStatus:
    """A deep copy for the plan to change. Dumped and validated again in pydantic's core:
    a third of ``deepcopy``'s time, which walked every subtask's history in Python on each
    cycle of each workflow. What differs from ``deepcopy``: every field counts as set
    (nothing here dumps with ``exclude_unset``), and what a ``result`` holds comes back as
    plain JSON-like values (as the apiserver gives it back anyway). A status that would
    not validate again (built without validation) is deep-copied as before."""
    try:
        return HybridWorkflowStatus.model_validate(status.model_dump())
    except ValidationError:
        return status.model_copy(deep=True)


def plan(snapshot: WorkflowSnapshot, policy: PlacementPolicy) -> Plan:
    cyc = _Cycle(snapshot, _initial_status(snapshot), policy)
    status = cyc.status
    if status.phase in (WorkflowPhase.SUCCEEDED, WorkflowPhase.FAILED):
        return Plan(status=status)

    if status.observedGeneration is None and _wait_for_sources(cyc):
        return _finish(cyc)
    errors = validate(snapshot.spec, snapshot.circuits, snapshot.backends)
    if status.observedGeneration is None:
        status.observedGeneration = snapshot.generation
        if errors:
            message = "; ".join(str(e) for e in errors)
            cyc.set_condition("Valid", "False", "InvalidSpec", message)
            cyc.set_condition("Succeeded", "False", "InvalidSpec", message)
            status.phase = WorkflowPhase.FAILED
            status.finishedAt = cyc.now
            for st in status.subtasks:
                cyc.move(st, SubtaskPhase.SKIPPED, "Skipped", "workflow spec is invalid")
            cyc.event("InvalidSpec", message, warning=True)
            return _finish(cyc)
        cyc.set_condition("Valid", "True", "Validated", "spec passed semantic validation")
        status.startedAt = status.startedAt or cyc.now
        cyc.event("Validated", f"{len(snapshot.spec.subtasks)} subtasks planned")
    elif errors:
        # An edit of a running workflow (its resources) that does not hold: keep what runs,
        # start nothing new until the spec is fixed, and say so. No silent fallback.
        message = "; ".join(str(e) for e in errors)
        if cyc.set_condition("Valid", "False", "InvalidUpdate", message):
            cyc.event(
                "InvalidUpdate",
                f"generation {snapshot.generation}: {message}; no new subtask starts until "
                "the spec is fixed",
                warning=True,
            )
    elif cyc.set_condition("Valid", "True", "Validated", "spec passed semantic validation"):
        cyc.event("Validated", f"generation {snapshot.generation} passed validation")
    cyc.hold_launches = bool(errors)
    status.observedGeneration = snapshot.generation
    if snapshot.metrics is not None:
        if snapshot.metrics.available:
            cyc.set_condition(
                "MetricsAvailable",
                "True",
                "PrometheusReachable",
                "live metrics are read from Prometheus",
            )
        else:
            cyc.set_condition(
                "MetricsAvailable",
                "False",
                "PrometheusUnavailable",
                f"{snapshot.metrics.reason}; deciding from pod and job states",
            )

    by_name = {s.name: s for s in status.subtasks}
    for sub in snapshot.spec.subtasks:
        _advance(cyc, sub, by_name[sub.name], by_name)

    _report_gateways(cyc)
    _report_predictor(cyc)
    _roll_up(cyc, by_name)
    return _finish(cyc)


def _wait_for_sources(cyc: _Cycle) -> bool:
    """Circuit sources that cannot be read yet are waited for (bounded), not failed."""
    snap = cyc.snap
    waiting = {n: i.error for n, i in snap.circuits.items() if i.transient and i.error}
    age = snap.now - snap.created if snap.created else dt.timedelta(0)
    if not waiting or age >= snap.config.source_wait:
        return False
    left = snap.config.source_wait - age
    message = "; ".join(f"subtask {n}: {e}" for n, e in sorted(waiting.items()))
    if cyc.set_condition(
        "Valid",
        "Unknown",
        "WaitingForSource",
        f"{message}; waiting up to {int(left.total_seconds())}s more before failing",
    ):
        cyc.event("WaitingForSource", message, warning=True)
    cyc.requeue_in(min(dt.timedelta(seconds=2), left))
    return True


def _advance(
    cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, by_name: dict[str, SubtaskStatus]
) -> None:
    if st.phase in TERMINAL:
        return
    if st.phase is SubtaskPhase.PENDING:
        deps = [by_name[d] for d in sub.dependsOn if d in by_name]
        if any(d.phase in (SubtaskPhase.FAILED, SubtaskPhase.SKIPPED) for d in deps):
            cyc.move(st, SubtaskPhase.SKIPPED, "Skipped", "a dependency did not succeed")
            return
        if all(d.phase is SubtaskPhase.SUCCEEDED for d in deps) and not cyc.hold_launches:
            _launch(cyc, sub, st)
        return
    if st.phase is SubtaskPhase.RETRYING:
        if st.retryAfter and _parse(st.retryAfter) > cyc.snap.now:
            cyc.requeue_in(_parse(st.retryAfter) - cyc.snap.now)
            return
        if not cyc.hold_launches:
            _launch(cyc, sub, st)
        return
    if st.placement is None:
        return
    if sub.variational is not None:
        _track_variational(cyc, sub, st)
        return
    if (st.moving is not None or sub.name in cyc.snap.moves) and _relocate(cyc, sub, st):
        return
    if st.placement.kind is ResourceKind.POOL:
        _track_pod(cyc, sub, st)
    else:
        _track_job(cyc, sub, st)


def _launch(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus) -> None:
    decision = cyc.policy.place(sub, cyc.snap)
    if isinstance(decision, Infeasible):
        if decision.permanent:
            _fail_attempt(cyc, sub, st, f"cannot place: {decision.reason}", final=True)
        elif st.message != decision.reason:
            st.message = decision.reason
            cyc.event("Unschedulable", f"{sub.name}: {decision.reason}", warning=True)
        return
    _start(cyc, sub, st, decision, "Placed")


def _start(
    cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, decision: Placement, event: str
) -> None:
    """A new attempt of ``sub`` on ``decision``: a gated pod, or a job at a gateway. For a
    variational subtask ``decision`` is its route; its pod runs on that pool (simulating
    there), or on the first CPU pool when the batches go to a quantum backend."""
    st.attempts += 1
    route = None
    if sub.variational is not None:
        route = decision
        st.route = decision
        st.progress = None  # a new attempt starts its loop (and its spend) afresh
        if decision.kind is ResourceKind.BACKEND:
            decision = Placement(
                kind=ResourceKind.POOL, name=_optimizer_pool(cyc, sub.variational.wants_gpu)
            )
    st.placement = decision
    # The prediction this placement was made on, kept beside the outcome to come.
    st.predicted = predicted_outcome(cyc.snap.predictions.get((sub.name, (route or decision).name)))
    st.actual = None
    st.launchedAt = cyc.now
    st.startedAt = None
    st.retryAfter = None
    st.unreachableSince = None
    st.remoteJobId = None
    st.result = None
    snap = cyc.snap
    released = False
    if decision.kind is ResourceKind.POOL:
        st.podName = pod_name(snap.name, sub.name, st.attempts)
        st.jobId = None
        cyc.actions.append(_create_pod(cyc, sub, st, decision.name, route))
        if _committed(cyc, sub, st):
            cyc.actions.append(ReleasePod(st.podName, decision.name))
            released = True
        where = f"pod {st.podName} on pool {decision.name}"
        if route is not None:
            where += f", batches to {route.kind.value} {route.name}"
    else:
        st.jobId = job_id(snap.namespace, snap.name, sub.name, st.attempts)
        st.podName = None
        cyc.actions.append(SubmitJob(sub.name, st.attempts, st.jobId, decision.name))
        cyc.requeue_in(snap.config.job_poll_min)  # gateways do not call back: poll
        where = f"job {st.jobId} on quantum backend {decision.name}"
    message = f"attempt {st.attempts}: {where}"
    cyc.move(st, SubtaskPhase.LAUNCHING, event, message)
    if released:
        # Created on its pool (the applier creates it placed): Scheduled in the same
        # status write, not one write later when the watch shows the pod. A create that
        # failed looks the same either way: no pod, created again within lost_pod_grace.
        cyc.move(
            st,
            SubtaskPhase.SCHEDULED,
            "Released",
            f"pod {st.podName} released to pool {decision.name}",
        )
    cyc.event(event, f"{sub.name} {message}")


class _Old(Enum):
    """Where the attempt a move leaves behind stands."""

    MOVABLE = "movable"  # a job still queued, a pod still gated or unbound: cancel it
    GONE = "gone"  # cancelled, deleted, or never known: the new attempt may start
    STARTED = "started"  # it began running (or ended) before it could be cancelled
    UNKNOWN = "unknown"  # its gateway does not answer: wait


def _old_attempt(cyc: _Cycle, st: SubtaskStatus) -> _Old:
    assert st.placement is not None
    if st.placement.kind is ResourceKind.POOL:
        pod = cyc.snap.pods.get(st.podName or "")
        if pod is None:
            return _Old.GONE
        if pod.phase is PodPhase.GATED or (pod.phase is PodPhase.PENDING and pod.node is None):
            return _Old.MOVABLE
        return _Old.STARTED
    job = cyc.snap.jobs.get(st.jobId or "")
    if job is None or job.phase in (JobPhase.CANCELLED, JobPhase.ERROR):
        return _Old.GONE
    if job.phase is JobPhase.QUEUED:
        return _Old.MOVABLE
    if job.phase is JobPhase.UNKNOWN:
        return _Old.UNKNOWN
    return _Old.STARTED


def _relocate(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus) -> bool:
    """A move in three steps, each written to the status before the next: record the
    intent; cancel the old attempt (job still queued, pod not yet bound); once it is gone,
    start the new one. A restart between any two steps resumes from the status: the
    subtask is neither lost nor run twice, and a cancelled attempt is not a failure (the
    retry budget is untouched). If the old attempt starts running first, the move is
    dropped. True when this cycle handled the subtask."""
    assert st.placement is not None
    old = _old_attempt(cyc, st)
    pod = cyc.snap.pods.get(st.podName or "") if st.placement.kind is ResourceKind.POOL else None
    stopping = pod is not None and (
        pod.phase is PodPhase.RUNNING or (pod.deleting and pod.phase is not PodPhase.SUCCEEDED)
    )
    if st.moving is not None and st.moving.relaunch and stopping:
        old = _Old.MOVABLE  # stopping it was the plan; a pod being deleted is going
    if st.moving is None:
        request = cyc.snap.moves.get(sub.name)
        limit = cyc.snap.spec.reallocation.maxMovesPerSubtask
        relaunch = (
            request is not None
            and request.how == "relaunch"
            and pod is not None
            and pod.phase is PodPhase.RUNNING
        )
        if (
            request is None
            or (old is not _Old.MOVABLE and not relaunch)
            or request.to == st.placement
            or cyc.hold_launches
            or not cyc.snap.spec.reallocation.enabled
            or st.moves >= limit
        ):
            return False
        reason = bounded(request.reason, 1024)
        if request.how == "narrow" and pod is not None and pod.phase is PodPhase.GATED:
            _narrow(cyc, sub, st, request.to, reason)
            return True
        st.moving = MoveIntent(to=request.to, reason=reason, since=cyc.now, relaunch=relaunch)
        cyc.event("Moving", f"{sub.name}: {st.placement.name} -> {request.to.name}: {reason}")
        cyc.requeue_in(dt.timedelta(0))
        return True
    if old is _Old.STARTED:
        cyc.event(
            "MoveAbandoned",
            f"{sub.name}: attempt {st.attempts} started on {st.placement.name} before it "
            f"could be cancelled; it stays there (no move to {st.moving.to.name})",
        )
        st.moving = None
        return False
    if old is _Old.UNKNOWN:
        return False  # the gateway's silence is handled as for any job
    if old is _Old.MOVABLE:
        if st.placement.kind is ResourceKind.POOL and st.podName:
            if pod is None or not pod.deleting:
                cyc.actions.append(DeletePod(st.podName, f"moving to {st.moving.to.name}"))
        elif st.jobId:
            cyc.actions.append(CancelJob(st.jobId, st.placement.name, "moving"))
        cyc.requeue_in(cyc.snap.config.job_poll_min)
        return True
    intent, was = st.moving, st.placement.name
    if intent.relaunch:
        _bill_stopped_pod(cyc, st)
    st.moving = None
    st.moves += 1
    st.movedFrom = was
    st.history = [
        *st.history,
        HistoryEntry(
            time=cyc.now,
            event="Moved",
            message=bounded(f"from {was} to {intent.to.name}: {intent.reason}", SHORT_LIMIT),
        ),
    ][-MAX_HISTORY:]
    cyc.event("Moved", f"{sub.name}: from {was} to {intent.to.name}: {intent.reason}")
    _start(cyc, sub, st, intent.to, "Relaunched")
    return True


def _pool(cyc: _Cycle, name: str) -> ClassicalPool | None:
    return next((p for p in cyc.snap.spec.resources.classicalPools if p.name == name), None)


def _bill_stopped_pod(cyc: _Cycle, st: SubtaskStatus) -> None:
    """A relaunched simulation's old pod ran, and its pool bills it, until it was stopped:
    its time since it started counts in costUSD (it reports no usage of its own)."""
    assert st.placement is not None
    pool = _pool(cyc, st.placement.name)
    started = _parse(st.startedAt) if st.startedAt else None
    if pool is None or started is None:
        return
    usd = pod_usd(pool, max((cyc.snap.now - started).total_seconds(), 0.0))
    if usd > 0:
        cyc.status.costUSD = round(cyc.status.costUSD + usd, 6)


def _narrow(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, to: Placement, reason: str) -> None:
    """A gated pod whose requests fit the new pool as they are: released there, the same
    pod (nothing to cancel or recreate). Its scheduling directives are only added at
    release, so this narrows a pod that was never bound anywhere."""
    assert st.podName is not None
    _narrow_recorded(cyc, sub, st, to, reason)
    cyc.actions.append(ReleasePod(st.podName, to.name, st.moves))


def _narrow_recorded(
    cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, to: Placement, reason: str
) -> None:
    assert st.placement is not None
    was = st.placement.name
    st.placement = to
    st.moves += 1
    st.movedFrom = was
    st.predicted = predicted_outcome(cyc.snap.predictions.get((sub.name, to.name)))
    message = bounded(f"from {was} to {to.name} (the gated pod, narrowed): {reason}", SHORT_LIMIT)
    st.history = [*st.history, HistoryEntry(time=cyc.now, event="Moved", message=message)][
        -MAX_HISTORY:
    ]
    cyc.event("Moved", f"{sub.name}: {message}")


def _narrowed_before(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, pool: str) -> None:
    """The pod was released to another pool than the status says: a narrow whose status
    write was lost (a restart between the release and the write). Adopted, counted once."""
    if pool not in {p.name for p in cyc.snap.spec.resources.classicalPools}:
        return
    assert st.placement is not None
    to = Placement(kind=ResourceKind.POOL, name=pool)
    pod = cyc.snap.pods.get(st.podName or "")
    if pod is None or pod.pool_moves <= st.moves:
        # Released there by a start whose status write was lost, not by a narrow: the
        # pod's pool is where it runs, and no move happened.
        st.placement = to
        st.predicted = predicted_outcome(cyc.snap.predictions.get((sub.name, pool)))
        return
    _narrow_recorded(
        cyc, sub, st, to,
        f"read back from pod {st.podName}: the status write after the narrow was lost",
    )  # fmt: skip


def _qubits(cyc: _Cycle, sub: SubtaskSpec) -> int | None:
    info = cyc.snap.circuits.get(sub.name) if sub.source is not None else None
    return info.num_qubits if info else None


def _create_pod(
    cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, pool: str, route: Placement | None
) -> CreatePod:
    assert st.podName is not None
    return CreatePod(
        sub.name, st.attempts, st.podName, pool, _qubits(cyc, sub), route, _inputs(cyc, sub),
        st.moves,
    )  # fmt: skip


def _inputs(cyc: _Cycle, sub: SubtaskSpec) -> tuple[DependencyResult, ...]:
    """What each dependency produced, for the pod to read as files (they all succeeded)."""
    by_name = {s.name: s for s in cyc.status.subtasks}
    out = []
    for dep in sub.dependsOn:
        st = by_name.get(dep)
        result = st.result if st is not None else None
        ref = result.get("configMapRef") if isinstance(result, dict) else None
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            out.append(DependencyResult(dep, config_map=ref["name"]))
        else:
            out.append(DependencyResult(dep, result=result))
    return tuple(out)


def inputs_config_map(pod: str) -> str:
    return bounded_name(pod, NAME_LIMIT, "-inputs")


def _optimizer_pool(cyc: _Cycle, gpu: bool) -> str:
    """Where a variational loop's optimizer runs when its batches go to a QPU: the first
    CPU pool, or GPU pool when its pod requests GPUs (validation guarantees there is one)."""
    pools = cyc.snap.spec.resources.classicalPools
    if gpu:
        pools = [p for p in pools if p.gpu] or pools
    return sorted(pools, key=lambda p: p.gpu)[0].name


def _track_variational(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus) -> None:
    """A variational loop's pod is tracked like any pod; what it reported of its progress
    is copied into the status, and a move the pass asks for re-routes its next batches
    (the pod keeps running: no lost progress, no new attempt)."""
    pod = cyc.snap.pods.get(st.podName or "")
    if pod is not None and pod.phase is PodPhase.RUNNING:
        if pod.progress is not None:
            st.progress = _priced(cyc, st.progress, pod.progress)
        cyc.requeue_in(cyc.snap.config.progress_poll)
    # A route read back from the pod first; a move the pass asks for waits a cycle then.
    reconciled = pod is not None and not pod.deleting and _reconcile_route(cyc, st, pod)
    request = None if reconciled else cyc.snap.moves.get(sub.name)
    if (
        request is not None
        and pod is not None
        and pod.phase in (PodPhase.GATED, PodPhase.PENDING, PodPhase.RUNNING)
        and request.to != st.route
        and _routable(cyc, st, request.to)
        and cyc.snap.spec.reallocation.enabled
        and not cyc.hold_launches
        and st.moves < cyc.snap.spec.reallocation.maxMovesPerSubtask
    ):
        was = st.route.name if st.route else "?"
        st.movedFrom = st.route.name if st.route else None
        st.route = request.to
        st.moves += 1
        reason = bounded(request.reason, 1024)
        st.history = [
            *st.history,
            HistoryEntry(
                time=cyc.now,
                event="Rerouted",
                message=bounded(
                    f"next batches from {was} to {request.to.name}: {reason}", SHORT_LIMIT
                ),
            ),
        ][-MAX_HISTORY:]
        cyc.actions.append(RoutePod(pod.name, request.to, st.moves))
        cyc.event("Rerouted", f"{sub.name}: next batches from {was} to {request.to.name}: {reason}")
    finished = st.phase is SubtaskPhase.SUCCEEDED
    _track_pod(cyc, sub, st)
    if not finished and st.phase is SubtaskPhase.SUCCEEDED and isinstance(st.result, dict):
        final = _final_progress(st.result, st.progress)
        st.progress = final if final is None else _priced(cyc, st.progress, final)
        if st.actual is not None and st.progress is not None and st.progress.spentUSD:
            # The loop's cost: its pod's time and the QPU time its batches were billed.
            pod_usd = st.actual.costUSD or 0.0
            st.actual.costUSD = round(pod_usd + st.progress.spentUSD, 6)


def _priced(
    cyc: _Cycle, last: VariationalProgress | None, now: VariationalProgress
) -> VariationalProgress:
    """``now`` with the spend of the QPU seconds billed since ``last`` (the same attempt's
    previous report) added at each backend's current price; the workflow's costUSD grows
    by as much, as the batches run, so the budget sees the loop's spend before it ends."""
    before = last.qpuSeconds if last is not None else {}
    spent = last.spentUSD if last is not None else 0.0
    added = 0.0
    for backend, seconds in now.qpuSeconds.items():
        info = cyc.snap.backends.get(backend)
        billed = seconds - before.get(backend, 0.0)
        if info is not None and billed > 0:
            added += billed * info.price_per_qpu_second
    if added > 0:
        cyc.status.costUSD = round(cyc.status.costUSD + added, 6)
    # The most seen per backend is what was priced: a report that goes down and up again
    # (a lagging read) is not priced twice.
    priced = {**before, **{b: max(s, before.get(b, 0.0)) for b, s in now.qpuSeconds.items()}}
    return now.model_copy(update={"spentUSD": round(spent + added, 6), "qpuSeconds": priced})


def _reconcile_route(cyc: _Cycle, st: SubtaskStatus, pod: PodState) -> bool:
    """Reconcile the stored route with the pod's annotation (they differ only when a
    re-route's patch or its status write was lost). A route set by a later move than the
    status knows (the status write was lost) is adopted and counted once; otherwise the
    annotation lags (the patch failed) and is patched again. True when they differed."""
    if pod.route is None or st.route is None or pod.route == st.route:
        return False
    if pod.route_moves > st.moves and _routable(cyc, st, pod.route):
        was = st.route.name
        st.movedFrom = was
        st.route = pod.route
        st.moves += 1  # one patch is one move, whatever count the annotation claims
        message = bounded(
            f"next batches from {was} to {pod.route.name} (read back from pod {pod.name}: "
            "the status write after the re-route was lost)",
            SHORT_LIMIT,
        )
        st.history = [*st.history, HistoryEntry(time=cyc.now, event="Rerouted", message=message)][
            -MAX_HISTORY:
        ]
        cyc.event("Rerouted", f"{st.name}: {message}")
    elif pod.phase is not PodPhase.SUCCEEDED and pod.phase is not PodPhase.FAILED:
        cyc.actions.append(RoutePod(pod.name, st.route, st.moves))
    return True


def _routable(cyc: _Cycle, st: SubtaskStatus, to: Placement) -> bool:
    """A running loop's batches may go to any allowed backend, or be simulated in its own
    pod (its pool): another pool would need another pod."""
    if to.kind is ResourceKind.BACKEND:
        return to.name in cyc.snap.spec.resources.quantumBackends
    return st.placement is not None and to.name == st.placement.name


def _final_progress(
    result: dict[str, Any], last: VariationalProgress | None
) -> VariationalProgress | None:
    """The progress the finished loop reported in its result (the last poll may be older)."""
    try:
        return VariationalProgress(
            optimizer=str(result.get("optimizer", "")),
            iterations=int(result.get("iterations", 0)),
            evaluations=int(result.get("evaluations", 0)),
            energy=result.get("lastEnergy"),
            bestEnergy=result.get("energy"),
            batches={str(k): int(v) for k, v in (result.get("batches") or {}).items()},
            qpuSeconds={str(k): float(v) for k, v in (result.get("qpuSeconds") or {}).items()},
            updatedAt=last.updatedAt if last else None,
        )
    except (TypeError, ValueError):
        return last


def _track_pod(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus) -> None:
    assert st.podName is not None and st.placement is not None
    pod = cyc.snap.pods.get(st.podName)
    if pod is None:
        launched = _parse(st.launchedAt) if st.launchedAt else cyc.snap.now
        if cyc.snap.now - launched > cyc.snap.config.lost_pod_grace:
            _fail_attempt(cyc, sub, st, f"pod {st.podName} disappeared")
        else:
            # Not in the cache yet, or the create never happened: creating again is harmless.
            cyc.actions.append(_create_pod(cyc, sub, st, st.placement.name, st.route))
            if _committed(cyc, sub, st):
                cyc.actions.append(ReleasePod(st.podName, st.placement.name))
            cyc.requeue_in(dt.timedelta(seconds=2))
        return
    if pod.permanent:
        _fail_attempt(cyc, sub, st, f"{pod.message} (permanent: not retried)", final=True)
        return
    if pod.phase is PodPhase.GATED:
        _release_when_committed(cyc, sub, st, pod.name)
        return
    if pod.pool is not None and pod.pool != st.placement.name:
        _narrowed_before(cyc, sub, st, pod.pool)
    observed = {
        PodPhase.PENDING: (_Seen.WAITING, f"pod {pod.name} released to pool {st.placement.name}"),
        PodPhase.RUNNING: (_Seen.RUNNING, f"pod {pod.name} running on node {pod.node}"),
        PodPhase.SUCCEEDED: (_Seen.DONE, f"pod {pod.name} completed"),
        PodPhase.FAILED: (_Seen.FAILED, f"pod {pod.name} failed: {pod.message}".strip()),
    }[pod.phase]
    actual = None
    if observed[0] is _Seen.DONE:
        pool = _pool(cyc, st.placement.name)
        since = _parse(st.launchedAt) if st.launchedAt else None
        elapsed = (cyc.snap.now - since).total_seconds() if since else None
        actual = pod_outcome(pod, pool, elapsed)
        if actual.costUSD:
            cyc.status.costUSD = round(cyc.status.costUSD + actual.costUSD, 6)
    _observe(cyc, sub, st, *observed, result=pod.result, waiting_event="Released", actual=actual)


def _committed(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus) -> bool:
    """Whether the subtask's pod may leave the gate: always under the rule; under a
    cluster pass once the pass commits it to that pool. A variational loop's optimizer
    pod goes at once (the pass decides where its batches go, not where it runs)."""
    snap = cyc.snap
    if not snap.cluster_pass or sub.variational is not None:
        return True
    return snap.placements.get(sub.name) == st.placement


def _release_when_committed(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, pod: str) -> None:
    """A gated pod is released to its pool once that is decided: by the rule (no cluster
    pass), or when the cluster pass commits it there. A pod the pass holds back stays
    gated, out of the scheduler's way, and its message says why."""
    assert st.placement is not None
    if _committed(cyc, sub, st):
        cyc.actions.append(ReleasePod(pod, st.placement.name))
        return
    why = cyc.snap.held.get(sub.name) or "waiting for the cluster pass to commit it to a pool"
    message = bounded(f"pod {pod} kept gated: {why}", MESSAGE_LIMIT)
    if st.message != message:
        st.message = message
        cyc.event("Held", f"{sub.name}: {message}")


def _track_job(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus) -> None:
    assert st.jobId is not None and st.placement is not None
    job = cyc.snap.jobs.get(st.jobId)
    where = st.placement.name
    if job is None:
        # The gateway does not know the job: never submitted (a failed submit, replayed
        # here), or the gateway restarted without its state. Submitting again is safe
        # (idempotent by job id); with the provider's id the gateway re-attaches.
        cyc.actions.append(
            SubmitJob(sub.name, st.attempts, st.jobId, where, remote_job_id=st.remoteJobId)
        )
        if st.phase is not SubtaskPhase.LAUNCHING:
            again = (
                f"re-attaching to remote job {st.remoteJobId}"
                if st.remoteJobId
                else "submitted again"
            )
            cyc.event(
                "JobResubmitted",
                f"{sub.name}: the gateway of {where} no longer knows job {st.jobId} "
                f"(restarted without its state?); {again}",
                warning=True,
            )
        cyc.requeue_in(dt.timedelta(seconds=2))
        return
    if job.phase is JobPhase.UNKNOWN:
        _gateway_silent(cyc, sub, st, job)
        return
    if st.unreachableSince is not None:
        st.unreachableSince = None
        cyc.event("GatewayReachable", f"{sub.name}: the gateway of {where} answers again")
    if job.remote_job_id and st.remoteJobId != job.remote_job_id:
        st.remoteJobId = job.remote_job_id
    observed = {
        JobPhase.QUEUED: (_Seen.WAITING, f"job {job.job_id} queued on {where}"),
        JobPhase.RUNNING: (_Seen.RUNNING, f"job {job.job_id} running on {where}"),
        JobPhase.DONE: (_Seen.DONE, f"job {job.job_id} done"),
    }.get(job.phase, (_Seen.FAILED, f"job {job.job_id} {job.phase.lower()}: {job.message}"))
    actual = None
    if observed[0] is _Seen.DONE:
        backend = cyc.snap.backends.get(where)
        actual = job_outcome(job, backend.price_per_qpu_second if backend else 0.0)
        if actual.costUSD:
            cyc.status.costUSD = round(cyc.status.costUSD + actual.costUSD, 6)
    elif observed[0] is not _Seen.FAILED:
        _poll_soon(cyc, st)
    if observed[0] is _Seen.FAILED and job.permanent:
        _fail_attempt(cyc, sub, st, f"{observed[1]} (permanent: not retried)", final=True)
        return
    _observe(cyc, sub, st, *observed, result=job.result, waiting_event="Queued", actual=actual)


def _poll_soon(cyc: _Cycle, st: SubtaskStatus) -> None:
    """Gateways do not call back: poll young jobs often, older ones less (backoff)."""
    cfg = cyc.snap.config
    age = cyc.snap.now - _parse(st.launchedAt) if st.launchedAt else dt.timedelta(0)
    cyc.requeue_in(min(max(age / 4, cfg.job_poll_min), cfg.job_poll_max))


def _gateway_silent(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, job: JobState) -> None:
    """The job's gateway does not answer. Unknown is not gone (re-submitting could run it
    twice) and not fine (it could be lost): wait a bounded time, then give the job up and
    place the subtask again. That is the infrastructure's failure, not the subtask's, so
    it does not spend the retry budget."""
    assert st.placement is not None and st.jobId is not None
    where, now, grace = st.placement.name, cyc.snap.now, cyc.snap.config.gateway_unknown_grace
    if st.unreachableSince is None:
        st.unreachableSince = cyc.now
        cyc.event(
            "GatewayUnreachable",
            f"{sub.name}: the gateway of {where} does not answer ({job.message}); job "
            f"{st.jobId} is given up after {int(grace.total_seconds())}s without an answer",
            warning=True,
        )
    silent = now - _parse(st.unreachableSince)
    if silent < grace:
        cyc.requeue_in(grace - silent)
        return
    cyc.actions.append(CancelJob(st.jobId, where, "gateway unreachable; job given up"))
    st.unreachableSince = None
    st.retryAfter = cyc.now
    message = (
        f"the gateway of {where} did not answer for {int(silent.total_seconds())}s; job "
        f"{st.jobId} given up, placing the subtask again (not counted as a failed attempt)"
    )
    cyc.move(st, SubtaskPhase.RETRYING, "JobAbandoned", message)
    cyc.event("JobAbandoned", f"{sub.name}: {message}", warning=True)
    cyc.requeue_in(dt.timedelta(0))


def _report_gateways(cyc: _Cycle) -> None:
    """A workflow condition while any of its jobs waits on a gateway that does not answer."""
    silent = sorted(
        {
            s.placement.name
            for s in cyc.status.subtasks
            if s.unreachableSince and s.placement and s.phase in ACTIVE
        }
    )
    if silent:
        cyc.set_condition(
            "GatewaysReachable",
            "False",
            "GatewayUnreachable",
            f"no answer from the gateway of {', '.join(silent)}; waiting at most "
            f"{int(cyc.snap.config.gateway_unknown_grace.total_seconds())}s before placing "
            "their jobs again",
        )
    elif any(c.type == "GatewaysReachable" for c in cyc.status.conditions):
        cyc.set_condition(
            "GatewaysReachable", "True", "GatewaysAnswer", "every gateway in use answers"
        )


def _report_predictor(cyc: _Cycle) -> None:
    """Condition ``Predicted``: whether the predictions this workflow's placements use came
    from validated models or, in part, from the analytic fallback (and why)."""
    report = cyc.snap.predictor
    if report is None or not report.pairs:
        return
    was = next((c.status for c in cyc.status.conditions if c.type == "Predicted"), None)
    if report.fallbacks:
        message = f"analytic fallback for {len(report.fallbacks)} model output(s): " + "; ".join(
            report.fallbacks
        )
        # The message may change pass by pass (counts of pairs): warn on the change to
        # False, not on each new message.
        if cyc.set_condition("Predicted", "False", "AnalyticFallback", message) and was != "False":
            cyc.event("PredictorFallback", message, warning=True)
    else:
        serving = "every prediction came from a validated model"
        if cyc.set_condition("Predicted", "True", "ModelsServing", serving) and was == "False":
            cyc.event("PredictorModels", "predictions come from validated models again")


class _Seen(Enum):
    """What a pod or a gateway job shows, in the terms of the subtask lifecycle."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def _observe(
    cyc: _Cycle,
    sub: SubtaskSpec,
    st: SubtaskStatus,
    seen: _Seen,
    what: str,
    *,
    result: dict[str, Any] | None,
    waiting_event: str,
    actual: ActualOutcome | None = None,
) -> None:
    """Move the subtask to what its pod or job shows (pods and jobs share the lifecycle)."""
    if seen is _Seen.WAITING:
        if st.phase is SubtaskPhase.LAUNCHING:
            cyc.move(st, SubtaskPhase.SCHEDULED, waiting_event, what)
    elif seen is _Seen.RUNNING:
        if st.phase is not SubtaskPhase.RUNNING:
            st.startedAt = cyc.now
            cyc.move(st, SubtaskPhase.RUNNING, "Started", what)
            cyc.event("Started", f"{sub.name}: {what}")
    elif seen is _Seen.DONE:
        st.startedAt = st.startedAt or cyc.now
        st.finishedAt = cyc.now
        st.actual = actual
        _record_result(cyc, st, result)
        cyc.move(st, SubtaskPhase.SUCCEEDED, "Succeeded", what)
        cyc.event("SubtaskSucceeded", f"{sub.name}: {what}")
    else:
        _fail_attempt(cyc, sub, st, what)


def _record_result(cyc: _Cycle, st: SubtaskStatus, result: dict[str, Any] | None) -> None:
    if result is None or _json_size(result) <= STATUS_RESULT_LIMIT_BYTES:
        st.result = result
        return
    _offload_result(cyc, st, result)


def _offload_result(cyc: _Cycle, st: SubtaskStatus, result: dict[str, Any]) -> None:
    """The result goes to a ConfigMap; the status keeps a summary and the reference."""
    name = result_config_map(cyc.snap.name, st.name)
    cyc.actions.append(StoreResult(st.name, name, result))
    summary = {
        k: v
        for k, v in result.items()
        if k not in ("counts", "expectationValues", "stds", "observables") and _json_size(v) < 256
    }
    st.result = {**summary, "configMapRef": {"name": name, "key": "result.json"}}


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def _fail_attempt(
    cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, message: str, final: bool = False
) -> None:
    st.failures += 1
    if not final and st.failures <= sub.maxRetries:
        cfg = cyc.snap.config
        delay = min(cfg.retry_backoff_base * (2 ** max(st.failures - 1, 0)), cfg.retry_backoff_max)
        st.retryAfter = _iso(cyc.snap.now + delay)
        cyc.requeue_in(delay)
        cyc.move(
            st,
            SubtaskPhase.RETRYING,
            "AttemptFailed",
            f"{message}; retry {st.failures}/{sub.maxRetries} in {int(delay.total_seconds())}s",
        )
        cyc.event("AttemptFailed", f"{sub.name}: {st.message}", warning=True)
        return
    st.finishedAt = cyc.now
    cyc.move(
        st,
        SubtaskPhase.FAILED,
        "Failed",
        message if final else f"{message}; gave up after {st.failures} failed attempts",
    )
    cyc.event("SubtaskFailed", f"{sub.name}: {st.message}", warning=True)


def _roll_up(cyc: _Cycle, by_name: dict[str, SubtaskStatus]) -> None:
    status = cyc.status
    phases = [s.phase for s in status.subtasks]
    failed = [s for s in status.subtasks if s.phase is SubtaskPhase.FAILED]
    if failed:
        # Fail fast: stop what still runs, skip what never started.
        for st in status.subtasks:
            if st.phase in ACTIVE:
                if st.placement and st.placement.kind is ResourceKind.POOL and st.podName:
                    cyc.actions.append(DeletePod(st.podName, "workflow failed"))
                elif st.placement and st.jobId:
                    cyc.actions.append(CancelJob(st.jobId, st.placement.name, "workflow failed"))
                st.finishedAt = cyc.now
                cyc.move(st, SubtaskPhase.FAILED, "Cancelled", "workflow failed")
            elif st.phase in (SubtaskPhase.PENDING, SubtaskPhase.RETRYING):
                if st.phase is SubtaskPhase.RETRYING:
                    cyc.move(st, SubtaskPhase.FAILED, "Cancelled", "workflow failed")
                else:
                    cyc.move(st, SubtaskPhase.SKIPPED, "Skipped", "workflow failed")
        message = "; ".join(f"subtask {s.name}: {s.message}" for s in failed)
        status.phase = WorkflowPhase.FAILED
        status.finishedAt = cyc.now
        cyc.set_condition("Succeeded", "False", "SubtaskFailed", message)
        cyc.event("WorkflowFailed", message, warning=True)
    elif all(p is SubtaskPhase.SUCCEEDED for p in phases):
        status.phase = WorkflowPhase.SUCCEEDED
        status.finishedAt = cyc.now
        cyc.set_condition(
            "Succeeded", "True", "AllSubtasksSucceeded", f"{len(phases)} subtasks succeeded"
        )
        cyc.event("WorkflowSucceeded", f"all {len(phases)} subtasks succeeded")
    elif any(p is not SubtaskPhase.PENDING for p in phases):
        status.phase = WorkflowPhase.RUNNING
        cyc.set_condition(
            "Succeeded",
            "Unknown",
            "Running",
            f"{sum(p is SubtaskPhase.SUCCEEDED for p in phases)}/{len(phases)} subtasks succeeded",
        )


def _fit_budget(cyc: _Cycle) -> None:
    """Keep the status under ``STATUS_BUDGET_BYTES`` whatever the workflow did: shed the
    least useful detail first (old history, long messages), then move inline results to
    ConfigMaps, then cut deeper. Conditions and phases are never shed."""
    status = cyc.status

    def trim(history: int, history_message: int, message: int) -> None:
        for st in status.subtasks:
            st.history = [
                HistoryEntry(
                    time=h.time, event=h.event, message=bounded(h.message, history_message)
                )
                for h in st.history[-history:]
            ]
            st.message = bounded(st.message, message)

    def offload() -> None:
        for st in status.subtasks:
            if st.result and "configMapRef" not in st.result and _json_size(st.result) > 256:
                _offload_result(cyc, st, st.result)

    steps: tuple[Callable[[], None], ...] = (
        lambda: trim(8, 256, 1024),
        offload,
        lambda: trim(2, 128, 256),
        lambda: trim(0, 0, 128),
    )
    for step in steps:
        if _within_budget(status):
            return
        step()


def _within_budget(status: HybridWorkflowStatus) -> bool:
    """Whether the status's ASCII JSON (``_json_size``) fits ``STATUS_BUDGET_BYTES``.
    pydantic's own JSON is four times faster to make. When it is ASCII it differs from
    ``json.dumps`` only in how finite floats are spelled (``1e-7`` against ``1e-07``,
    ``0.00001`` against ``1e-05``; infinities are ``null`` in both): at most a quarter
    longer per value. So a status whose pydantic JSON is ASCII and under
    ``_SURELY_WITHIN`` of the budget fits; otherwise the exact count decides."""
    fast = status.model_dump_json()
    if fast.isascii() and len(fast) <= STATUS_BUDGET_BYTES * _SURELY_WITHIN:
        return True
    return _json_size(status.model_dump(mode="json")) <= STATUS_BUDGET_BYTES


# Under this share of the budget in pydantic's JSON, a status surely fits (see above).
_SURELY_WITHIN = 0.4


def _finish(cyc: _Cycle) -> Plan:
    _fit_budget(cyc)
    status = cyc.status
    done = sum(s.phase is SubtaskPhase.SUCCEEDED for s in status.subtasks)
    status.progress = f"{done}/{len(status.subtasks)}"
    status.moves = sum(s.moves for s in status.subtasks)
    return Plan(
        status=status,
        actions=tuple(cyc.actions),
        events=tuple(cyc.events),
        requeue_after=cyc.requeue,
    )
