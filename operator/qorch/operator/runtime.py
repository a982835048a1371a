"""Everything the handlers share, built once at start-up and handed over through memo."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import urllib3
from kubernetes import client, config
from pydantic import ValidationError

from qorch.api.backend import CalibrationSummary
from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ResourceKind,
    VariationalProgress,
)
from qorch.gateway.base import GatewayClient, GatewayError, GatewayTarget
from qorch.metrics.reader import MetricsReader, PrometheusReader, join_backends
from qorch.operator import kubeio
from qorch.operator.apply import Applier
from qorch.operator.cluster_loop import ClusterLoop
from qorch.operator.pod_cache import PodCache
from qorch.operator.podspec import METRICS_PORT, pod_state
from qorch.operator.predictions import PredictionService
from qorch.operator.settings import OperatorSettings
from qorch.orchestrator.lifecycle import ACTIVE
from qorch.orchestrator.placement import DecidedPolicy, PlacementPolicy, RulePolicy
from qorch.orchestrator.snapshot import (
    BackendInfo,
    BackendMetrics,
    CircuitInfo,
    JobPhase,
    JobState,
    MetricsView,
    PodPhase,
    PodState,
    WorkflowSnapshot,
)
from qorch.quantum import circuits

CIRCUIT_CACHE_SIZE = 1024
# The fields of a variational progress that a worker reports (the spend is the operator's).
REPORTED_PROGRESS = frozenset(VariationalProgress.model_fields) - {"spentUSD"}
PROGRESS_MAX_BYTES = 64 * 1024


# Threads for blocking API calls (``asyncio.to_thread``; the Kubernetes client blocks).
# Python's default pool is min(32, CPUs + 4): 6 on a 2-CPU node, which capped the pod
# writes in flight across all workflows (bench/scale.py).
API_THREADS = 32


def use_api_threads() -> None:
    """Give the running loop ``API_THREADS`` threads for ``asyncio.to_thread``."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(API_THREADS, thread_name_prefix="qorch-api")
    )


def make_gateway(settings: OperatorSettings, targets: dict[str, GatewayTarget]) -> GatewayClient:
    """The client of the backends' gateways (HTTP); ``targets`` is filled as backends are
    seen."""
    from qorch.gateway.client import HttpGatewayClient

    return HttpGatewayClient(targets, token_file=settings.gateway_token_file)


