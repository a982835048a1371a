"""Kopf handlers: translate events into pure ``plan`` calls and the plans into writes.

One daemon per HybridWorkflow drives it (level-based: each cycle compares the
recorded status with the pods and gateway jobs it finds); a pod event that changes what
it plans from wakes the daemon, and it re-plans at least every ``resync_seconds`` anyway.
Run with ``qorch operator`` or ``kopf run -m qorch.operator.handlers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
import urllib3
from kubernetes.client import ApiException
from prometheus_client import start_http_server

from qorch.api.backend import CalibrationSummary, GatewayRef, Provider
from qorch.api.meta import GROUP, VERSION
from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ResourceKind,
    WorkflowPhase,
)
from qorch.gateway.base import GatewayError, GatewayTarget
from qorch.gateway.client import HttpGatewayClient
from qorch.metrics import operator_metrics as metrics
from qorch.operator.apply import record_worker_usage, refused_pod_states
from qorch.operator.cluster_loop import ClusterLoop
from qorch.operator.heap import settle_heap
from qorch.operator.kopfsetup import NoDiffBase
from qorch.operator.nodes import node_info
from qorch.operator.objectstate import GATEWAY_JOBS_FINALIZER, WorkflowObject, has_gateway_jobs
from qorch.operator.podspec import (
    workflow_label,
)
from qorch.operator.runtime import Runtime, build_snapshot, parse_spec, use_api_threads
from qorch.operator.settings import OperatorSettings
from qorch.orchestrator.capacity import NodeInfo
from qorch.orchestrator.cluster_view import requests_for
from qorch.orchestrator.events import coalesce as coalesce_events
from qorch.orchestrator.lifecycle import ACTIVE
from qorch.orchestrator.plan import Plan, SubmitJob, plan
from qorch.orchestrator.prices import IBM_PAY_AS_YOU_GO_USD_PER_QPU_SECOND
from qorch.orchestrator.snapshot import (
    BackendInfo,
    CircuitInfo,
    PodPhase,
    PodState,
    WorkflowSnapshot,
)
from qorch.orchestrator.text import MESSAGE_LIMIT, SHORT_LIMIT, bounded

Logger = logging.Logger | logging.LoggerAdapter[Any]
TERMINAL = (WorkflowPhase.SUCCEEDED.value, WorkflowPhase.FAILED.value)
# Cancelling gateway jobs on deletion is retried every 10 s for about two minutes, then
# the workflow is let go with a Warning: a gateway that is gone must not pin it forever.
DELETE_CANCEL_RETRIES = 12
CYCLE_SECONDS_PER_SUBTASK = 0.02


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    ours = OperatorSettings.from_env()
    settings.peering.name = "qorch"
    settings.peering.mandatory = True
    settings.peering.clusterwide = True
    settings.peering.priority = ours.priority
    settings.peering.lifetime = ours.peering_lifetime_seconds
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.finalizer = f"{GROUP}/gateway-jobs"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 120
    use_api_threads()
    memo.runtime = Runtime.build(ours, getattr(memo, "namespaces", ()))
    memo.pod_watch = asyncio.create_task(memo.runtime.pods.run())
    memo.model_refresh = asyncio.create_task(memo.runtime.predictions.keep_models_fresh())
    if memo.runtime.cluster is not None:
        memo.cluster_pass = asyncio.create_task(memo.runtime.cluster.run())
    if ours.metrics_port:
        start_http_server(ours.metrics_port)
    settle_heap()  # last: what start-up made lives as long as the process
    logger.info(
        "qorch operator started (peering priority %d, gateway client %s)",
        ours.priority,
        type(memo.runtime.gateway).__name__,
    )


@kopf.on.cleanup()
async def stop_background_tasks(memo: kopf.Memo, **_: Any) -> None:
    for name in ("pod_watch", "model_refresh", "cluster_pass"):
        task = getattr(memo, name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# Indexes and light event handlers are coroutines: Kopf runs a plain function in a thread of
# its executor, a hop per handler per event (thousands a second under load) for what takes
# microseconds. They read the body without copying it (nothing here changes it).


# Pods are not watched through Kopf: ``Runtime.pods`` (``pod_cache.PodCache``) lists and
# watches them once and keeps the views the daemons and the cluster pass read, and wakes
# a workflow's daemon on each event of its pods.


@kopf.index("nodes")
async def cluster_nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    """Every node, for the cluster pass's free capacity per pool."""
    return {name: node_info(body)}


