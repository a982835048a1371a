"""Turn a ``Plan`` into API writes: pods, gateway jobs, the status, Events, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from kubernetes.client import ApiException, CoreV1Api, CustomObjectsApi

from qorch.api.workflow import (
    ClassicalPool,
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    Placement,
    ResourceKind,
    SubtaskPhase,
)
from qorch.gateway.base import GatewayClient, GatewayError, GatewayTarget, JobRequest
from qorch.gateway.client import GatewayResponseError
from qorch.metrics import operator_metrics as metrics
from qorch.operator import kubeio
from qorch.operator.podspec import (
    GATE,
    LABEL_MANAGED_BY,
    LABEL_SUBTASK,
    LABEL_WORKFLOW,
    ROUTE_ANNOTATION,
    build_pod,
    owner_reference,
    release_patch,
    release_view,
    released,
    workflow_label,
)
from qorch.orchestrator.lifecycle import ACTIVE
from qorch.orchestrator.plan import (
    CancelJob,
    CreatePod,
    DeletePod,
    Event,
    Plan,
    ReleasePod,
    RoutePod,
    StoreResult,
    SubmitJob,
    inputs_config_map,
    loop_job_prefix,
)
from qorch.orchestrator.snapshot import PodPhase, PodState, WorkflowSnapshot
from qorch.orchestrator.text import SHORT_LIMIT, bounded

MAX_REJECTED = 10_000
CONFIG_MAP_LIMIT_BYTES = 1_000_000  # etcd's object limit is ~1.5 MiB; keep well below


class ResultConflictError(Exception):
    """The result's ConfigMap name is taken by an object Qorch did not create."""


# Pod writes of one plan sent at once: a workflow of 100 subtasks creates 100 pods, which
# one after another took 100 round trips (bench/scale.py, 10x100).
POD_WRITES_AT_ONCE = 16
# Release views of created pods kept until their release (``Applier._created_views``).
CREATED_VIEWS_MAX = 4096
# Pod writes (each names its pod) of different pods commute: a run of consecutive ones runs
# at once, one chain per pod in the plan's order; any other action runs alone, in order.
_POD_WRITES = (CreatePod, ReleasePod, DeletePod)
T = TypeVar("T")


@dataclass(frozen=True)
class _ActContext:
    body: dict[str, Any]
    namespace: str
    name: str
    subtasks: dict[str, Any]
    pools: dict[str, ClassicalPool]
    qasm: dict[str, str]
    logger: logging.Logger | logging.LoggerAdapter[Any]


def _segments(actions: Sequence[Any]) -> list[list[list[Any]]]:
    """The plan's actions in order, as segments of chains: the chains of a segment may run
    at once, each chain's actions one after another. A run of consecutive pod writes is
    one segment with a chain per pod (a pod's create, then its release, stay in order);
    any other action is a segment of one chain of one."""
    out: list[list[list[Any]]] = []
    open_run: dict[str, list[Any]] | None = None
    for action in actions:
        if isinstance(action, _POD_WRITES):
            if open_run is None:
                open_run = {}
                out.append([])
            chain = open_run.get(action.pod_name)
            if chain is None:
                chain = open_run[action.pod_name] = []
                out[-1].append(chain)
            chain.append(action)
        else:
            open_run = None
            out.append([[action]])
    return out


