"""``qorch run``: HybridWorkflows on this machine, decided by the operator's own code.

The decision loop is ``qorch.runtime``'s, the one ``qorch simulate`` drives on a simulated
clock; here it runs on the wall clock and this module is its ``World``. Each cycle does what
the operator's daemon and its cluster pass do: read the state (worker processes as pods,
the in-process gateways' jobs and queues), run the prediction pass (the operator's
``PredictionService``: the shipped ONNX models), the cluster pass (``ClusterPass``: cost
function, placement, moves) and ``plan``, and apply the plan's actions. Only the resources
differ: a pool is this machine (``local.pods``), a backend is a ``qorch gateway`` served in
this process (``local.gateways``). What each subtask did is kept as spans, the twin's
records, for the report and the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ResourceKind,
    SubtaskPhase,
    SubtaskStatus,
    WorkflowPhase,
)
from qorch.gateway.base import GatewayError, JobRequest
from qorch.local.gateways import LocalGateways
from qorch.local.manifests import LocalManifests, LocalWorkflow
from qorch.local.pods import LocalPods, local_node, route_json
from qorch.operator.nodes import pod_usage
from qorch.operator.podspec import LABEL_WORKFLOW, build_pod, workflow_label
from qorch.operator.predictions import PredictionService
from qorch.orchestrator.capacity import NodeInfo, PodUsage
from qorch.orchestrator.events import coalesce as coalesce_events
from qorch.orchestrator.lifecycle import ACTIVE
from qorch.orchestrator.plan import (
    CancelJob,
    CreatePod,
    DeletePod,
    Plan,
    ReleasePod,
    RoutePod,
    StoreResult,
    SubmitJob,
)
from qorch.orchestrator.snapshot import (
    BackendInfo,
    CircuitInfo,
    JobPhase,
    JobState,
    PlannerConfig,
    PodState,
    WorkflowSnapshot,
)
from qorch.quantum import circuits
from qorch.runtime.clock import WallClock
from qorch.runtime.loop import Runtime
from qorch.runtime.policy import ClusterPass
from qorch.sim.records import Span, SpanEnd

NAMESPACE = "local"
# How often a cycle runs when nothing asks sooner: a local run's steps take seconds.
CYCLE_SECONDS = 0.25
WORKER_IMAGE = "local"  # a pod's image means nothing here: its command runs on this machine


@dataclass
class EventRecord:
    at: float  # seconds since the run started
    workflow: str
    reason: str
    message: str
    warning: bool = False


@dataclass
class RunWorkflow:
    local: LocalWorkflow
    body: dict[str, Any]
    status: HybridWorkflowStatus = field(default_factory=HybridWorkflowStatus)
    sources: dict[str, str] = field(default_factory=dict)
    circuits: dict[str, CircuitInfo] = field(default_factory=dict)
    finished: float | None = None
    arrival: float = 0.0  # all are there when the run starts
    spec: HybridWorkflowSpec = field(init=False)

    def __post_init__(self) -> None:
        self.spec = self.local.spec

    @property
    def name(self) -> str:
        return self.local.name

    @property
    def key(self) -> str:
        return f"{NAMESPACE}/{self.name}"

    @property
    def done(self) -> bool:
        return self.status.phase in (WorkflowPhase.SUCCEEDED, WorkflowPhase.FAILED)


@dataclass
class RunResult:
    workflows: list[RunWorkflow]
    spans: list[Span]
    events: list[EventRecord]
    seconds: float
    models: str  # what predicted: the models' directory, or "analytic"
    timed_out: bool = False
    # The end of what each subtask's last pod printed, by (workflow, subtask).
    logs: dict[tuple[str, str], str] = field(default_factory=dict)


class MissingHardwareError(ValueError):
    """A step asks for more GPUs than this machine has: it would wait forever."""


def local_gpus() -> int:
    """The GPUs ``nvidia-smi`` lists here (0 without it)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))