@kopf.index(GROUP, VERSION, "quantumbackends")
async def quantum_backends(
    name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, BackendInfo]:
    return {
        name: BackendInfo(
            name=name,
            provider=Provider(spec.get("provider", "aer")),
            num_qubits=int(spec.get("numQubits", 30)),
            healthy=status.get("healthy") is not False,
            queue_length=int(status.get("queueLength") or 0),
            price_per_qpu_second=_price(spec),
            calibration=_calibration(status.get("calibration")),
            # As track_gateway_url sends it: the gateway's ``backend`` metric label.
            backend_name=spec.get("backendName") or "aer_simulator",
        )
    }


def _price(spec: Mapping[str, Any]) -> float:
    """USD per QPU second: the backend's own, else IBM's list price for an IBM backend
    (``orchestrator.prices``), else 0 (a local simulator)."""
    price = spec.get("pricePerQpuSecondUSD")
    if price is not None:
        return float(price)
    return IBM_PAY_AS_YOU_GO_USD_PER_QPU_SECOND if spec.get("provider") == "ibm" else 0.0


def _calibration(raw: Any) -> CalibrationSummary | None:
    """The status' calibration summary; None when absent or not of the documented shape
    (an older gateway, a hand edit): the predictor then has no calibration for it."""
    if not isinstance(raw, Mapping):
        return None
    try:
        return CalibrationSummary.model_validate(dict(raw))
    except ValueError:
        return None


@kopf.on.event(GROUP, VERSION, "quantumbackends")
async def track_gateway_url(
    name: str, spec: kopf.Spec, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    runtime: Runtime = memo.runtime
    gateway = spec.get("gateway")
    if type == "DELETED" or not gateway:
        runtime.gateway_targets.pop(name, None)
    else:
        runtime.gateway_targets[name] = GatewayTarget(
            url=GatewayRef.model_validate(dict(gateway)).base_url(),
            backend_name=spec.get("backendName") or "aer_simulator",
        )


@kopf.timer(GROUP, VERSION, "quantumbackends", interval=30.0, initial_delay=1.0)
async def refresh_backend_status(
    name: str, memo: kopf.Memo, patch: kopf.Patch, logger: Logger, **_: Any
) -> None:
    """Mirror the gateway's health, queue and calibration into the QuantumBackend status,
    where users (kubectl get qb) and the planner's index see them."""
    runtime: Runtime = memo.runtime
    if not isinstance(runtime.gateway, HttpGatewayClient):
        return
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        info = await runtime.gateway.backend_info(name)
    except GatewayError as exc:
        logger.warning("gateway of %s: %s", name, exc)
        patch.status["healthy"] = False
        patch.status["conditions"] = [
            {
                "type": "Ready",
                "status": "False",
                "reason": "GatewayUnreachable",
                "message": str(exc)[:1024],
                "lastTransitionTime": now,
            }
        ]
        return
    calibration = dict(info.get("calibration") or {})
    calibration["updatedAt"] = now
    patch.status["healthy"] = True
    patch.status["queueLength"] = int(info.get("pendingJobs") or info.get("queueLength") or 0)
    patch.status["calibration"] = calibration
    patch.status["conditions"] = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "GatewayReachable",
            "message": f"{info.get('numQubits')} qubits",
            "lastTransitionTime": now,
        }
    ]


