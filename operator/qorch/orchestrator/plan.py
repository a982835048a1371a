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
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from qorch.api.meta import Condition
from qorch.api.workflow import (
    HistoryEntry,
    HybridWorkflowStatus,
    ResourceKind,
    SubtaskPhase,
    SubtaskSpec,
    SubtaskStatus,
    WorkflowPhase,
)
from qorch.orchestrator.lifecycle import ACTIVE, TERMINAL, check_transition
from qorch.orchestrator.placement import Infeasible, PlacementPolicy
from qorch.orchestrator.snapshot import JobPhase, PodPhase, WorkflowSnapshot
from qorch.orchestrator.validation import validate

MAX_HISTORY = 32
# Results up to this size (compact JSON) live in the status; larger ones in a ConfigMap
# (which holds up to ~1 MiB), with a summary and a reference left in the status.
STATUS_RESULT_LIMIT_BYTES = 4096


# ---- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePod:
    """Create the subtask's pod, gated: nothing schedules it until ``ReleasePod``."""

    subtask: str
    attempt: int
    pod_name: str
    pool: str


@dataclass(frozen=True)
class ReleasePod:
    """ONE update: narrow the pod to ``pool`` and remove Qorch's scheduling gate."""

    pod_name: str
    pool: str


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


Action = CreatePod | ReleasePod | DeletePod | SubmitJob | CancelJob | StoreResult


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
    return f"{workflow}-{subtask}-{attempt}"


def job_id(namespace: str, workflow: str, subtask: str, attempt: int) -> str:
    return f"{namespace}.{workflow}.{subtask}.{attempt}"


def result_config_map(workflow: str, subtask: str) -> str:
    return f"{workflow}-{subtask}-result"


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

    @property
    def now(self) -> str:
        return _iso(self.snap.now)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event(reason, message, warning))

    def requeue_in(self, delay: dt.timedelta) -> None:
        delay = max(delay, dt.timedelta(0))
        self.requeue = delay if self.requeue is None else min(self.requeue, delay)

    def set_condition(self, type_: str, status: str, reason: str, message: str) -> None:
        conds = [c for c in self.status.conditions if c.type != type_]
        old = next((c for c in self.status.conditions if c.type == type_), None)
        if old and (old.status, old.reason, old.message) == (status, reason, message):
            return
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

    def move(self, st: SubtaskStatus, new: SubtaskPhase, event: str, message: str = "") -> None:
        check_transition(st.name, st.phase, new)
        if st.phase == new and st.message == message:
            return
        st.phase = new
        st.message = message
        st.history = [
            *st.history,
            HistoryEntry(time=self.now, event=event, message=message[:1024]),
        ][-MAX_HISTORY:]


def _initial_status(snap: WorkflowSnapshot) -> HybridWorkflowStatus:
    status = snap.status.model_copy(deep=True)
    known = {s.name for s in status.subtasks}
    for sub in snap.spec.subtasks:
        if sub.name not in known:
            status.subtasks.append(SubtaskStatus(name=sub.name))
    return status


def plan(snapshot: WorkflowSnapshot, policy: PlacementPolicy) -> Plan:
    cyc = _Cycle(snapshot, _initial_status(snapshot), policy)
    status = cyc.status
    if status.phase in (WorkflowPhase.SUCCEEDED, WorkflowPhase.FAILED):
        return Plan(status=status)

    if status.observedGeneration is None:
        errors = validate(snapshot.spec, snapshot.circuits, snapshot.backends)
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

    _roll_up(cyc, by_name)
    return _finish(cyc)


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
        if all(d.phase is SubtaskPhase.SUCCEEDED for d in deps):
            _launch(cyc, sub, st)
        return
    if st.phase is SubtaskPhase.RETRYING:
        if st.retryAfter and _parse(st.retryAfter) > cyc.snap.now:
            cyc.requeue_in(_parse(st.retryAfter) - cyc.snap.now)
            return
        _launch(cyc, sub, st)
        return
    if st.placement is None:
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
    st.attempts += 1
    st.placement = decision
    st.launchedAt = cyc.now
    st.startedAt = None
    st.retryAfter = None
    st.result = None
    snap = cyc.snap
    if decision.kind is ResourceKind.POOL:
        st.podName = pod_name(snap.name, sub.name, st.attempts)
        st.jobId = None
        cyc.actions.append(CreatePod(sub.name, st.attempts, st.podName, decision.name))
        cyc.actions.append(ReleasePod(st.podName, decision.name))
        where = f"pod {st.podName} on pool {decision.name}"
    else:
        st.jobId = job_id(snap.namespace, snap.name, sub.name, st.attempts)
        st.podName = None
        cyc.actions.append(SubmitJob(sub.name, st.attempts, st.jobId, decision.name))
        where = f"job {st.jobId} on quantum backend {decision.name}"
    message = f"attempt {st.attempts}: {where}"
    cyc.move(st, SubtaskPhase.LAUNCHING, "Placed", message)
    cyc.event("Placed", f"{sub.name} {message}")