@dataclass
class Runtime:
    settings: OperatorSettings
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    gateway: GatewayClient
    applier: Applier
    policy: PlacementPolicy
    gateway_targets: dict[str, GatewayTarget]
    metrics_reader: MetricsReader | None = None
    predictions: PredictionService = field(default_factory=lambda: PredictionService(None))
    cluster: ClusterLoop | None = None  # the cluster-wide pass (QORCH_CLUSTER_PASS)
    _metrics: tuple[float, MetricsView] | None = None
    # One Prometheus query round at a time: when the cached view expires, the first
    # daemon refreshes it and the others wait for that reading instead of querying too.
    _metrics_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    # Parse results by source hash; bounded, oldest entries go first.
    _circuit_cache: OrderedDict[str, CircuitInfo] = field(default_factory=OrderedDict)
    # What the last metrics join could not use, logged once when it changes, not per cycle.
    _join_problems: frozenset[str] = frozenset()
    _progress_session: aiohttp.ClientSession | None = None
    # The namespaces the operator watches (``--namespace``); empty: all.
    namespaces: tuple[str, ...] = ()
    # Every pod, as the decisions read them (list + watch; its task starts at start-up).
    pods: PodCache = field(init=False)

    def __post_init__(self) -> None:
        self.pods = PodCache(self.core, self.wake, self.namespaces)

    @classmethod
    def build(cls, settings: OperatorSettings, namespaces: Iterable[str] = ()) -> Runtime:
        namespaces = tuple(namespaces)
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_config = client.Configuration.get_default_copy()
        # One pooled connection per API thread: with fewer, urllib3 drops the extra
        # connections after each call and the next one pays a new TLS handshake.
        # (And one more for each pod list or watch, which holds its connection.)
        api_config.connection_pool_maxsize = API_THREADS + max(len(namespaces), 1)
        api = client.ApiClient(api_config)
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        targets: dict[str, GatewayTarget] = {}
        gateway = make_gateway(settings, targets)
        applier = Applier(core, custom, gateway, settings.worker_image, targets)
        reader = PrometheusReader(settings.prometheus_url) if settings.prometheus_url else None
        predictions = PredictionService(
            settings.models_dir, refresh_seconds=settings.model_refresh_seconds
        )
        predictions.refresh_models(force=True)
        cluster = ClusterLoop() if settings.cluster_pass else None
        policy: PlacementPolicy = DecidedPolicy(RulePolicy()) if cluster else RulePolicy()
        return cls(
            settings,
            core,
            custom,
            gateway,
            applier,
            policy,
            targets,
            reader,
            predictions,
            cluster,
            namespaces=namespaces,
        )

    async def metrics_view(self) -> MetricsView | None:
        """The latest reading, refreshed at most every ``metrics_refresh_seconds``: one
        query round for all workflows, not one per workflow and cycle."""
        if self.metrics_reader is None:
            return None
        async with self._metrics_lock:
            now = time.monotonic()
            if (
                self._metrics is None
                or now - self._metrics[0] > self.settings.metrics_refresh_seconds
            ):
                view = await asyncio.to_thread(self.metrics_reader.read)
                self._metrics = (time.monotonic(), view)
            return self._metrics[1]

    def wakeup(self, namespace: str, name: str) -> asyncio.Event:
        return self.wakeups.setdefault((namespace, name), asyncio.Event())

    def wake(self, namespace: str, name: str) -> None:
        event = self.wakeups.get((namespace, name))
        if event is not None:
            event.set()

    async def load_sources(
        self, namespace: str, spec: HybridWorkflowSpec
    ) -> tuple[dict[str, str], dict[str, CircuitInfo]]:
        """QASM source and parse result of every circuit subtask and variational ansatz
        (ConfigMaps read here)."""
        sources: dict[str, str] = {}
        infos: dict[str, CircuitInfo] = {}
        for sub in spec.subtasks:
            given = sub.source
            if given is None:
                continue
            if given.qasm is not None:
                source = given.qasm
            else:
                ref = given.configMapRef
                assert ref is not None
                # A ConfigMap may be applied after the workflow (GitOps applies in any
                # order) or the apiserver may blip: unreadable is ``transient``; the
                # planner waits a bounded time before calling the spec invalid.
                try:
                    cm = await asyncio.to_thread(
                        self.core.read_namespaced_config_map, ref.name, namespace
                    )
                except client.ApiException as exc:
                    infos[sub.name] = CircuitInfo(
                        error=f"ConfigMap {ref.name!r} cannot be read ({exc.status} {exc.reason})",
                        transient=True,
                    )
                    continue
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    infos[sub.name] = CircuitInfo(
                        error=f"ConfigMap {ref.name!r} cannot be read ({exc})", transient=True
                    )
                    continue
                data = cm.data or {}
                if ref.key not in data:
                    infos[sub.name] = CircuitInfo(
                        error=f"ConfigMap {ref.name!r} has no key {ref.key!r}", transient=True
                    )
                    continue
                source = data[ref.key]
            sources[sub.name] = source
            digest = hashlib.sha256(source.encode()).hexdigest()
            if digest not in self._circuit_cache:
                self._circuit_cache[digest] = await asyncio.to_thread(circuits.inspect, source)
                while len(self._circuit_cache) > CIRCUIT_CACHE_SIZE:
                    self._circuit_cache.popitem(last=False)
            infos[sub.name] = self._circuit_cache[digest]
        return sources, infos

    async def read_missing_pods(
        self, namespace: str, status: HybridWorkflowStatus, cached: Iterable[PodState]
    ) -> list[PodState]:
        """Pods the status expects but the watch cache lacks, read live from the apiserver.

        The cache can lag (just after a start or a peering pause); concluding from it that
        a pod is gone would start a second attempt beside a running first one.
        """
        known = {p.name for p in cached}
        found: list[PodState] = []
        for st in status.subtasks:
            if st.phase in ACTIVE and st.podName and st.podName not in known:
                try:
                    pod = await asyncio.to_thread(kubeio.read_pod, self.core, st.podName, namespace)
                except client.ApiException as exc:
                    if exc.status == 404:
                        continue
                    raise
                found.append(pod_state(pod))
        return found

    async def with_progress(self, pods: list[PodState]) -> list[PodState]:
        """Running variational pods with the progress their worker serves (``/progress``
        on its metrics port); a pod that does not answer within a second keeps none, and
        the status keeps what it last showed."""

        def served(pod: PodState) -> bool:
            return bool(pod.variational and pod.ip and pod.phase is PodPhase.RUNNING)

        async def read(pod: PodState) -> PodState:
            if not (served(pod) and pod.ip):
                return pod
            host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip  # an IPv6 pod address
            url = f"http://{host}:{METRICS_PORT}/progress"
            try:
                if self._progress_session is None or self._progress_session.closed:
                    self._progress_session = aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=1.0)
                    )
                async with self._progress_session.get(url) as resp:
                    if resp.status != 200:
                        return pod
                    # It comes from inside a pod: a bounded read (a progress is ~1 KiB),
                    # to the end of the body (it may arrive in several segments).
                    body = b""
                    async for chunk in resp.content.iter_chunked(16384):
                        body += chunk
                        if len(body) > PROGRESS_MAX_BYTES:
                            return pod
                    doc = json.loads(body)
                said = (doc.get("subtask") or pod.subtask, doc.get("attempt") or pod.attempt)
                if said != (pod.subtask, pod.attempt):
                    return pod  # another pod answers at this address (the IP was reused)
                progress = VariationalProgress.model_validate(
                    {k: v for k, v in doc.items() if k in REPORTED_PROGRESS}
                )
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, RecursionError):
                return pod
            return replace(pod, progress=progress)

        if not any(served(p) for p in pods):
            # Most cycles (no variational pod running): no task per pod, no loop turn.
            return pods
        return list(await asyncio.gather(*(read(p) for p in pods)))

    async def job_states(self, status: HybridWorkflowStatus) -> dict[str, JobState]:
        by_backend: dict[str, list[str]] = {}
        for st in status.subtasks:
            if (
                st.phase in ACTIVE
                and st.jobId
                and st.placement
                and (st.placement.kind is ResourceKind.BACKEND)
            ):
                by_backend.setdefault(st.placement.name, []).append(st.jobId)
        states: dict[str, JobState] = {}
        for backend, ids in by_backend.items():
            try:
                states.update(await self.gateway.status(backend, ids))
            except GatewayError as exc:
                # Unknown is not "gone" (that would resubmit) nor "unchanged" (that would
                # wait forever): the planner waits a bounded time, then places them again.
                logging.getLogger(__name__).warning("gateway %s: %s", backend, exc)
                states.update(_unknown(ids, str(exc)))
            for job in ids:
                # A gateway that refused a submission outright (bad circuit for the target,
                # unknown backend) will never know the job: report it failed, not missing.
                if job not in states and job in self.applier.rejected:
                    states[job] = JobState(
                        job, JobPhase.ERROR, self.applier.rejected[job], permanent=True
                    )
        return states