@kopf.daemon(
    GROUP,
    VERSION,
    "hybridworkflows",
    cancellation_timeout=10.0,
    when=lambda status, **_: status.get("phase") not in TERMINAL,
)
async def drive_workflow(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    logger: Logger,
    **kwargs: Any,
) -> None:
    # Kopf passes each index by the name of its function.
    quantum_backends: kopf.Index[str, BackendInfo] = kwargs["quantum_backends"]
    runtime: Runtime = memo.runtime
    if runtime.cluster is not None:  # live views: the pass reads them when it runs
        runtime.cluster.watch_capacity(kwargs["cluster_nodes"], runtime.pods.usage_by_node)
    runtime.applier.gated_views = runtime.pods.gated_view
    # Nothing is planned before every pod is known: a pod not yet listed would look lost.
    await runtime.pods.synced.wait()
    ns = _namespaced(namespace)
    wake = runtime.wakeup(ns, name)
    label = workflow_label(name)
    # The daemon plans on what it last wrote (the watched body lags), writes with the
    # resourceVersion it planned on, and adopts the stored status when somebody else
    # wrote it (a 409 on its own write, or a foreign write seen in the body).
    obj = WorkflowObject(runtime.custom, _plain(body))
    failures = 0  # consecutive cycles that met a transient API error
    # The subtasks are immutable (CEL), so circuits are read and parsed once per daemon, on
    # the first cycle: what was validated is what runs, even if a referenced ConfigMap
    # changes later.
    loaded: tuple[dict[str, str], dict[str, CircuitInfo]] | None = None
    # The spec parsed, per generation: a status write (most events) leaves it as it was.
    parsed: tuple[object, HybridWorkflowSpec | None, str] = (None, None, "")
    subtasks = 0
    try:
        while not stopped:
            try:
                wake.clear()
                started = time.perf_counter()
                raw = _plain(body)
                if obj.observe(raw):
                    logger.warning("status written by someone else; planning from the stored one")
                status = obj.status
                generation = raw["metadata"].get("generation")
                if parsed[0] != generation or generation is None:
                    parsed = (generation, *parse_spec(raw.get("spec") or {}))
                _, spec, problem = parsed
                if spec is None:
                    await _fail_unparseable(runtime, body, raw, problem)
                    return
                subtasks = len(spec.subtasks)
                if loaded is None:
                    loaded = await runtime.load_sources(ns, spec)
                sources, infos = loaded
                if any(i.transient for i in infos.values()):
                    loaded = None  # unreadable for now: read again next cycle
                pods = runtime.pods.workflow_pods(ns, label)
                pods += await runtime.read_missing_pods(ns, status, pods)
                refused = refused_pod_states(runtime.applier, ns, status, pods)
                refused_names = {p.name for p in refused}
                pods = [p for p in pods if p.name not in refused_names] + refused
                pods = await runtime.with_progress(pods)
                snapshot = build_snapshot(
                    namespace=ns,
                    name=name,
                    generation=int(raw["metadata"].get("generation") or 1),
                    spec=spec,
                    status=status,
                    pods=pods,
                    jobs=await runtime.job_states(status),
                    backends=[b for store in quantum_backends.values() for b in store],
                    circuits_info=infos,
                    runtime=runtime,
                    metrics=await runtime.metrics_view(),
                    created=_created(raw),
                )
                predictions, report = await runtime.predictions.predict(
                    spec, status, sources, snapshot.backends.values(), snapshot.metrics
                )
                if report is not None:
                    snapshot = dataclasses.replace(
                        snapshot, predictions=predictions, predictor=report
                    )
                if runtime.cluster is not None:
                    snapshot = await _with_cluster_decision(runtime.cluster, ns, name, snapshot)
                decided = plan(snapshot, runtime.policy)
                if any(isinstance(a, SubmitJob) for a in decided.actions):
                    # Before the job exists, so that deleting the workflow cancels it.
                    await obj.hold_for_gateway_jobs(True)
                events = await runtime.applier.act(raw, spec, decided, sources, logger)
                for ev in coalesce_events(events):
                    kopf.event(
                        body,
                        type="Warning" if ev.warning else "Normal",
                        reason=ev.reason,
                        message=ev.message[:1024],
                    )
                if not has_gateway_jobs(decided.status):
                    await obj.hold_for_gateway_jobs(False)
                # Last: a terminal phase stops this daemon (the `when` filter) as soon as Kopf
                # sees it, so nothing may be left to do after this write. Resyncs that change
                # nothing write nothing.
                if not await _write_then_record(obj, runtime, snapshot, decided):
                    logger.warning("status changed since it was read; planning again from it")
                    metrics.STATUS_CONFLICTS.inc()
                    await asyncio.sleep(0.2)  # another writer is active: do not spin against it
                    continue
                status = obj.status
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                if status.phase in (WorkflowPhase.SUCCEEDED, WorkflowPhase.FAILED):
                    logger.info("workflow %s/%s %s", ns, name, status.phase)
                    return
                delay = runtime.settings.resync_seconds
                if decided.requeue_after is not None:
                    delay = min(delay, max(decided.requeue_after.total_seconds(), 0.05))
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                # The apiserver restarting, refusing for a moment (403 while its RBAC cache
                # fills), timing out: try again soon in this daemon, instead of raising to
                # Kopf, which would restart the daemon only after a minute.
                failures += 1
                delay = min(0.5 * 2 ** min(failures, 6), runtime.settings.resync_seconds)
                logger.warning("transient error, retrying in %.1fs: %s", delay, _short(exc))
                metrics.action_failures("Reconcile")
            else:
                failures = 0
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(wake.wait(), timeout=delay)
            # At most one cycle per min_cycle_seconds, longer for a large workflow (20 ms
            # per subtask: its status write grows with it, up to the resync): what else
            # happens meanwhile (the rest of a burst of pod events) is planned and written
            # together. bench/scale.py, 10 workflows of 100 pods: 50 status writes of up to
            # 53 KB per workflow at a 0.5 s floor. The pause ends early once a pod event
            # leaves a finished pod for every subtask: no more of the burst can come, and the
            # cycle that records them (the workflow's end, or its retries) runs now.
            floor = min(
                max(runtime.settings.min_cycle_seconds, CYCLE_SECONDS_PER_SUBTASK * subtasks),
                runtime.settings.resync_seconds,
            )
            while not stopped and (pause := started + floor - time.perf_counter()) > 0:
                if woken and pods_all_finished(runtime.pods.workflow_pods(ns, label), subtasks):
                    break
                wake.clear()
                woken = False
                with contextlib.suppress(TimeoutError):
                    woken = await asyncio.wait_for(wake.wait(), timeout=pause)
    finally:
        runtime.wakeups.pop((ns, name), None)
        if runtime.cluster is not None:
            runtime.cluster.withdraw(f"{ns}/{name}")