class LocalRun:
    """One run of the workflows in ``manifests``; ``await run()`` once. Raises
    ``MissingHardwareError`` when a step asks for GPUs this machine lacks (``gpus``:
    how many it has, default ``local_gpus()``)."""

    def __init__(
        self,
        manifests: LocalManifests,
        workdir: Path,
        *,
        models_dir: str | None = None,
        planner: PlannerConfig | None = None,
        gpus: int | None = None,
    ) -> None:
        self.gpus = local_gpus() if gpus is None else gpus
        for wf in manifests.workflows:
            for sub in wf.spec.subtasks:
                step = sub.classical or sub.variational
                wanted = step.resources.gpu if step is not None else 0
                if wanted > self.gpus:
                    raise MissingHardwareError(
                        f"{wf.source}: subtask {sub.name!r} asks for {wanted} GPU(s) and "
                        f"this machine has {self.gpus}; on a cluster it would wait for a GPU "
                        "node, here it would wait forever (remove resources.gpu to run it "
                        "on the CPU)"
                    )
        self.manifests = manifests
        self.pods = LocalPods(workdir / "pods", manifests.config_maps)
        self.predictions = PredictionService(models_dir)
        self.models = models_dir or "analytic"
        self.planner = planner or PlannerConfig()
        self.workflows = [_workflow(w) for w in manifests.workflows]
        self.events: list[EventRecord] = []
        self.gateways: LocalGateways | None = None
        self.clock = WallClock()
        # What the operator runs with its cluster pass; a cycle every ``CYCLE_SECONDS``
        # anyway (``next_change``), so no pass tick of its own.
        self.runtime: Runtime[RunWorkflow] = Runtime(
            self,
            self.workflows,
            ClusterPass(pass_seconds=None),
            _ServicePredictions(self.predictions),
            self.clock,
        )
        self._states: list[PodState] = []
        self._backends: list[BackendInfo] = []
        self._spans: dict[tuple[str, str], _OpenSpan] = {}
        self._closed: list[Span] = []

    @property
    def started(self) -> float:
        """When the run started, on ``time.monotonic()``."""
        return self.clock.started

    def elapsed(self) -> float:
        return self.clock.now()

    async def run(
        self,
        *,
        timeout_seconds: float | None = None,
        on_cycle: Callable[[LocalRun], None] | None = None,
    ) -> RunResult:
        if self.predictions.store is not None:
            self.predictions.refresh_models(force=True)
        self.gateways = await LocalGateways.start(self.manifests.backend_specs())
        self.clock.restart()

        def cycled(now: float) -> None:
            if on_cycle is not None:
                on_cycle(self)

        try:
            finished = await self.runtime.run(limit=timeout_seconds, on_cycle=cycled)
            timed_out = not finished
        finally:
            await asyncio.to_thread(self.pods.stop_all)
            await self._cancel_jobs()
            await self.gateways.close()
        end = self.elapsed()
        for key in list(self._spans):
            self._close(key, end, SpanEnd.OPEN)
        logs = {
            (wf.name, st.name): self.pods.log_tail(st.podName)
            for wf in self.workflows
            for st in wf.status.subtasks
            if st.podName
        }
        return RunResult(
            self.workflows, self._closed, self.events, end, self.models, timed_out, logs
        )

    # -- the world, as the runtime drives it --------------------------------------------
    async def admit(self, wf: RunWorkflow, t: float) -> None:
        wf.sources, wf.circuits = await asyncio.to_thread(
            _load_sources, wf, self.manifests.config_maps
        )

    async def advance(self, t: float) -> None:
        assert self.gateways is not None
        self.pods.poll()
        await asyncio.to_thread(self.pods.read_progress)
        self._backends = self.gateways.infos()
        self._states = self.pods.states()

    async def snapshot(self, wf: RunWorkflow, t: float) -> WorkflowSnapshot:
        label = workflow_label(wf.name)
        return WorkflowSnapshot(
            namespace=NAMESPACE,
            name=wf.name,
            generation=1,
            spec=wf.spec,
            status=wf.status,
            now=self.clock.wall(t),
            pods={
                p.name: p
                for p in self._states
                if self.pods.pods[p.name].manifest["metadata"]["labels"].get(LABEL_WORKFLOW)
                == label
            },
            jobs=await self._jobs(wf.status),
            backends={b.name: b for b in self._backends},
            circuits=wf.circuits,
            config=self.planner,
            created=_created(wf),
        )

    def record(self, wf: RunWorkflow, snapshot: WorkflowSnapshot, decided: Plan, t: float) -> None:
        self._track(wf)

    def recheck_at(self, wf: RunWorkflow, decided: Plan, t: float) -> list[float]:
        """A real world announces nothing: what the plan asked to poll, from now."""
        if decided.requeue_after is None:
            return []
        return [self.elapsed() + decided.requeue_after.total_seconds()]

    def next_change(self, t: float) -> float | None:
        return t + CYCLE_SECONDS  # unknown: look again soon

    def cycle_done(self, t: float) -> None:
        pass

    async def _jobs(self, status: HybridWorkflowStatus) -> dict[str, JobState]:
        assert self.gateways is not None
        by_backend: dict[str, list[str]] = {}
        for st in status.subtasks:
            if (
                st.phase in ACTIVE
                and st.jobId
                and st.placement
                and st.placement.kind is ResourceKind.BACKEND
            ):
                by_backend.setdefault(st.placement.name, []).append(st.jobId)
        states: dict[str, JobState] = {}
        for backend, ids in by_backend.items():
            try:
                states.update(await self.gateways.client.status(backend, ids))
            except GatewayError as exc:
                states.update({i: JobState(i, JobPhase.UNKNOWN, str(exc)[:512]) for i in ids})
        return states

    def nodes(self) -> list[NodeInfo]:
        """This machine, once per pool (a GPU pool only where it has GPUs)."""
        cores = float(os.cpu_count() or 1)
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        seen: dict[str, NodeInfo] = {}
        for wf in self.workflows:
            for pool in wf.spec.resources.classicalPools:
                if (pool.gpu and not self.gpus) or pool.name in seen:
                    continue
                seen[pool.name] = NodeInfo(
                    name=local_node(pool.name),
                    labels=dict(pool.nodeSelector),
                    cpu_cores=cores,
                    memory_bytes=memory,
                    gpus=float(self.gpus) if pool.gpu else 0.0,
                )
        return list(seen.values())

    def usage(self, t: float) -> list[PodUsage]:
        out = []
        for pod in self.pods.running():
            usage = pod_usage(pod.body())
            if usage is not None:
                out.append(usage)
        return out

    # -- applying a plan ---------------------------------------------------------------
    async def apply(self, wf: RunWorkflow, decided: Plan, t: float) -> None:
        assert self.gateways is not None
        spec = wf.spec
        subtasks = {s.name: s for s in spec.subtasks}
        pools = {p.name: p for p in spec.resources.classicalPools}
        for ev in coalesce_events(decided.events):  # as the operator posts them
            self.events.append(
                EventRecord(self.elapsed(), wf.name, ev.reason, ev.message, ev.warning)
            )
        for action in decided.actions:
            try:
                if isinstance(action, CreatePod):
                    route = self._route(action.route, action.moves) if action.route else None
                    manifest = build_pod(
                        workflow=wf.body,
                        subtask=subtasks[action.subtask],
                        attempt=action.attempt,
                        pod_name=action.pod_name,
                        worker_image=WORKER_IMAGE,
                        pool=pools[action.pool],
                        num_qubits=action.num_qubits,
                        route=route,
                        job_prefix=f"{wf.name}-{action.subtask}-{action.attempt}",
                        inputs=action.inputs,
                        inputs_config_map=f"{action.pod_name}-inputs",
                    )
                    self.pods.create(manifest, action.inputs, route)
                elif isinstance(action, ReleasePod):
                    await asyncio.to_thread(
                        self.pods.release, action.pod_name, action.pool, action.moves
                    )
                elif isinstance(action, DeletePod):
                    await asyncio.to_thread(self.pods.delete, action.pod_name)
                elif isinstance(action, SubmitJob):
                    circuit = subtasks[action.subtask].circuit
                    assert circuit is not None
                    await self.gateways.client.submit(
                        JobRequest(
                            job_id=action.job_id,
                            backend=action.backend,
                            qasm=wf.sources[action.subtask],
                            primitive=circuit.primitive.value,
                            shots=circuit.shots,
                            observables=tuple(circuit.observables or ()),
                            remote_job_id=action.remote_job_id,
                        )
                    )
                elif isinstance(action, CancelJob):
                    await self.gateways.client.cancel(action.backend, action.job_id)
                elif isinstance(action, StoreResult):
                    self.pods.store(action.config_map, action.result)
                elif isinstance(action, RoutePod):
                    self.pods.route(action.pod_name, self._route(action.route, action.moves))
            except (GatewayError, OSError, ValueError) as exc:
                self.events.append(
                    EventRecord(
                        self.elapsed(),
                        wf.name,
                        "ActionFailed",
                        f"{type(action).__name__} failed: {exc}",
                        warning=True,
                    )
                )

    def _route(self, route: Any, moves: int) -> str:
        assert self.gateways is not None
        target = (
            self.gateways.targets.get(route.name) if route.kind is ResourceKind.BACKEND else None
        )
        return route_json(
            route,
            moves,
            target.url if target else None,
            target.backend_name if target else None,
        )

    async def _cancel_jobs(self) -> None:
        """Jobs still queued when the run stops (interrupted, timed out) are cancelled."""
        assert self.gateways is not None
        for wf in self.workflows:
            for st in wf.status.subtasks:
                placement = st.placement
                if (
                    st.phase in ACTIVE
                    and st.jobId
                    and placement is not None
                    and placement.kind is ResourceKind.BACKEND
                ):
                    with contextlib.suppress(GatewayError):
                        await self.gateways.client.cancel(placement.name, st.jobId)

    # -- what happened, for the report ---------------------------------------------------
    def _track(self, wf: RunWorkflow) -> None:
        """Open, move and close each subtask's span from its status."""
        t = self.elapsed()
        for st in wf.status.subtasks:
            key = (wf.name, st.name)
            open_ = self._spans.get(key)
            where = _where(st)
            if open_ is not None and (where is None or where != open_.where):
                # Placed elsewhere, or finished: how this stretch ended.
                if st.phase is SubtaskPhase.SUCCEEDED and where == open_.where:
                    outcome = SpanEnd.DONE
                elif st.phase is SubtaskPhase.SUCCEEDED or where is not None:
                    outcome = SpanEnd.MOVED if st.moves > open_.moves else SpanEnd.FAILED
                elif st.phase in (SubtaskPhase.FAILED, SubtaskPhase.RETRYING):
                    outcome = SpanEnd.FAILED
                else:
                    outcome = SpanEnd.DONE
                self._close(key, t, outcome)
                open_ = None
            if where is not None and st.phase in ACTIVE and open_ is None:
                self._spans[key] = _OpenSpan(where, t, None, st.moves)
                open_ = self._spans[key]
            if open_ is None:
                continue
            # A process's own start and end where it ran in a pod (a step of a second
            # starts and ends between two cycles); a job's from what it reported.
            pod = self.pods.pods.get(st.podName or "") if where and where[0] == "pool" else None
            if pod is not None and pod.started is not None and open_.running is None:
                open_.running = max(pod.started - self.started, open_.start)
            if st.phase is SubtaskPhase.RUNNING and open_.running is None:
                open_.running = t
            end = t
            if pod is not None and pod.ended is not None:
                end = min(max(pod.ended - self.started, open_.start), t)
            if st.phase is SubtaskPhase.SUCCEEDED:
                run = st.actual.runSeconds if st.actual is not None else None
                if open_.running is None and run is not None:
                    open_.running = max(end - run, open_.start)
                self._close(key, end, SpanEnd.DONE)
            elif st.phase in (SubtaskPhase.FAILED, SubtaskPhase.RETRYING):
                self._close(key, end, SpanEnd.FAILED)

    def _close(self, key: tuple[str, str], t: float, outcome: SpanEnd) -> None:
        open_ = self._spans.pop(key, None)
        if open_ is None:
            return
        kind, resource = open_.where
        self._closed.append(
            Span(key[0], key[1], resource, kind, open_.start, t, open_.running, outcome)
        )