def _track_pod(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus) -> None:
    assert st.podName is not None and st.placement is not None
    pod = cyc.snap.pods.get(st.podName)
    if pod is None:
        launched = _parse(st.launchedAt) if st.launchedAt else cyc.snap.now
        if cyc.snap.now - launched > cyc.snap.config.lost_pod_grace:
            _fail_attempt(cyc, sub, st, f"pod {st.podName} disappeared")
        else:
            # Not in the cache yet, or the create never happened: creating again is harmless.
            cyc.actions.append(CreatePod(sub.name, st.attempts, st.podName, st.placement.name))
            cyc.actions.append(ReleasePod(st.podName, st.placement.name))
            cyc.requeue_in(dt.timedelta(seconds=2))
        return
    if pod.phase is PodPhase.GATED:
        cyc.actions.append(ReleasePod(pod.name, st.placement.name))
        return
    observed = {
        PodPhase.PENDING: (_Seen.WAITING, f"pod {pod.name} released to pool {st.placement.name}"),
        PodPhase.RUNNING: (_Seen.RUNNING, f"pod {pod.name} running on node {pod.node}"),
        PodPhase.SUCCEEDED: (_Seen.DONE, f"pod {pod.name} completed"),
        PodPhase.FAILED: (_Seen.FAILED, f"pod {pod.name} failed: {pod.message}".strip()),
    }[pod.phase]
    _observe(cyc, sub, st, *observed, result=pod.result, waiting_event="Released")


def _track_job(cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus) -> None:
    assert st.jobId is not None and st.placement is not None
    job = cyc.snap.jobs.get(st.jobId)
    if job is None:
        # The gateway does not know the job (never submitted, or it restarted): resubmit.
        cyc.actions.append(SubmitJob(sub.name, st.attempts, st.jobId, st.placement.name))
        cyc.requeue_in(dt.timedelta(seconds=2))
        return
    where = st.placement.name
    observed = {
        JobPhase.QUEUED: (_Seen.WAITING, f"job {job.job_id} queued on {where}"),
        JobPhase.RUNNING: (_Seen.RUNNING, f"job {job.job_id} running on {where}"),
        JobPhase.DONE: (_Seen.DONE, f"job {job.job_id} done"),
    }.get(job.phase, (_Seen.FAILED, f"job {job.job_id} {job.phase.lower()}: {job.message}"))
    if observed[0] is _Seen.DONE:
        backend = cyc.snap.backends.get(where)
        if backend is not None:
            cyc.status.costUSD = round(
                cyc.status.costUSD + job.qpu_seconds * backend.price_per_qpu_second, 6
            )
    _observe(cyc, sub, st, *observed, result=job.result, waiting_event="Queued")


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
        _record_result(cyc, st, result)
        cyc.move(st, SubtaskPhase.SUCCEEDED, "Succeeded", what)
        cyc.event("SubtaskSucceeded", f"{sub.name}: {what}")
    else:
        _fail_attempt(cyc, sub, st, what)


def _record_result(cyc: _Cycle, st: SubtaskStatus, result: dict[str, Any] | None) -> None:
    if result is None or len(json.dumps(result, separators=(",", ":"))) <= (
        STATUS_RESULT_LIMIT_BYTES
    ):
        st.result = result
        return
    name = result_config_map(cyc.snap.name, st.name)
    cyc.actions.append(StoreResult(st.name, name, result))
    summary = {
        k: v
        for k, v in result.items()
        if k not in ("counts", "expectationValues", "stds", "observables")
    }
    st.result = {**summary, "configMapRef": {"name": name, "key": "result.json"}}


def _fail_attempt(
    cyc: _Cycle, sub: SubtaskSpec, st: SubtaskStatus, message: str, final: bool = False
) -> None:
    if not final and st.attempts <= sub.maxRetries:
        cfg = cyc.snap.config
        delay = min(cfg.retry_backoff_base * (2 ** max(st.attempts - 1, 0)), cfg.retry_backoff_max)
        st.retryAfter = _iso(cyc.snap.now + delay)
        cyc.requeue_in(delay)
        cyc.move(
            st,
            SubtaskPhase.RETRYING,
            "AttemptFailed",
            f"{message}; retry {st.attempts}/{sub.maxRetries} in {int(delay.total_seconds())}s",
        )
        cyc.event("AttemptFailed", f"{sub.name}: {st.message}", warning=True)
        return
    st.finishedAt = cyc.now
    cyc.move(
        st,
        SubtaskPhase.FAILED,
        "Failed",
        message if final else f"{message}; gave up after {st.attempts} attempts",
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


def _finish(cyc: _Cycle) -> Plan:
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