def _unknown(ids: Iterable[str], reason: str) -> dict[str, JobState]:
    """The gateway did not answer: the planner bounds how long that may last."""
    return {i: JobState(i, JobPhase.UNKNOWN, reason[:512]) for i in ids}


def parse_spec(raw: dict[str, Any]) -> tuple[HybridWorkflowSpec | None, str]:
    try:
        return HybridWorkflowSpec.model_validate(raw), ""
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            parts.append(f"{loc}: {err['msg']}")
        return None, "; ".join(parts)


def build_snapshot(
    *,
    namespace: str,
    name: str,
    generation: int,
    spec: HybridWorkflowSpec,
    status: HybridWorkflowStatus,
    pods: Iterable[PodState],
    jobs: dict[str, JobState],
    backends: Iterable[BackendInfo],
    circuits_info: dict[str, CircuitInfo],
    runtime: Runtime,
    metrics: MetricsView | None = None,
    created: dt.datetime | None = None,
) -> WorkflowSnapshot:
    if metrics is not None and metrics.available:
        backends = list(backends)
        metrics = _joined(runtime, metrics, backends)
        backends = [_with_live_metrics(b, metrics) for b in backends]
    return WorkflowSnapshot(
        namespace=namespace,
        name=name,
        generation=generation,
        spec=spec,
        status=status,
        now=dt.datetime.now(dt.UTC),
        pods={p.name: p for p in pods if not p.deleting},
        jobs=jobs,
        backends={b.name: b for b in backends},
        circuits=circuits_info,
        metrics=metrics,
        config=runtime.settings.planner,
        created=created,
    )


def _joined(runtime: Runtime, metrics: MetricsView, backends: list[BackendInfo]) -> MetricsView:
    """The view keyed by QuantumBackend object (``join_backends``); what it could not join
    is logged as a warning when that changes."""
    joined, problems = join_backends(metrics, backends)
    current = frozenset(problems)
    if current != runtime._join_problems:
        for problem in sorted(current - runtime._join_problems):
            logging.getLogger(__name__).warning("live metrics: %s", problem)
        runtime._join_problems = current
    return joined


# CalibrationSummary field <- BackendMetrics field, for the medians the gateway exports.
_LIVE_CALIBRATION = (
    ("medianTwoQubitError", "two_qubit_error"),
    ("medianReadoutError", "readout_error"),
    ("medianT1Seconds", "t1_seconds"),
    ("medianT2Seconds", "t2_seconds"),
)


def _with_live_metrics(backend: BackendInfo, metrics: MetricsView) -> BackendInfo:
    """Prometheus is fresher than the QuantumBackend status: prefer it where it has data.
    ``metrics`` is keyed by QuantumBackend object (``join_backends``)."""
    live = metrics.backends.get(backend.name)
    if live is None:
        return backend
    queue = backend.queue_length
    if live.queue_length is not None or live.pending_jobs is not None:
        queue = int(max(live.queue_length or 0, live.pending_jobs or 0))
    healthy = backend.healthy if live.up is None else live.up
    return replace(
        backend,
        queue_length=queue,
        healthy=healthy,
        calibration=_live_calibration(backend.calibration, live),
    )


def _live_calibration(
    status: CalibrationSummary | None, live: BackendMetrics
) -> CalibrationSummary | None:
    """The status' calibration with the medians Prometheus has. When they differ from the
    status' (the gateway moved to a newer calibration the status does not show yet), the
    status' ``updatedAt`` no longer dates them: it is dropped, so nothing cached for the old
    calibration day is taken for the new one."""
    update: dict[str, Any] = {
        mine: value
        for mine, theirs in _LIVE_CALIBRATION
        if (value := getattr(live, theirs)) is not None
    }
    if not update:
        return status
    base = status or CalibrationSummary()
    if any(
        (old := getattr(base, k)) is None or not math.isclose(old, v, rel_tol=1e-9)
        for k, v in update.items()
    ):
        update["updatedAt"] = None
    return base.model_copy(update=update)
