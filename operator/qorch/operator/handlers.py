"""Kopf handlers: translate events into pure ``plan`` calls and the plans into writes.

One daemon per HybridWorkflow drives it (level-based: each cycle compares the
recorded status with the pods and gateway jobs it finds); pod events wake the daemon,
and it re-plans at least every ``resync_seconds`` anyway. Run with ``qorch operator``
or ``kopf run -m qorch.operator.handlers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from prometheus_client import start_http_server

from qorch.api.backend import GatewayRef, Provider
from qorch.api.meta import GROUP, VERSION
from qorch.api.workflow import HybridWorkflowStatus, ResourceKind, WorkflowPhase
from qorch.gateway.base import GatewayError, GatewayTarget
from qorch.gateway.client import HttpGatewayClient
from qorch.metrics import operator_metrics as metrics
from qorch.operator.podspec import LABEL_MANAGED_BY, LABEL_WORKFLOW, pod_state
from qorch.operator.runtime import Runtime, build_snapshot, parse_spec
from qorch.operator.settings import OperatorSettings
from qorch.orchestrator.lifecycle import ACTIVE
from qorch.orchestrator.plan import plan
from qorch.orchestrator.snapshot import BackendInfo, CircuitInfo, PodState

Logger = logging.Logger | logging.LoggerAdapter[Any]
TERMINAL = (WorkflowPhase.SUCCEEDED.value, WorkflowPhase.FAILED.value)


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
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/gateway-jobs"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 120
    memo.runtime = Runtime.build(ours)
    if ours.metrics_port:
        start_http_server(ours.metrics_port)
    logger.info(
        "qorch operator started (peering priority %d, gateway %s)", ours.priority, ours.gateway_mode
    )


@kopf.index("pods", labels={LABEL_MANAGED_BY: "qorch", LABEL_WORKFLOW: kopf.PRESENT})
def workflow_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[tuple[str, str], PodState]:
    return {(_namespaced(namespace), labels[LABEL_WORKFLOW]): pod_state(_plain(body))}


@kopf.index(GROUP, VERSION, "quantumbackends")
def quantum_backends(
    name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, BackendInfo]:
    return {
        name: BackendInfo(
            name=name,
            provider=Provider(spec.get("provider", "aer")),
            num_qubits=int(spec.get("numQubits", 30)),
            healthy=status.get("healthy") is not False,
            queue_length=int(status.get("queueLength") or 0),
            price_per_qpu_second=float(spec.get("pricePerQpuSecondUSD", 0.0)),
        )
    }


@kopf.on.event(GROUP, VERSION, "quantumbackends")
def track_gateway_url(
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


@kopf.on.event("pods", labels={LABEL_MANAGED_BY: "qorch", LABEL_WORKFLOW: kopf.PRESENT})
def wake_on_pod_event(
    namespace: str | None, labels: Mapping[str, str], memo: kopf.Memo, **_: Any
) -> None:
    memo.runtime.wake(_namespaced(namespace), labels[LABEL_WORKFLOW])


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
    workflow_pods: kopf.Index[tuple[str, str], PodState] = kwargs["workflow_pods"]
    quantum_backends: kopf.Index[str, BackendInfo] = kwargs["quantum_backends"]
    runtime: Runtime = memo.runtime
    ns = _namespaced(namespace)
    wake = runtime.wakeup(ns, name)
    # This daemon is the only writer of the status: after its first write it trusts what it
    # wrote over the (possibly lagging) watched body.
    status = HybridWorkflowStatus.model_validate(_plain(body).get("status") or {})
    written: HybridWorkflowStatus | None = None
    # The subtasks are immutable (CEL), so circuits are read and parsed once per daemon, on
    # the first cycle: what was validated is what runs, even if a referenced ConfigMap
    # changes later.
    loaded: tuple[dict[str, str], dict[str, CircuitInfo]] | None = None
    try:
        while not stopped:
            wake.clear()
            started = time.perf_counter()
            raw = _plain(body)
            spec, problem = parse_spec(raw.get("spec") or {})
            if spec is None:
                await _fail_unparseable(runtime, body, raw, problem)
                return
            if loaded is None:
                loaded = await runtime.load_sources(ns, spec)
            sources, infos = loaded
            pods = list(workflow_pods.get((ns, name), []))
            pods += await runtime.read_missing_pods(ns, status, pods)
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
            )
            decided = plan(snapshot, runtime.policy)
            events = await runtime.applier.act(raw, spec, decided, sources, logger)
            for ev in events:
                kopf.event(
                    body,
                    type="Warning" if ev.warning else "Normal",
                    reason=ev.reason,
                    message=ev.message[:1024],
                )
            # Last: a terminal phase stops this daemon (the `when` filter) as soon as Kopf
            # sees it, so nothing may be left to do after this write.
            if decided.status != written:  # resyncs that change nothing write nothing
                await runtime.applier.write_status(raw, decided)
                written = decided.status.model_copy(deep=True)
            status = decided.status
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
            if status.phase in (WorkflowPhase.SUCCEEDED, WorkflowPhase.FAILED):
                logger.info("workflow %s/%s %s", ns, name, status.phase)
                return
            delay = runtime.settings.resync_seconds
            if decided.requeue_after is not None:
                delay = min(delay, max(decided.requeue_after.total_seconds(), 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)
    finally:
        runtime.wakeups.pop((ns, name), None)


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
                "message": problem[:4096],
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
    kopf.event(body, type="Warning", reason="InvalidSpec", message=problem[:1024])


@kopf.on.delete(GROUP, VERSION, "hybridworkflows")
async def cancel_gateway_jobs(
    status: kopf.Status, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    """Pods go with the workflow by owner reference; queued QPU jobs need cancelling."""
    runtime: Runtime = memo.runtime
    parsed = HybridWorkflowStatus.model_validate(dict(status) or {})
    for st in parsed.subtasks:
        if (
            st.phase in ACTIVE
            and st.jobId
            and st.placement
            and (st.placement.kind is ResourceKind.BACKEND)
        ):
            try:
                await runtime.gateway.cancel(st.placement.name, st.jobId)
            except Exception as exc:
                logger.warning("could not cancel job %s: %s", st.jobId, exc)


def _namespaced(namespace: str | None) -> str:
    if namespace is None:  # pods and workflows are namespaced: Kopf always passes one
        raise kopf.PermanentError("a namespaced object arrived without a namespace")
    return namespace


def _plain(body: Any) -> dict[str, Any]:
    """Kopf bodies are read-only views; the pure code gets plain dicts."""
    return copy.deepcopy(dict(body))
