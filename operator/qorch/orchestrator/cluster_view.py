"""Between one workflow's planning cycle and the cluster pass: what a workflow tells the pass
(``workflow_entry``, ``backend_loads``), one pass over all of them (``decide_cluster``: the
operator's leader and the digital twin both call it), and what the pass tells the workflow
back (``requests_for``: where to start its subtasks, which to move, which to hold). Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from qorch.api.workflow import Placement, ResourceKind, SubtaskPhase, SubtaskStatus
from qorch.orchestrator.capacity import NodeInfo, PodUsage, pool_capacity
from qorch.orchestrator.cluster import (
    BackendLoad,
    ClusterDecision,
    ClusterSnapshot,
    Stage,
    SubtaskEntry,
    WorkflowEntry,
    decide,
)
from qorch.orchestrator.snapshot import (
    BackendInfo,
    JobPhase,
    MoveRequest,
    PodPhase,
    WorkflowSnapshot,
)

_WAITING = (SubtaskPhase.PENDING, SubtaskPhase.RETRYING)
_LAUNCHED = (SubtaskPhase.LAUNCHING, SubtaskPhase.SCHEDULED, SubtaskPhase.RUNNING)
_DONE = (SubtaskPhase.SUCCEEDED, SubtaskPhase.FAILED, SubtaskPhase.SKIPPED)
_LOOPING = (SubtaskPhase.LAUNCHING, SubtaskPhase.SCHEDULED, SubtaskPhase.RUNNING)


def _time(stamp: str | None) -> dt.datetime | None:
    if not stamp:
        return None
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _succeeded(snap: WorkflowSnapshot, st: SubtaskStatus) -> bool:
    """Whether the subtask has succeeded, or will in this cycle's plan: its current attempt's
    pod or job has finished well in the snapshot though the status does not say so yet. The
    plan records that and starts the dependents at once, on the pass's placements for them;
    a dependent the pass had taken for blocked would be placed by the static rule instead."""
    if st.phase is SubtaskPhase.SUCCEEDED:
        return True
    if st.phase not in _LAUNCHED or st.placement is None or st.moving is not None:
        return False
    if st.placement.kind is ResourceKind.POOL:
        pod = snap.pods.get(st.podName or "")
        return pod is not None and pod.phase is PodPhase.SUCCEEDED and not pod.permanent
    job = snap.jobs.get(st.jobId or "")
    return job is not None and job.phase is JobPhase.DONE


def stage_of(snap: WorkflowSnapshot, st: SubtaskStatus, deps: Iterable[str]) -> Stage:
    """Where a subtask's current attempt stands, in the cluster pass's terms."""
    known = {s.name: s for s in snap.status.subtasks}
    if st.phase in _WAITING:
        if not all(d in known and _succeeded(snap, known[d]) for d in deps):
            return Stage.BLOCKED
        retry = _time(st.retryAfter)
        if st.phase is SubtaskPhase.RETRYING and retry is not None and retry > snap.now:
            return Stage.BLOCKED
        return Stage.READY
    if st.route is not None and st.placement is not None and st.phase in _LOOPING:
        # A variational loop: its next batches may go elsewhere without a restart, as a
        # queued job may (its resource is its route).
        return Stage.QUEUED
    if st.placement is None or st.phase is SubtaskPhase.RUNNING or st.moving is not None:
        return Stage.RUNNING  # nothing the pass may decide about now
    if st.placement.kind is ResourceKind.POOL:
        pod = snap.pods.get(st.podName or "")
        if pod is not None and pod.phase is PodPhase.GATED:
            return Stage.GATED
        if pod is None or (pod.phase is PodPhase.PENDING and pod.node is None):
            return Stage.RELEASED
        return Stage.RUNNING
    job = snap.jobs.get(st.jobId or "")
    if job is None or job.phase is JobPhase.QUEUED:
        return Stage.QUEUED
    return Stage.RUNNING


def _last_move(st: SubtaskStatus) -> dt.datetime | None:
    moved = [h.time for h in st.history if h.event in ("Moved", "Rerouted")]
    return _time(moved[-1]) if moved else None


def _jobs_ahead(snap: WorkflowSnapshot, st: SubtaskStatus) -> int | None:
    job = snap.jobs.get(st.jobId or "") if st.route is None else None
    return job.queue_position if job is not None else None


def workflow_entry(snap: WorkflowSnapshot, key: str) -> WorkflowEntry:
    """One workflow as the cluster pass sees it: its unfinished subtasks and predictions."""
    specs = {s.name: s for s in snap.spec.subtasks}
    entries: dict[str, SubtaskEntry] = {}
    known = {st.name: st for st in snap.status.subtasks}
    # A new workflow's status lists no subtask yet (the planner adds them): all pending.
    for st in (known.get(name) or SubtaskStatus(name=name) for name in specs):
        sub = specs[st.name]
        if st.phase in _DONE:
            continue
        info = snap.circuits.get(st.name) if sub.source is not None else None
        stage = stage_of(snap, st, sub.dependsOn)
        where = st.route or st.placement
        entries[st.name] = SubtaskEntry(
            name=st.name,
            stage=stage,
            resource=where.name if where and stage is not Stage.READY else None,
            pod_pool=st.placement.name if st.route and st.placement else None,
            jobs_ahead=_jobs_ahead(snap, st) if stage is Stage.QUEUED else None,
            since=_time(st.startedAt or st.launchedAt),
            num_qubits=info.num_qubits if info else None,
            moves=st.moves,
            last_moved=_last_move(st),
            moved_from=st.movedFrom,
        )
    return WorkflowEntry(
        key=key,
        spec=snap.spec,
        status=snap.status,
        subtasks=entries,
        predictions=snap.predictions,
        started=_time(snap.status.startedAt) or snap.created,
    )


def backend_loads(snaps: Iterable[WorkflowSnapshot]) -> dict[str, BackendLoad]:
    """Every backend the workflows see, with the jobs Qorch has queued there and their
    predicted run seconds (from the predictions recorded when they were placed)."""
    infos: dict[str, BackendInfo] = {}
    jobs: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for snap in snaps:
        infos.update(snap.backends)
        for st in snap.status.subtasks:
            if (
                st.placement is not None
                and st.placement.kind is ResourceKind.BACKEND
                and st.phase in (SubtaskPhase.LAUNCHING, SubtaskPhase.SCHEDULED)
            ):
                name = st.placement.name
                jobs[name] = jobs.get(name, 0) + 1
                run = st.predicted.runSeconds if st.predicted else 0.0
                seconds[name] = seconds.get(name, 0.0) + run
    return {
        name: BackendLoad(info, jobs.get(name, 0), seconds.get(name, 0.0))
        for name, info in infos.items()
    }


def requests_for(
    decision: ClusterDecision, key: str
) -> tuple[dict[str, Placement], dict[str, MoveRequest], dict[str, str]]:
    """The pass's word for one workflow: where to start which subtask, which to move (with
    the numbers behind it), and which to hold back and why."""
    places = {p.subtask: p.placement for p in decision.places if p.workflow == key}
    moves = {
        m.subtask: MoveRequest(m.target, m.reason, m.how)
        for m in decision.moves
        if m.workflow == key
    }
    held = {w.subtask: w.reason for w in decision.waits if w.workflow == key}
    return places, moves, held


def decide_cluster(
    snaps: Mapping[str, WorkflowSnapshot],
    nodes: Iterable[NodeInfo] | None = None,
    pods: Iterable[PodUsage] = (),
) -> ClusterDecision:
    """One pass over every workflow's latest snapshot (by key ``namespace/name``).
    ``nodes`` None: capacity not known (no node is visible), pools are not limited;
    otherwise each pool's free capacity is what its nodes still hold after ``pods``."""
    if not snaps:
        return ClusterDecision()
    now = max(s.now for s in snaps.values())
    pools = [p for _, s in sorted(snaps.items()) for p in s.spec.resources.classicalPools]
    return decide(
        ClusterSnapshot(
            now=now,
            workflows=[workflow_entry(s, key) for key, s in sorted(snaps.items())],
            backends=backend_loads(snaps.values()),
            pools=pool_capacity(pools, nodes, pods) if nodes is not None else {},
        )
    )
