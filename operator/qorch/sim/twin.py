"""The digital twin: the simulated world ``qorch simulate`` runs the operator's decisions in.

The decision loop is ``qorch.runtime``'s, the one ``qorch run`` drives on the wall clock:
each cycle builds every active workflow's ``WorkflowSnapshot`` from this world
(``SimBackend`` gateways, ``SimPool`` pools), runs the same prediction pass
(``qorch.predictor.workflow``), the policy's pass (``decide_cluster`` for Qorch) and the same
``plan`` the operator runs, and the twin applies the plan's actions to the simulated world
instead of the apiserver and the gateways. Only the clock and the resources are simulated.

What the world does is decided here, not by the predictor: a QPU job runs for the analytic
run time times a seeded log-normal error, after the others' queue it found (replayed from
the real trace); its fidelity is the success estimate from the calibration of the day it
STARTS on (a placement decided on yesterday's calibration can go stale); a simulation pod
runs for Aer's analytic time, exact; a variational loop's optimizer pod sends one batch at a
time to the backend its route names (``RoutePod`` re-routes the next batch, as the worker
does). A policy (``qorch.sim.policies``) decides what a cycle's snapshots carry (the cluster
pass's word, or a batch round's assignments) and which ``PlacementPolicy`` ``plan`` uses.

The simulated clock steps from event to event (arrivals, job and pod starts and ends, batch
ends, retry times, the policy's pass ticks), each rounded up to ``step_seconds`` as the
operator's polls and resyncs would see them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qorch.api.backend import CalibrationSummary, Provider
from qorch.api.workflow import (
    ClassicalPool,
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    Placement,
    ResourceKind,
    SubtaskPhase,
    VariationalProgress,
    WorkflowPhase,
)
from qorch.orchestrator.capacity import NodeInfo, PodUsage, Taint
from qorch.orchestrator.cluster import pod_request
from qorch.orchestrator.plan import (
    CancelJob,
    CreatePod,
    DeletePod,
    Plan,
    ReleasePod,
    RoutePod,
    SubmitJob,
    loop_job_prefix,
)
from qorch.orchestrator.snapshot import (
    BackendInfo,
    CircuitInfo,
    JobState,
    PlannerConfig,
    PodPhase,
    PodState,
    WorkflowSnapshot,
)
from qorch.predictor import CircuitCache, PredictionContext, Predictor, SubtaskInput
from qorch.predictor.analytic import AnalyticConfig, qpu_run_seconds, simulation_seconds
from qorch.predictor.workflow import (
    QueueObservations,
    backend_input,
)
from qorch.runtime.clock import SimulatedClock
from qorch.runtime.loop import Runtime
from qorch.runtime.policy import CyclePolicy
from qorch.runtime.predictions import InlinePredictions
from qorch.sim.backend import SimBackend
from qorch.sim.pool import SimPool
from qorch.sim.records import Span, SpanEnd, TwinResult, WorkflowOutcome

_ANALYTIC = AnalyticConfig()
# The world's fidelity departs from the model's by a normal residual whose mean absolute
# value is the model's held-out error (MAE 0.0149 on held-out calibration days, MODEL_CARD):
# sd = MAE x sqrt(pi / 2).
FIDELITY_RESIDUAL = 0.0149 * math.sqrt(math.pi / 2)
_GPU_TAINT = Taint("nvidia.com/gpu", "", "NoSchedule")


# ---- the world ---------------------------------------------------------------------------------


@dataclass
class TwinBackend:
    """One quantum backend: its gateway (``sim``), what its QuantumBackend says, and the
    truth the twin runs jobs by (calibration and health over time)."""

    info: BackendInfo  # name, provider, qubits, price (queue and calibration set per cycle)
    sim: SimBackend
    calibration_at: Callable[[float], CalibrationSummary | None] = lambda t: None
    healthy_at: Callable[[float], bool] = lambda t: True
    # The mean seconds one of the others' jobs holds it in this world (what the scenario
    # scaled its service times to; no policy reads it: they learn it from their jobs).
    average_job_seconds: float = _ANALYTIC.service_seconds_per_job
    # The operator reads the live metrics this often (QORCH_METRICS_REFRESH_SECONDS): what
    # it sees at ``t`` is the reading of the last refresh (0: always current).
    metrics_refresh_seconds: float = 0.0

    def view(self, t: float) -> BackendInfo:
        """The QuantumBackend as the operator reads it at ``t``."""
        refresh = self.metrics_refresh_seconds
        seen = math.floor(t / refresh) * refresh if refresh > 0 else t
        return dataclasses.replace(
            self.info,
            queue_length=self.sim.queue_length(seen),
            healthy=self.healthy_at(seen),
            calibration=self.calibration_at(seen),
        )


@dataclass
class TwinPool:
    """One classical pool: the nodes its ``ClassicalPool`` selects, as one simulated node."""

    sim: SimPool
    labels: Mapping[str, str]
    gpu: bool = False

    def node(self) -> NodeInfo:
        return NodeInfo(
            name=self.sim.name,
            labels=dict(self.labels),
            cpu_cores=self.sim.cpu_cores,
            memory_bytes=self.sim.memory_bytes,
            gpus=self.sim.gpus,
            taints=(_GPU_TAINT,) if self.gpu else (),
        )


@dataclass(frozen=True)
class CircuitTruth:
    """What the twin runs a circuit by (counts of the logical circuit)."""

    num_qubits: int
    depth: int
    one_qubit_gates: int
    two_qubit_gates: int
    measurements: int


@dataclass
class TwinWorkflow:
    """One HybridWorkflow as it arrives: its spec, its circuits' sources, and the twin's
    truth for what the spec cannot say (how long a classical step runs)."""

    name: str
    shape: str
    arrival: float
    spec: HybridWorkflowSpec
    sources: dict[str, str] = field(default_factory=dict)
    classical_seconds: dict[str, float] = field(default_factory=dict)
    namespace: str = "twin"
    # Filled as it runs.
    status: HybridWorkflowStatus = field(default_factory=HybridWorkflowStatus)
    circuits: dict[str, CircuitInfo] = field(default_factory=dict)
    truths: dict[str, CircuitTruth] = field(default_factory=dict)
    finished: float | None = None
    fidelities: dict[str, list[float]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class _Loop:
    """A variational loop's optimizer pod as its worker runs it: one batch at a time to
    the backend its route names (read before each batch)."""

    workflow: str
    subtask: str
    pod: str
    pool: str
    prefix: str
    route: Placement
    route_moves: int
    batches_total: int
    shots: int
    sent: int = 0
    current: tuple[str, str] | None = None  # (backend, job id) of the batch in flight
    batches: dict[str, int] = field(default_factory=dict)
    qpu_seconds: dict[str, float] = field(default_factory=dict)
    done_at: float | None = None
    clock: float | None = None  # where the worker got to (None: not started)


# ---- the twin ------------------------------------------------------------------------------------


class Twin:
    """The simulated world the runtime (``qorch.runtime``) runs the operator's decisions
    against, on a simulated clock; ``run`` replays it."""

    def __init__(
        self,
        backends: Sequence[TwinBackend],
        pools: Sequence[TwinPool],
        workflows: Sequence[TwinWorkflow],
        policy: CyclePolicy,
        *,
        predictor: Predictor,
        circuits: CircuitCache | None = None,
        start: dt.datetime = dt.datetime(2023, 11, 16, tzinfo=dt.UTC),
        step_seconds: float = 5.0,
        resync_seconds: float = 60.0,
        seed: int = 0,
        run_noise: float = 0.25,
        recent_waits: Mapping[str, Sequence[float]] | None = None,
        min_job_seconds: float = 0.0,
    ) -> None:
        self.backends = {b.info.name: b for b in backends}
        self.pools = {p.sim.name: p for p in pools}
        self.policy = policy
        self.predictor = predictor
        # The world's expected fidelity of a job: the shipped fidelity model (Hellinger
        # fidelity under a day's calibration, what the predictor's labels measure) on the
        # calibration of the day the job STARTS, with a residual error drawn at the model's
        # held-out error (``FIDELITY_RESIDUAL``): the policies decide on the model, the world
        # is not the model. A separate instance, so its calls stay out of the decision
        # passes' reports.
        self.truth = Predictor(predictor.models)
        self._fidelities: dict[tuple[str, str, str, int], float] = {}
        self.circuits = circuits or CircuitCache(max_entries=8192)
        self.clock = SimulatedClock(start, step_seconds)
        self.start = start
        self.step = step_seconds
        self.seed = seed
        self.run_noise = run_noise
        # A device holds each job at least this long (the gateway's --min-job-seconds).
        self.min_job_seconds = min_job_seconds
        self.loops: dict[str, _Loop] = {}  # by pod name
        self.pod_pool: dict[str, str] = {}  # pod name -> pool
        self.counted: set[tuple[str, str, int]] = set()
        self.spans: dict[tuple[str, str, int, str], list[Any]] = {}
        self.closed_spans: list[Span] = []
        self.handles: dict[tuple[str, str], str] = {}  # (workflow, subtask) -> pod or job
        self.deleted_gpu_seconds = 0.0
        self.job_fidelity: dict[str, float] = {}  # job id -> realised fidelity
        self.job_subtask: dict[str, tuple[str, str]] = {}
        self.result = TwinResult(policy=policy.name, horizon=0.0)
        self.planner_config = PlannerConfig()
        # The backends as every workflow's snapshot of one cycle reads them: built once per
        # cycle (the runtime builds all snapshots before it applies a plan), dropped when a
        # plan is applied. A week's static replay carries hundreds of waiting workflows.
        self._backend_views: tuple[float, dict[str, BackendInfo]] | None = None
        # The operator's decision loop, on this world. Every policy re-plans at least every
        # ``resync_seconds`` while work is active (the operator resyncs every 10 s; coarser
        # here, the same for all policies).
        self.predictions = InlinePredictions(predictor, self.circuits, recent_waits=recent_waits)
        self.runtime: Runtime[TwinWorkflow] = Runtime(
            self, workflows, policy, self.predictions, self.clock, resync_seconds=resync_seconds
        )

    # -- the clock and the runtime's state ------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.now()

    @property
    def active(self) -> dict[str, TwinWorkflow]:
        return self.runtime.active

    @property
    def done(self) -> list[TwinWorkflow]:
        return self.runtime.done

    @property
    def queues(self) -> QueueObservations:
        """What the operator learned of the queues from its own jobs."""
        return self.predictions.queues

    def wall(self, t: float) -> dt.datetime:
        return self.clock.wall(t)

    # -- one replay -----------------------------------------------------------------------
    def run(
        self,
        horizon: float,
        progress: Callable[[float], None] | None = None,
        *,
        drain_limit: float | None = None,
    ) -> TwinResult:
        """Replay up to ``horizon`` seconds, then on until every workflow that arrived has
        finished or ``drain_limit`` (default 4 x horizon) has passed: a policy that leaves
        work queued at the end is measured on it, not flattered by a cut-off."""
        started = time.perf_counter()
        limit = drain_limit if drain_limit is not None else 4 * horizon
        asyncio.run(self.runtime.run(horizon=horizon, limit=limit, on_cycle=progress))
        # The replay ends at its last cycle (the work all finished), or at the limit.
        self.result.horizon = min(self.runtime.last_cycle, limit)
        self.result.decision_seconds = self.runtime.decision_seconds
        self._finish()
        self.result.wall_seconds = time.perf_counter() - started
        return self.result

    # -- the world, as the runtime drives it ----------------------------------------------
    async def admit(self, wf: TwinWorkflow, t: float) -> None:
        self._admit(wf)

    async def advance(self, t: float) -> None:
        for loop in list(self.loops.values()):
            self._advance_loop(loop, t)
        for pool in self.pools.values():
            pool.sim.advance(t)

    async def snapshot(self, wf: TwinWorkflow, t: float) -> WorkflowSnapshot:
        return self._snapshot(wf, t)

    def nodes(self) -> list[NodeInfo]:
        return [p.node() for p in self.pools.values()]

    def usage(self, t: float) -> list[PodUsage]:
        return self._pod_usage(t)

    async def apply(self, wf: TwinWorkflow, decided: Plan, t: float) -> None:
        self._backend_views = None
        self._apply(wf, decided, t)

    def record(self, wf: TwinWorkflow, snapshot: WorkflowSnapshot, decided: Plan, t: float) -> None:
        self._record(wf, decided, t)

    def recheck_at(self, wf: TwinWorkflow, decided: Plan, t: float) -> list[float]:
        """The simulated world announces every change (``next_change``): only a move in
        progress (three stored steps the operator takes one after another) and a retry
        time need a cycle of their own."""
        status = decided.status
        if any(st.moving is not None for st in status.subtasks):
            # A move is three stored steps (intent, stop the old attempt, start the new
            # one): the operator re-plans at once, and so does the twin.
            return [t + self.step]
        return [
            max((_parse(st.retryAfter) - self.start).total_seconds(), t + self.step)
            for st in status.subtasks
            if st.phase is SubtaskPhase.RETRYING and st.retryAfter
        ]

    def next_change(self, t: float) -> float | None:
        times = [b.sim.next_change(t) for b in self.backends.values()]
        times += [p.sim.next_change(t) for p in self.pools.values()]
        return min((x for x in times if x is not None), default=None)

    def cycle_done(self, t: float) -> None:
        self._sample(t)

    # -- building the snapshot ------------------------------------------------------------
    def _admit(self, wf: TwinWorkflow) -> None:
        for sub in wf.spec.subtasks:
            source = wf.sources.get(sub.name)
            if source is None:
                continue
            parsed = self.circuits.parse(source)
            counts = parsed.counts
            if counts is None:
                wf.circuits[sub.name] = CircuitInfo(error=parsed.error or "does not parse")
                continue
            wf.circuits[sub.name] = CircuitInfo(
                num_qubits=counts.num_qubits,
                depth=counts.depth,
                num_clbits=counts.measurements,
                measurements=counts.measurements,
                parameters=_parameters(parsed.circuit),
            )
            wf.truths[sub.name] = CircuitTruth(
                counts.num_qubits,
                counts.depth,
                counts.one_qubit_gates,
                counts.two_qubit_gates,
                counts.measurements,
            )

    def _snapshot(self, wf: TwinWorkflow, t: float) -> WorkflowSnapshot:
        pods: dict[str, PodState] = {}
        jobs: dict[str, JobState] = {}
        for st in wf.status.subtasks:
            if st.podName:
                state = self._pod_state(st.podName, t)
                if state is not None:
                    pods[state.name] = state
            if st.jobId and st.placement is not None and st.placement.kind is ResourceKind.BACKEND:
                backend = self.backends.get(st.placement.name)
                job = backend.sim.state(st.jobId, t) if backend else None
                if job is not None:
                    jobs[st.jobId] = job
        return WorkflowSnapshot(
            namespace=wf.namespace,
            name=wf.name,
            generation=1,
            spec=wf.spec,
            status=wf.status,
            now=self.wall(t),
            pods=pods,
            jobs=jobs,
            backends=self._views(t),
            circuits=wf.circuits,
            config=self.planner_config,
            created=self.wall(wf.arrival),
        )

    def _views(self, t: float) -> dict[str, BackendInfo]:
        if self._backend_views is None or self._backend_views[0] != t:
            self._backend_views = (t, {name: b.view(t) for name, b in self.backends.items()})
        return self._backend_views[1]

    def _pod_state(self, name: str, t: float) -> PodState | None:
        pool = self.pools.get(self.pod_pool.get(name, ""))
        if pool is None:
            return None
        state = pool.sim.state(name, t)
        loop = self.loops.get(name)
        if state is None or loop is None:
            return state
        progress = VariationalProgress(
            optimizer="cobyla",
            iterations=loop.sent,
            evaluations=loop.sent,
            batches=dict(loop.batches),
            qpuSeconds={k: round(v, 6) for k, v in loop.qpu_seconds.items()},
            updatedAt=_iso(self.wall(t)),
        )
        return dataclasses.replace(
            state,
            variational=True,
            progress=progress if state.phase is PodPhase.RUNNING else None,
            route=loop.route,
            route_moves=loop.route_moves,
        )

    def _pod_usage(self, t: float) -> list[PodUsage]:
        usage = []
        for pool in self.pools.values():
            for pod in pool.sim.running(t):
                usage.append(PodUsage(pool.sim.name, *pod.request))
            background = pool.sim.background_gpus(t)
            if background > 0:
                usage.append(PodUsage(pool.sim.name, 0.0, 0.0, min(background, pool.sim.gpus)))
        return usage

    # -- applying a plan ------------------------------------------------------------------
    def _apply(self, wf: TwinWorkflow, decided: Plan, t: float) -> None:
        specs = {s.name: s for s in wf.spec.subtasks}
        # What a stopped pod or job was: moved away, or its workflow failed.
        failed = decided.status.phase is WorkflowPhase.FAILED
        stopped = SpanEnd.FAILED if failed else SpanEnd.MOVED
        for action in decided.actions:
            if isinstance(action, CreatePod):
                self._create_pod(wf, action, specs, t)
            elif isinstance(action, ReleasePod):
                if action.pod_name not in self.pod_pool:
                    continue  # never created (its pool is not in this world)
                pool = self.pools[self.pod_pool[action.pod_name]]
                if action.pool != pool.sim.name and action.pool in self.pools:
                    # A narrow: the pod is now the new pool's (requests as they were).
                    self.pools[action.pool].sim.put(pool.sim.take(action.pod_name))
                    self.pod_pool[action.pod_name] = action.pool
                    pool = self.pools[action.pool]
                pool.sim.release(action.pod_name, t)
                self._open(wf, action.pod_name, pool.sim.name, "pool", t)
            elif isinstance(action, DeletePod):
                self._close(action.pod_name, t, stopped)
                pool_name = self.pod_pool.get(action.pod_name)
                if pool_name is not None:
                    self._count_gpu(self.pools[pool_name].sim, action.pod_name, t)
                    self.pools[pool_name].sim.delete(action.pod_name, t)
                loop = self.loops.pop(action.pod_name, None)
                if loop is not None and loop.current is not None:
                    in_flight, job_id = loop.current
                    self.backends[in_flight].sim.cancel(job_id, t)
            elif isinstance(action, SubmitJob):
                self._submit(wf, action, t)
            elif isinstance(action, CancelJob):
                target = self.backends.get(action.backend)
                if target is not None:
                    target.sim.cancel(action.job_id, t)
                self._close(action.job_id, t, stopped)
            elif isinstance(action, RoutePod):
                loop = self.loops.get(action.pod_name)
                if loop is not None:
                    loop.route = action.route
                    loop.route_moves = action.moves
            # StoreResult: results stay in the twin's status; nothing to store.
        wf.status = decided.status

    def _create_pod(
        self, wf: TwinWorkflow, action: CreatePod, specs: Mapping[str, Any], t: float
    ) -> None:
        sub = specs[action.subtask]
        pool = self.pools.get(action.pool)
        spec_pool = _spec_pool(wf.spec, action.pool)
        if pool is None or spec_pool is None:
            return
        request = pod_request(sub, spec_pool, action.num_qubits)
        result: dict[str, object] | None = None
        if sub.variational is not None:
            run = math.inf  # the loop's worker ends it
            assert action.route is not None
            self.loops[action.pod_name] = _Loop(
                workflow=wf.key,
                subtask=sub.name,
                pod=action.pod_name,
                pool=action.pool,
                prefix=loop_job_prefix(wf.namespace, wf.name, sub.name, action.attempt),
                route=action.route,
                route_moves=action.moves,
                batches_total=sub.variational.max_evaluations,
                shots=sub.variational.shots,
            )
        elif sub.classical is not None:
            run = wf.classical_seconds.get(sub.name, 10.0)
        else:
            truth = wf.truths.get(sub.name)
            run = self._simulation_seconds(truth, spec_pool.gpu, action.pod_name)
            result = {"counts": {}, "method": "statevector"}
        pool.sim.create(action.pod_name, sub.name, action.attempt, request, run, result)
        self.pod_pool[action.pod_name] = action.pool

    def _submit(self, wf: TwinWorkflow, action: SubmitJob, t: float) -> None:
        backend = self.backends.get(action.backend)
        if backend is None:
            return
        sub = next(s for s in wf.spec.subtasks if s.name == action.subtask)
        shots = sub.circuit.shots if sub.circuit is not None else 1024
        run = self._qpu_seconds(shots, action.job_id)
        job = backend.sim.submit(action.job_id, t, run, {"counts": {}})
        self.job_subtask[action.job_id] = (wf.key, action.subtask)
        self.job_fidelity[action.job_id] = self._fidelity(
            backend, wf.sources.get(action.subtask), shots, job.start
        )
        self._open(wf, action.job_id, action.backend, "backend", t)

    # -- what the world does -------------------------------------------------------------
    def expected_qpu_seconds(self, shots: int) -> float:
        return float(qpu_run_seconds(_ANALYTIC, np.array([shots], float), np.ones(1))[0])

    def expected_simulation_seconds(self, truth: CircuitTruth | None, gpu: bool) -> float:
        return self._simulation_seconds(truth, gpu, "")

    def fidelity_at(self, backend: TwinBackend, source: str | None, shots: int, at: float) -> float:
        return self._fidelity(backend, source, shots, at)

    def _noise(self, key: str) -> float:
        if not key:
            return 1.0
        rng = random.Random(f"{self.seed}:{key}")
        return math.exp(rng.gauss(0.0, self.run_noise))

    def _qpu_seconds(self, shots: int, key: str) -> float:
        return max(self.expected_qpu_seconds(shots) * self._noise(key), self.min_job_seconds)

    def _simulation_seconds(self, truth: CircuitTruth | None, gpu: bool, key: str) -> float:
        if truth is None:
            return 1.0
        gates = float(truth.one_qubit_gates + truth.two_qubit_gates)
        seconds = simulation_seconds(
            _ANALYTIC,
            np.array([truth.num_qubits], float),
            np.array([gates]),
            np.zeros(1),
            np.array([1.0 if gpu else 0.0]),
            np.ones(1),
        )
        return float(seconds[0]) * self._noise(key) + 2.0  # + the pod's start

    def _fidelity(self, backend: TwinBackend, source: str | None, shots: int, at: float) -> float:
        """The job's expected fidelity on the calibration of the day it starts on."""
        if backend.info.provider is Provider.AER:
            return 1.0
        if source is None:
            return math.nan
        cal = backend.calibration_at(at if math.isfinite(at) else self.now)
        parsed = self.circuits.parse(source)
        if parsed.counts is None:
            return math.nan
        key = (parsed.key, backend.info.name, cal.updatedAt or "" if cal else "", shots)
        known = self._fidelities.get(key)
        if known is not None:
            return known
        info = dataclasses.replace(backend.info, calibration=cal)
        context = PredictionContext.of(
            [SubtaskInput("job", parsed, shots)], [backend_input(info, None, ())]
        )
        value = float(self.truth.predict([("job", info.name)], context)[0].fidelity)
        residual = random.Random(f"{self.seed}:fidelity:{':'.join(map(str, key))}")
        value = min(max(value + residual.gauss(0.0, FIDELITY_RESIDUAL), 0.0), 1.0)
        self._fidelities[key] = value
        return value

    def _advance_loop(self, loop: _Loop, t: float) -> None:
        """Run the loop's worker up to ``t``: each batch ends, the next goes out at once to
        the backend the route names then; the pod ends after the last."""
        pool = self.pools[loop.pool].sim
        pod = pool.pods.get(loop.pod)
        if pod is None:
            return
        pool.advance(t)
        if not pod.start <= t or loop.done_at is not None or pod.lost_at is not None:
            return
        clock = pod.start if loop.clock is None else loop.clock
        loop.clock = clock
        wf = self.active.get(loop.workflow)
        truth = wf.truths.get(loop.subtask) if wf else None
        while True:
            if loop.current is None:
                if loop.sent >= loop.batches_total:
                    loop.done_at = clock
                    pool.end_early(pod, clock)
                    pod.result = {
                        "optimizer": "cobyla",
                        "iterations": loop.sent,
                        "evaluations": loop.sent,
                        "energy": -1.0,
                        "lastEnergy": -1.0,
                        "batches": dict(loop.batches),
                        "qpuSeconds": dict(loop.qpu_seconds),
                    }
                    return
                if loop.route.kind is not ResourceKind.BACKEND:
                    # Simulated in its own pod: a short exact evaluation.
                    seconds = self._simulation_seconds(truth, False, f"{loop.pod}.{loop.sent}")
                    if clock + seconds > t:
                        return
                    clock = loop.clock = clock + seconds
                    loop.sent += 1
                    loop.batches[loop.route.name] = loop.batches.get(loop.route.name, 0) + 1
                    if wf is not None:
                        wf.fidelities.setdefault(loop.subtask, []).append(1.0)
                    continue
                backend = self.backends[loop.route.name]
                job_id = f"{loop.prefix}.e{loop.sent}"
                run = self._qpu_seconds(loop.shots, job_id)
                job = backend.sim.submit(job_id, clock, run, {"energy": -1.0})
                source = wf.sources.get(loop.subtask) if wf else None
                self.job_fidelity[job_id] = self._fidelity(backend, source, loop.shots, job.start)
                loop.current = (backend.info.name, job_id)
            backend_name, job_id = loop.current
            sim = self.backends[backend_name].sim
            job = sim.jobs[job_id]
            if job.end > t:
                return
            clock = loop.clock = job.end
            loop.current = None
            loop.sent += 1
            loop.batches[backend_name] = loop.batches.get(backend_name, 0) + 1
            loop.qpu_seconds[backend_name] = (
                loop.qpu_seconds.get(backend_name, 0.0) + job.run_seconds
            )
            if wf is not None:
                wf.fidelities.setdefault(loop.subtask, []).append(self.job_fidelity[job_id])

    # -- recording -------------------------------------------------------------------------
    def _count_gpu(self, pool: SimPool, name: str, t: float) -> None:
        """GPU-seconds a pod held before it is deleted (utilisation counts them)."""
        pod = pool.pods.get(name)
        if pod is not None and math.isfinite(pod.start) and pod.request.gpus > 0:
            held = max(min(pod.end, t) - pod.start, 0.0)
            self.deleted_gpu_seconds += held * pod.request.gpus

    def _open(self, wf: TwinWorkflow, handle: str, resource: str, kind: str, t: float) -> None:
        self.spans[(wf.key, handle, 0, resource)] = [wf.key, handle, resource, kind, t]

    def _close(self, handle: str, t: float, outcome: SpanEnd) -> None:
        for key in [k for k in self.spans if k[1] == handle]:
            wf_key, _, resource, kind, start = self.spans.pop(key)
            running = self._running_from(handle, resource, kind)
            self.closed_spans.append(
                Span(
                    wf_key,
                    self._subtask_of(handle),
                    resource,
                    kind,
                    start,
                    t,
                    running if running is not None and running <= t else None,
                    outcome,
                )
            )

    def _running_from(self, handle: str, resource: str, kind: str) -> float | None:
        if kind == "backend":
            job = self.backends[resource].sim.jobs.get(handle)
            return job.start if job and math.isfinite(job.start) else None
        pod = self.pools[resource].sim.pods.get(handle)
        return pod.start if pod and math.isfinite(pod.start) else None

    def _subtask_of(self, handle: str) -> str:
        if handle in self.job_subtask:
            return self.job_subtask[handle][1]
        for pool in self.pools.values():
            pod = pool.sim.pods.get(handle)
            if pod is not None:
                return pod.subtask
        return handle

    def _record(self, wf: TwinWorkflow, decided: Plan, t: float) -> None:
        """Spans and fidelities (the runtime keeps the queues learned and what finished)."""
        status = decided.status
        for st in status.subtasks:
            handle = (
                st.jobId if st.placement and st.placement.kind is ResourceKind.BACKEND else None
            )
            handle = handle or st.podName
            before = self.handles.get((wf.key, st.name))
            if before is not None and before != handle:
                self._close(before, t, SpanEnd.FAILED)  # a new attempt: the old one failed
            if handle is not None:
                self.handles[(wf.key, st.name)] = handle
            if st.phase in (SubtaskPhase.SUCCEEDED, SubtaskPhase.FAILED, SubtaskPhase.RETRYING):
                end = SpanEnd.DONE if st.phase is SubtaskPhase.SUCCEEDED else SpanEnd.FAILED
                if handle:
                    self._close(handle, t, end)
            if st.phase is not SubtaskPhase.SUCCEEDED:
                continue
            key = (wf.key, st.name, st.attempts)
            if key in self.counted:
                continue
            self.counted.add(key)
            if st.placement is not None and st.placement.kind is ResourceKind.BACKEND:
                if st.jobId in self.job_fidelity:
                    wf.fidelities.setdefault(st.name, []).append(self.job_fidelity[st.jobId])
            elif st.placement is not None and st.name in wf.sources and st.route is None:
                wf.fidelities.setdefault(st.name, []).append(1.0)  # simulated exactly

    def _sample(self, t: float) -> None:
        for name, b in self.backends.items():
            series = self.result.queue_samples.setdefault(name, [])
            length = b.sim.queue_length(t)
            if not series or series[-1][1] != length:
                series.append((t, length))
        spent = math.fsum(
            w.status.costUSD for w in (*self.runtime.active.values(), *self.runtime.done)
        )
        if not self.result.cost_points or self.result.cost_points[-1][1] != spent:
            self.result.cost_points.append((t, spent))

    def _finish(self) -> None:
        end = self.result.horizon
        for key in list(self.spans):
            self._close(key[1], end, SpanEnd.OPEN)
        self.result.spans = self.closed_spans
        for wf in self.runtime.workflows:
            fids = [f for values in wf.fidelities.values() for f in values if math.isfinite(f)]
            self.result.workflows.append(
                WorkflowOutcome(
                    key=wf.key,
                    shape=wf.shape,
                    arrived=wf.arrival,
                    finished=wf.finished if wf.status.phase is WorkflowPhase.SUCCEEDED else None,
                    fidelity=sum(fids) / len(fids) if fids else None,
                    usd=wf.status.costUSD,
                    moves=wf.status.moves,
                    failed=wf.status.phase is WorkflowPhase.FAILED,
                )
            )
        up = [b for b in self.backends.values() if b.info.provider is not Provider.AER]
        self.result.qpu_busy_seconds = sum(b.sim.busy_seconds(end) for b in up)
        self.result.qpu_capacity_seconds = len(up) * end
        gpu_pools = [p for p in self.pools.values() if p.sim.gpus > 0]
        self.result.gpu_busy_seconds = self.deleted_gpu_seconds + sum(
            sum(
                max(min(pod.end, end) - pod.start, 0.0) * pod.request.gpus
                for pod in p.sim.pods.values()
                if math.isfinite(pod.start)
            )
            for p in gpu_pools
        )
        self.result.gpu_capacity_seconds = sum(p.sim.gpus for p in gpu_pools) * end


def _spec_pool(spec: HybridWorkflowSpec, name: str) -> ClassicalPool | None:
    return next((p for p in spec.resources.classicalPools if p.name == name), None)


def _parameters(circuit: Any) -> tuple[str, ...]:
    if circuit is None:
        return ()
    return tuple(sorted(p.name for p in circuit.parameters))


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_predictor(models_dir: str | None) -> Predictor:
    """The predictor as the operator builds it: the shipped models, loaded once (None: the
    analytic model alone)."""
    from qorch.predictor import ModelStore

    if models_dir is None:
        return Predictor(None)
    store = ModelStore(models_dir)
    store.refresh()
    return Predictor(store)