def pods_all_finished(pods: list[PodState], subtasks: int) -> bool:
    """Whether every one of the workflow's ``subtasks`` has a pod and every pod has
    finished (Succeeded or Failed, and not being deleted): the workflow's end (or its
    retries) is there to record, and no further pod event of it is on its way. Pods the
    cache does not show yet (just created) or subtasks without pods (circuits at a
    gateway) keep the pause: a cycle then would find nothing new to record."""
    finished = all(
        p.phase in (PodPhase.SUCCEEDED, PodPhase.FAILED) and not p.deleting for p in pods
    )
    return finished and subtasks > 0 and len({p.subtask for p in pods}) >= subtasks


async def _write_then_record(
    obj: WorkflowObject, runtime: Runtime, snapshot: WorkflowSnapshot, decided: Plan
) -> bool:
    """Write the status; once it is stored, record what the worker pods used and how far
    the predictions were off (a refused write re-plans from the old status and would see the
    same subtasks succeed again). Kopf stops the daemon as soon as it sees a terminal
    phase, which can be before this write returns: the write is shielded and, stored, its
    outcomes are recorded before the cancellation goes on."""
    write = asyncio.ensure_future(obj.write_status(decided.status))
    try:
        written = await asyncio.shield(write)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            if await asyncio.wait_for(write, timeout=5.0):
                _record(runtime, snapshot, decided)
        raise
    if written:
        _record(runtime, snapshot, decided)
    return written


def _record(runtime: Runtime, snapshot: WorkflowSnapshot, decided: Plan) -> None:
    record_worker_usage(snapshot, decided)
    runtime.predictions.record_outcomes(snapshot, decided)


async def _with_cluster_decision(
    cluster: ClusterLoop, namespace: str, name: str, snapshot: WorkflowSnapshot
) -> WorkflowSnapshot:
    """The snapshot with the word of a cluster pass that saw it: where to start subtasks,
    which to move, which to hold (unchanged when no pass answered in time: the rule)."""
    key = f"{namespace}/{name}"
    cluster.publish(key, snapshot)
    decision = await cluster.decision_after_publish(key)
    if decision is None:
        return snapshot
    places, moves, held = requests_for(decision, key)
    return dataclasses.replace(
        snapshot, placements=places, moves=moves, held=held, cluster_pass=True
    )


def _short(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return bounded(str(exc) or type(exc).__name__, 300)


def _daemon_without_kopf_finalizer(fn: Any) -> None:
    """Kopf puts its finalizer on every object a daemon runs for, so no running workflow
    (nor its namespace) could be deleted while the operator is down. The daemon needs
    none: pods go with the workflow by owner reference and deletion stops the daemon.
    Only jobs at gateways need cleaning up, and Qorch sets its own finalizer for exactly
    as long as there are some (``objectstate``). Kopf has no option for this, so the
    registered handler's flag is flipped (pinned Kopf; the e2e tests check the effect)."""
    spawning = kopf.get_default_registry()._spawning
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if getattr(h, "fn", None) is fn else h
        for h in spawning._handlers
    ]