@dataclass
class _OpenSpan:
    where: tuple[str, str]  # (kind "backend" | "pool", resource)
    start: float
    running: float | None
    moves: int


def _where(st: SubtaskStatus) -> tuple[str, str] | None:
    if st.placement is None:
        return None
    kind = "backend" if st.placement.kind is ResourceKind.BACKEND else "pool"
    return kind, st.placement.name


def _workflow(local: LocalWorkflow) -> RunWorkflow:
    body = {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {
            "name": local.name,
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": json.loads(local.spec.model_dump_json(exclude_none=True)),
    }
    return RunWorkflow(local, body)


def _created(wf: RunWorkflow) -> dt.datetime:
    stamp = wf.body["metadata"]["creationTimestamp"]
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _load_sources(
    wf: RunWorkflow, maps: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, str], dict[str, CircuitInfo]]:
    """Each circuit's QASM (inline, or from a ConfigMap of the files) and its parse."""
    sources: dict[str, str] = {}
    infos: dict[str, CircuitInfo] = {}
    for sub in wf.spec.subtasks:
        given = sub.source
        if given is None:
            continue
        if given.qasm is not None:
            source = given.qasm
        else:
            ref = given.configMapRef
            assert ref is not None
            source = maps[ref.name][ref.key]  # checked when the files were read
        sources[sub.name] = source
        infos[sub.name] = circuits.inspect(source)
    return sources, infos


class _ServicePredictions:
    """The operator's ``PredictionService`` as the runtime asks for it: one pass per
    workflow (in its worker thread), the outcomes read back."""

    def __init__(self, service: PredictionService) -> None:
        self.service = service

    async def predict(
        self,
        snapshots: dict[str, WorkflowSnapshot],
        sources: Mapping[str, Mapping[str, str]],
        *,
        launched: bool = True,
    ) -> dict[str, WorkflowSnapshot]:
        out = {}
        for key, snap in snapshots.items():
            predictions, report = await self.service.predict(
                snap.spec,
                snap.status,
                sources.get(key, {}),
                snap.backends.values(),
                None,
                launched=launched,
            )
            if report is not None:
                snap = dataclasses.replace(snap, predictions=predictions, predictor=report)
            out[key] = snap
        return out

    def record_outcomes(self, snapshot: WorkflowSnapshot, decided: Plan) -> None:
        self.service.record_outcomes(snapshot, decided)