async def _bounded_gather(calls: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``calls`` with at most ``limit`` at once; their results in the order given.
    All of them finish before an exception (the first) is raised: none is left writing
    after ``act`` returned."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    outcomes = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return list(outcomes)  # type: ignore[arg-type]


class Applier:
    def __init__(
        self,
        core: CoreV1Api,
        custom: CustomObjectsApi,
        gateway: GatewayClient,
        worker_image: str,
        targets: dict[str, GatewayTarget] | None = None,
    ) -> None:
        self.core = core
        self.custom = custom
        self.gateway = gateway
        self.worker_image = worker_image
        # Where each QuantumBackend's gateway answers (kept current by the handlers):
        # variational pods are told the URL of the backend their batches go to.
        self.targets: dict[str, GatewayTarget] = targets if targets is not None else {}
        # Submissions a gateway refused for good (4xx): job id -> its reason.
        self.rejected: dict[str, str] = {}
        # Gateways that answered 429 (queue full): no submission to them before this
        # monotonic time (their Retry-After), instead of one every cycle.
        self.busy_until: dict[str, float] = {}
        # Pods the apiserver refused to create or release (422 Invalid):
        # (namespace, pod name) -> reason.
        self.refused_pods: dict[tuple[str, str], str] = {}
        # (namespace, pod name) -> the gated pod's parts a release patch is computed from,
        # as the watch last saw them (``pod_cache.PodCache``); None: read the pod each time.
        self.gated_views: Callable[[str, str], dict[str, Any] | None] | None = None
        # Pods this process created and has not released yet, as the create returned them
        # (release_view), oldest first; bounded: a pod never released ages out.
        self._created_views: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    async def act(
        self,
        body: dict[str, Any],
        spec: HybridWorkflowSpec,
        plan: Plan,
        qasm: dict[str, str],
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> list[Event]:
        """Perform the plan's actions. Returns the Events to post, including Warnings for
        writes that failed (the next cycle retries them). The status is written apart, by
        ``WorkflowObject.write_status``, as the cycle's last step."""
        events = list(plan.events)
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        context = _ActContext(
            body=body,
            namespace=namespace,
            name=name,
            subtasks={s.name: s for s in spec.subtasks},
            pools={p.name: p for p in spec.resources.classicalPools},
            qasm=qasm,
            logger=logger,
        )
        for segment in _segments(plan.actions):
            if len(segment) == 1:
                outcomes = [await self._perform_chain(segment[0], context)]
            else:
                outcomes = await _bounded_gather(
                    [partial(self._perform_chain, chain, context) for chain in segment],
                    POD_WRITES_AT_ONCE,
                )
            events.extend(e for chain_events in outcomes for e in chain_events)
        for ev in events:
            metrics.decisions(ev.reason)
        return events

    async def _perform_chain(self, chain: list[Any], context: _ActContext) -> list[Event]:
        release: ReleasePod | None = None
        if len(chain) > 1 and isinstance(chain[0], CreatePod) and isinstance(chain[1], ReleasePod):
            # Created and released in one plan: created released, one write (``released``).
            release, chain = chain[1], [chain[0], *chain[2:]]
        events = [await self._perform(chain[0], context, release)]
        events += [await self._perform(action, context) for action in chain[1:]]
        return [e for e in events if e is not None]

    async def _perform(
        self, action: Any, context: _ActContext, release: ReleasePod | None = None
    ) -> Event | None:
        """One action; the Warning to post when its write failed (retried next cycle).
        ``release``: the ReleasePod of the CreatePod ``action``, done by the create."""
        body, namespace, name = context.body, context.namespace, context.name
        subtasks, pools, qasm, logger = (
            context.subtasks,
            context.pools,
            context.qasm,
            context.logger,
        )
        try:
            if isinstance(action, CreatePod):
                inputs_cm = inputs_config_map(action.pod_name)
                if any(i.config_map is None for i in action.inputs):
                    await self._store_inputs(body, inputs_cm, action)
                manifest = build_pod(
                    workflow=dict(body),
                    subtask=subtasks[action.subtask],
                    attempt=action.attempt,
                    pod_name=action.pod_name,
                    worker_image=self.worker_image,
                    pool=pools[action.pool],
                    num_qubits=action.num_qubits,
                    route=self._route(action.route, action.moves) if action.route else None,
                    job_prefix=loop_job_prefix(namespace, name, action.subtask, action.attempt),
                    inputs=action.inputs,
                    inputs_config_map=inputs_cm,
                )
                if release is None:
                    await self._create_pod(namespace, manifest)
                else:
                    pool = pools[release.pool]
                    if not await self._create_pod(
                        namespace, released(manifest, pool, release.moves)
                    ):  # it existed (a replayed plan): release that one
                        await self._release_pod(namespace, action.pod_name, pool, release.moves)
                    metrics.placements(pool.name, "pool")
            elif isinstance(action, ReleasePod):
                await self._release_pod(
                    namespace, action.pod_name, pools[action.pool], action.moves
                )
                metrics.placements(pools[action.pool].name, "pool")
            elif isinstance(action, DeletePod):
                await self._delete_pod(namespace, action.pod_name)
            elif isinstance(action, SubmitJob):
                if time.monotonic() < self.busy_until.get(action.backend, 0.0):
                    return None  # its queue is full; the planner submits again later
                circuit = subtasks[action.subtask].circuit
                assert circuit is not None
                await self.gateway.submit(
                    JobRequest(
                        job_id=action.job_id,
                        backend=action.backend,
                        qasm=qasm[action.subtask],
                        primitive=circuit.primitive.value,
                        shots=circuit.shots,
                        observables=tuple(circuit.observables or ()),
                        remote_job_id=action.remote_job_id,
                    )
                )
                metrics.placements(action.backend, "backend")
            elif isinstance(action, CancelJob):
                await self.gateway.cancel(action.backend, action.job_id)
            elif isinstance(action, StoreResult):
                await self._store_result(body, action)
            elif isinstance(action, RoutePod):
                patch = {
                    "metadata": {
                        "annotations": {ROUTE_ANNOTATION: self._route(action.route, action.moves)}
                    }
                }
                await asyncio.to_thread(
                    kubeio.patch_pod, self.core, action.pod_name, namespace, patch
                )
                metrics.placements(action.route.name, action.route.kind.value)
        except (ApiException, GatewayError, ResultConflictError) as exc:
            if (
                isinstance(exc, ApiException)
                and exc.status == 422
                and isinstance(action, CreatePod | ReleasePod)
            ):
                self.refused_pods[(namespace, action.pod_name)] = bounded(
                    f"the apiserver refused pod {action.pod_name}: {_failure_message(exc)}",
                    SHORT_LIMIT,
                )
                while len(self.refused_pods) > MAX_REJECTED:
                    del self.refused_pods[next(iter(self.refused_pods))]
            if isinstance(exc, GatewayResponseError) and exc.status == 429:
                wait = exc.retry_after if exc.retry_after is not None else 5.0
                self.busy_until[getattr(action, "backend", "")] = time.monotonic() + wait
            if (
                isinstance(exc, GatewayError)
                and isinstance(action, SubmitJob)
                and (not exc.retryable)
            ):
                self.rejected[action.job_id] = str(exc)[:1024]
                while len(self.rejected) > MAX_REJECTED:  # oldest first (insertion order)
                    del self.rejected[next(iter(self.rejected))]
            message = f"{type(action).__name__} failed: {_failure_message(exc)}"
            logger.warning("%s/%s: %s", namespace, name, message)
            metrics.action_failures(type(action).__name__)
            return Event("ActionFailed", message, warning=True)
        return None

    def _route(self, route: Placement, moves: int) -> str:
        """The ``qorch.io/route`` annotation (``qorch.worker.variational.Route``): a
        backend's route names its gateway, as the operator itself reaches it; ``moves``
        is the subtask's move count with this route (a restart that finds it above the
        stored count knows the status write after the re-route was lost)."""
        doc: dict[str, str | int] = {"kind": route.kind.value, "name": route.name, "moves": moves}
        target = self.targets.get(route.name) if route.kind is ResourceKind.BACKEND else None
        if target is not None:
            doc.update(url=target.url, backendName=target.backend_name)
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    async def _store_inputs(self, body: dict[str, Any], name: str, action: CreatePod) -> None:
        """The ConfigMap of a pod's inline dependency results, written before the pod (its
        volume needs it). Its content follows from the status, so one that exists already
        (a replayed plan) is the same and stays."""
        meta = body["metadata"]
        data = {
            f"{i.subtask}.json": json.dumps(i.result, separators=(",", ":"))
            for i in action.inputs
            if i.config_map is None
        }
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": {
                    LABEL_MANAGED_BY: "qorch",
                    LABEL_WORKFLOW: workflow_label(meta["name"]),
                    LABEL_SUBTASK: action.subtask,
                },
                "ownerReferences": [owner_reference(body)],
            },
            "data": data,
        }
        try:
            await asyncio.to_thread(self.core.create_namespaced_config_map, meta["namespace"], cm)
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def _create_pod(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create the pod; False when it existed already (a replayed plan)."""
        try:
            created = await asyncio.to_thread(kubeio.create_pod, self.core, namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        # A gated pod's release (in a later plan) may come before the watch has shown the
        # pod: it is then computed from what the create returned instead of a read.
        view = release_view(created)
        if view is not None:
            key = (namespace, created["metadata"]["name"])
            self._created_views[key] = view
            while len(self._created_views) > CREATED_VIEWS_MAX:
                self._created_views.popitem(last=False)
        return True

    async def _release_pod(self, namespace: str, pod_name: str, pool: Any, moves: int = 0) -> None:
        """Narrow the pod to ``pool`` and remove Qorch's gate, in one patch computed from the
        pod as the watch last saw it (``gated_views``: no read), else as read now. The
        patch tests the gates it was computed from: when the view was stale it fails, and
        the pod is read and patched again."""
        view = self.gated_views(namespace, pod_name) if self.gated_views else None
        created = self._created_views.pop((namespace, pod_name), None)
        view = view or created
        if view is not None:
            try:
                await asyncio.to_thread(
                    kubeio.patch_pod,
                    self.core,
                    pod_name,
                    namespace,
                    release_patch(view, pool, moves),
                )
                return
            except ApiException as exc:
                if exc.status != 422:
                    raise
        raw = await asyncio.to_thread(kubeio.read_pod, self.core, pod_name, namespace)
        gates = [g.get("name") for g in raw.get("spec", {}).get("schedulingGates") or []]
        if GATE not in gates:
            return  # released already (a replayed plan)
        await asyncio.to_thread(
            kubeio.patch_pod, self.core, pod_name, namespace, release_patch(raw, pool, moves)
        )

    async def _store_result(self, body: dict[str, Any], action: StoreResult) -> None:
        meta = body["metadata"]
        text = json.dumps(action.result, separators=(",", ":"))
        if len(text) > CONFIG_MAP_LIMIT_BYTES:
            text = json.dumps(
                {
                    "truncated": True,
                    "bytes": len(text),
                    "reason": f"result over {CONFIG_MAP_LIMIT_BYTES} bytes",
                }
            )
        cm: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": action.config_map,
                "namespace": meta["namespace"],
                "labels": {
                    LABEL_WORKFLOW: workflow_label(meta["name"]),
                    LABEL_SUBTASK: action.subtask,
                    LABEL_MANAGED_BY: "qorch",
                },
                "ownerReferences": [owner_reference(body)],
            },
            "data": {"result.json": text},
        }
        try:
            await asyncio.to_thread(self.core.create_namespaced_config_map, meta["namespace"], cm)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # A ConfigMap of that name exists. Replace it only if it is this workflow's own
            # (a replayed plan): never touch, adopt or garbage-collect what Qorch did not make.
            existing = await asyncio.to_thread(
                self.core.read_namespaced_config_map, action.config_map, meta["namespace"]
            )
            owners = existing.metadata.owner_references or []
            if not any(o.uid == meta["uid"] for o in owners):
                raise ResultConflictError(
                    f"ConfigMap {action.config_map!r} exists and does not belong to this "
                    f"workflow; the result of subtask {action.subtask!r} was not stored "
                    "(delete or rename that ConfigMap)"
                ) from None
            cm["metadata"]["resourceVersion"] = existing.metadata.resource_version
            await asyncio.to_thread(
                self.core.replace_namespaced_config_map, action.config_map, meta["namespace"], cm
            )

    async def _delete_pod(self, namespace: str, pod_name: str) -> None:
        try:
            await asyncio.to_thread(kubeio.delete_pod, self.core, pod_name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _failure_message(exc: Exception) -> str:
    """The apiserver's own message where there is one (it names the field), else the error."""
    body = getattr(exc, "body", None)
    if isinstance(exc, ApiException) and isinstance(body, str | bytes):
        try:
            return str(json.loads(body).get("message", "")) or str(exc.reason)
        except (ValueError, AttributeError):
            return str(exc.reason)
    return str(exc)


def record_worker_usage(snapshot: WorkflowSnapshot, decided: Plan) -> None:
    """Worker pods usually end before any scrape: record what each one took from the usage
    in its result, once, on the subtask's transition to Succeeded."""
    before = {s.name: s.phase for s in snapshot.status.subtasks}
    kinds = {s.name: "circuit" if s.circuit else "classical" for s in snapshot.spec.subtasks}
    for st in decided.status.subtasks:
        if (
            st.phase is SubtaskPhase.SUCCEEDED
            and before.get(st.name) is not SubtaskPhase.SUCCEEDED
            and st.podName
            and st.placement
        ):
            pod = snapshot.pods.get(st.podName)
            if pod is not None and pod.usage:
                metrics.record_worker_usage(st.placement.name, kinds[st.name], pod.usage)


def refused_pod_states(
    applier: Applier, namespace: str, status: HybridWorkflowStatus, seen: list[PodState]
) -> list[PodState]:
    """Pods of active attempts that the apiserver refused: failed for good, with its reason."""
    known = {p.name for p in seen}
    refused: list[PodState] = []
    for st in status.subtasks:
        reason = applier.refused_pods.get((namespace, st.podName or ""))
        if (
            st.phase in ACTIVE
            and st.podName
            and reason is not None
            and (st.podName not in known or _gated(seen, st.podName))
        ):
            refused.append(
                PodState(
                    st.podName,
                    st.name,
                    st.attempts,
                    PodPhase.FAILED,
                    message=reason,
                    permanent=True,
                )
            )
    return refused


def _gated(pods: list[PodState], name: str) -> bool:
    return any(p.name == name and p.phase is PodPhase.GATED for p in pods)