_daemon_without_kopf_finalizer(drive_workflow)


def _created(raw: dict[str, Any]) -> dt.datetime | None:
    stamp = raw["metadata"].get("creationTimestamp")
    if not stamp:
        return None
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


async def _fail_unparseable(
    runtime: Runtime, body: kopf.Body, raw: dict[str, Any], problem: str
) -> None:
    """The schema let through something the models reject (e.g. an older CRD): fail loudly."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "phase": WorkflowPhase.FAILED.value,
        "observedGeneration": raw["metadata"].get("generation"),
        "finishedAt": now,
        "conditions": [
            {
                "type": "Valid",
                "status": "False",
                "reason": "InvalidSpec",
                "message": bounded(problem, MESSAGE_LIMIT),
                "lastTransitionTime": now,
            }
        ],
    }
    meta = raw["metadata"]
    await asyncio.to_thread(
        runtime.custom.patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        meta["namespace"],
        "hybridworkflows",
        meta["name"],
        {"status": status},
    )
    kopf.event(body, type="Warning", reason="InvalidSpec", message=bounded(problem, SHORT_LIMIT))


# Only a workflow being deleted is this handler's: the field filter keeps Kopf from
# invoking it for every other event of every workflow, only to return at once (py-spy,
# placing 1,000 one-pod workflows: Kopf's on-event path 5.4% of the operator's samples,
# 3.6% with the filter).
@kopf.on.event(
    GROUP, VERSION, "hybridworkflows", field="metadata.deletionTimestamp", value=kopf.PRESENT
)
async def cancel_gateway_jobs(
    body: kopf.Body, meta: kopf.Meta, status: kopf.Status, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    """Pods go with the workflow by owner reference; jobs at gateways need cancelling.

    Only Qorch's own finalizer (set only while such jobs exist) holds a deleted workflow;
    Kopf calls deletion handlers only under its own finalizer, which Qorch does not use
    (see ``_daemon_without_kopf_finalizer``), so deletion is seen here, as an event.
    Cancelling is tried for about two minutes; a gateway that is gone must not pin the
    workflow forever, so it is then let go with a Warning."""
    if not meta.get("deletionTimestamp") or GATEWAY_JOBS_FINALIZER not in (
        meta.get("finalizers") or []
    ):
        return
    runtime: Runtime = memo.runtime
    parsed = HybridWorkflowStatus.model_validate(dict(status) or {})
    pending = [
        (st.placement.name, st.jobId)
        for st in parsed.subtasks
        if st.phase in ACTIVE
        and st.jobId
        and st.placement
        and st.placement.kind is ResourceKind.BACKEND
    ]
    failed: list[str] = []
    for attempt in range(DELETE_CANCEL_RETRIES):
        failed = []
        for backend, job in pending:
            try:
                await runtime.gateway.cancel(backend, job)
            except GatewayError as exc:
                if exc.retryable:  # not retryable: the gateway does not know it
                    failed.append(f"{job}: {exc}")
        if not failed:
            break
        if attempt + 1 < DELETE_CANCEL_RETRIES:
            await asyncio.sleep(10)
    if failed:
        message = (
            f"gave up cancelling {len(failed)} gateway job(s) after {DELETE_CANCEL_RETRIES} "
            f"tries; they may still run: {'; '.join(failed)}"
        )
        logger.warning(message)
        kopf.event(
            body, type="Warning", reason="CancelFailed", message=bounded(message, SHORT_LIMIT)
        )
    await WorkflowObject(runtime.custom, _plain(body)).hold_for_gateway_jobs(False)


def _namespaced(namespace: str | None) -> str:
    if namespace is None:  # pods and workflows are namespaced: Kopf always passes one
        raise kopf.PermanentError("a namespaced object arrived without a namespace")
    return namespace


def _plain(body: Any) -> dict[str, Any]:
    """Kopf bodies are read-only views; the pure code gets plain dicts. Without
    ``metadata.managedFields``: nothing here reads them, and copying them (a field set per
    subtask of the spec, per field manager) was most of the copy's time, on every cycle."""
    raw = dict(body)
    meta = {k: v for k, v in (raw.get("metadata") or {}).items() if k != "managedFields"}
    return copy.deepcopy({**raw, "metadata": meta})
