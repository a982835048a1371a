"""One workflow's prediction pass, as the operator and the digital twin both run it: which
subtasks may be placed or moved this cycle (``placeable``), how a QuantumBackend looks to the
predictor (``backend_input``), the pass itself (``predict_workflow``), and what the caller
learns of each backend's queue from its own jobs (``QueueObservations``). No I/O: the
caller hands in the predictor, the parsed-circuit cache and what it read of the world."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from qorch.api.backend import Provider
from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ResourceKind,
    SubtaskPhase,
    SubtaskStatus,
)
from qorch.orchestrator.plan import CancelJob, SubmitJob
from qorch.orchestrator.prediction import Prediction
from qorch.orchestrator.prices import pool_price_per_hour
from qorch.orchestrator.snapshot import BackendInfo, MetricsView, PredictorReport
from qorch.predictor.analytic import AnalyticConfig
from qorch.predictor.features import (
    BackendInput,
    CalibrationMedians,
    CircuitCache,
    PoolInput,
    PredictionContext,
    QueueHistory,
    SubtaskInput,
)
from qorch.predictor.service import OutputUse, Predictor

# Worker pods that simulate a circuit request one core (``podspec``).
WORKER_CORES = 1.0
# Queue waits remembered per backend for the history features (the models use the last 20).
RECENT_WAITS = 20
# A backend's service time is learned from its own jobs once this many found others ahead.
MIN_SERVICE_SAMPLES = 3
# Submissions remembered until their job's wait is known (bounded: a job never seen
# finishing ages out; a cancelled one is forgotten at once).
SUBMISSIONS_MAX = 10_000
# A learned service time under this is taken as this (a queue served "instantly" by a
# handful of samples must not make every queue look free).
MIN_SERVICE_SECONDS = 1.0
# The analytic service time counts as this many jobs like the backend's own when its
# service time is learned (``QueueObservations.service_seconds``).
SERVICE_PRIOR_JOBS = 10


class QueueObservations:
    """What the operator learns of each backend's queue from its own jobs.

    - the waits they took, oldest first: the predictor's history features;
    - the seconds each job AHEAD held the backend: a job that found ``n`` jobs queued when it
      was submitted and waited ``w`` says it waited ``w`` for ``n``. Over the backend's
      recent jobs, the waits summed over the jobs ahead summed is its live service time,
      which the predictor multiplies by the queue length for the median wait. Without it
      the queue length only sets a floor, at one analytic figure (66 s) per job for every
      backend, though real backends serve a job in 40 s or in 5 minutes (the 2023 queue
      trace drains at both rates).

    Why a ratio of sums, and why the analytic figure still counts: a job that found one or
    two ahead says little about the rate (a queue emptied at once, or one slow job), and
    the median of ``w / n`` over 20 such jobs followed those lucky few: replaying the week
    of real queues, it once learned 6 s a job for a device that drained at 76 s, and a loop
    moved there waited hours a batch. Weighing each job by the jobs it saw ahead, and the
    analytic figure as ``SERVICE_PRIOR_JOBS`` jobs like them, cut the wait lost by picking
    the queue this predicts shortest from 259 to 191 s on average over that week (issue 14).
    """

    def __init__(
        self,
        window: int = RECENT_WAITS,
        prior_seconds: float = AnalyticConfig.service_seconds_per_job,
    ) -> None:
        self.window = window
        self.prior_seconds = prior_seconds
        self.waits: dict[str, deque[float]] = {}
        self._ahead: dict[str, deque[tuple[float, int]]] = {}  # (wait, jobs ahead)
        self._submitted: OrderedDict[str, int] = OrderedDict()  # job id -> jobs ahead

    def submitted(self, job_id: str, ahead: int) -> None:
        """A job was sent to a backend that showed ``ahead`` jobs queued (a later
        submission of the same id replaces it: a workflow created again by its name)."""
        self._submitted.pop(job_id, None)
        self._submitted[job_id] = max(ahead, 0)
        while len(self._submitted) > SUBMISSIONS_MAX:
            self._submitted.popitem(last=False)

    def forget(self, job_id: str) -> None:
        """The job will not run (cancelled, moved): its wait will teach nothing."""
        self._submitted.pop(job_id, None)

    def note_plan(self, backends: Mapping[str, BackendInfo], actions: Sequence[object]) -> None:
        """What a plan's actions tell: each job it submits, with the jobs ahead of it (the
        backend's queue as the plan saw it, plus the plan's own earlier submissions there:
        they were read before any of them went in); each job it cancels is forgotten."""
        sent: dict[str, int] = {}
        for action in actions:
            if isinstance(action, SubmitJob):
                backend = backends.get(action.backend)
                if backend is not None:
                    earlier = sent.get(action.backend, 0)
                    self.submitted(action.job_id, backend.queue_length + earlier)
                    sent[action.backend] = earlier + 1
            elif isinstance(action, CancelJob):
                self.forget(action.job_id)

    def waited(self, backend: str, wait: float, job_id: str | None = None) -> None:
        """A job of ours on ``backend`` started after ``wait`` seconds in its queue."""
        self.waits.setdefault(backend, deque(maxlen=self.window)).append(wait)
        ahead = self._submitted.pop(job_id, None) if job_id else None
        if ahead:
            seen = self._ahead.setdefault(backend, deque(maxlen=self.window))
            seen.append((max(wait, 0.0), ahead))

    def waited_for(self, st: SubtaskStatus) -> str | None:
        """Remember the queue wait of a succeeded subtask that ran as a job on a backend;
        that backend's name (None: it ran elsewhere, or reported no wait)."""
        placement = st.placement
        if (
            placement is None
            or placement.kind is not ResourceKind.BACKEND
            or st.actual is None
            or st.actual.queueSeconds is None
        ):
            return None
        self.waited(placement.name, st.actual.queueSeconds, st.jobId)
        return placement.name

    def recent_waits(self) -> dict[str, tuple[float, ...]]:
        return {name: tuple(seen) for name, seen in self.waits.items()}

    def service_seconds(self) -> dict[str, float]:
        """Per backend with enough jobs that found others ahead: the seconds a job ahead
        holds it, ``(sum w + k m prior) / (sum n + k m)`` over its recent jobs (each waited
        ``w`` behind ``n`` ahead; ``m``: the mean ``n``, ``k``: ``SERVICE_PRIOR_JOBS``):
        their waits per job ahead, the analytic figure counting as ``k`` more such jobs.
        With 20 jobs the prior keeps a third of the weight: a backend that serves a job in
        5 s is learned at 25 s, one at 300 s at 222 s."""
        out = {}
        for name, seen in self._ahead.items():
            if len(seen) < MIN_SERVICE_SAMPLES:
                continue
            waited = math.fsum(w for w, _ in seen)
            ahead = sum(n for _, n in seen)
            prior_ahead = SERVICE_PRIOR_JOBS * ahead / len(seen)
            rate = (waited + prior_ahead * self.prior_seconds) / (ahead + prior_ahead)
            out[name] = max(rate, MIN_SERVICE_SECONDS)
        return out


class NewSuccesses:
    """The subtasks a plan shows succeeded that this process has not counted yet. Keyed by
    (workflow, subtask, attempt), not by the transition in the plan: the transition may
    have been stored by another writer (a replica that led before, a write whose answer
    was lost), and each process counts each outcome once. At most ``max_entries`` keys are
    remembered, oldest dropped first (None: all)."""

    def __init__(self, max_entries: int | None = None) -> None:
        self.max_entries = max_entries
        self._counted: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    def of(self, namespace: str, name: str, status: HybridWorkflowStatus) -> list[SubtaskStatus]:
        workflow = f"{namespace}/{name}"
        new = []
        for st in status.subtasks:
            if st.phase is not SubtaskPhase.SUCCEEDED:
                continue
            key = (workflow, st.name, st.attempts)
            if key in self._counted:
                continue
            self._counted[key] = None
            if self.max_entries is not None:
                while len(self._counted) > self.max_entries:
                    self._counted.popitem(last=False)
            new.append(st)
        return new


@dataclass(frozen=True)
class WorkflowPredictions:
    by_pair: dict[tuple[str, str], Prediction]
    report: PredictorReport | None
    fallbacks: tuple[OutputUse, ...] = ()  # the outputs the analytic model answered


def predict_workflow(
    predictor: Predictor,
    circuits: CircuitCache,
    spec: HybridWorkflowSpec,
    subtasks: Sequence[tuple[str, int]],
    sources: Mapping[str, str],
    backends: Sequence[BackendInfo],
    live: MetricsView | None,
    waits: Mapping[str, tuple[float, ...]],
    service: Mapping[str, float] | None = None,
    now: datetime | None = None,
) -> WorkflowPredictions:
    """Predictions for ``subtasks`` (name, shots: ``placeable``) on every resource the
    workflow allows; empty (report None) when there is no pair. ``now``: the time the
    features read (None: the clock; the twin passes its simulated one)."""
    inputs = [SubtaskInput(name, circuits.parse(sources[name]), shots) for name, shots in subtasks]
    known = {b.name: b for b in backends}
    allowed = [known[b] for b in spec.resources.quantumBackends if b in known]
    context = PredictionContext.of(
        inputs,
        [
            backend_input(b, live, waits.get(b.name, ()), (service or {}).get(b.name))
            for b in allowed
        ],
        [
            PoolInput.from_pool(
                p, cpu_cores=WORKER_CORES, price_per_hour_usd=pool_price_per_hour(p)
            )
            for p in spec.resources.classicalPools
        ],
        now,
    )
    resources = [b.name for b in allowed] + [p.name for p in spec.resources.classicalPools]
    pairs = [(s.name, r) for s in inputs for r in resources]
    if not pairs:
        return WorkflowPredictions({}, None)
    predictions = predictor.predict(pairs, context)
    report = predictor.last_report
    fallbacks: tuple[str, ...] = ()
    uses: tuple[OutputUse, ...] = ()
    if report is not None:
        uses = tuple(report.fallbacks)
        fallbacks = tuple(f"{u.key}: {u.reason or 'analytic'}" for u in uses)
        if report.error:
            fallbacks += (report.error,)
    return WorkflowPredictions(
        {(p.subtask, p.resource): p for p in predictions},
        PredictorReport(fallbacks=fallbacks, pairs=len(pairs)),
        uses,
    )


def backend_input(
    backend: BackendInfo,
    live: MetricsView | None,
    waits: tuple[float, ...],
    learned_service: float | None = None,
) -> BackendInput:
    """A backend as the predictor sees it: calibration, queue now, the queue waits the
    operator saw its jobs take there (``waits``, oldest first), and the seconds a job holds
    it: learned from those jobs' waits per job ahead (``QueueObservations``) where known,
    else, for a device whose gateway runs every job (fake, aer), the gateway's measured
    median execution; behind IBM's own queue that median counts only our jobs, not the
    others' ahead of them, so an IBM backend has none until it is learned."""
    measured = live.backends.get(backend.name) if live and live.available else None
    if not waits and measured and measured.queue_wait_p50_seconds is not None:
        # Nothing seen by this operator yet (a fresh start): the gateway's own median
        # wait, as one observation.
        waits = (measured.queue_wait_p50_seconds,)
    return BackendInput(
        name=backend.name,
        num_qubits=backend.num_qubits,
        price_per_qpu_second=backend.price_per_qpu_second,
        calibration=CalibrationMedians.from_summary(backend.calibration),
        history=QueueHistory(queue_length=float(backend.queue_length), recent_waits_s=waits),
        healthy=backend.healthy,
        ideal=backend.provider is Provider.AER,
        service_seconds=learned_service
        if learned_service is not None
        else (
            measured.execution_p50_seconds
            if measured and backend.provider is not Provider.IBM
            else None
        ),
    )


def placeable(
    spec: HybridWorkflowSpec,
    status: HybridWorkflowStatus,
    sources: Mapping[str, str],
    *,
    launched: bool = True,
) -> list[tuple[str, int]]:
    """Circuit and variational subtasks (name, shots per batch) that may be placed or moved
    in this cycle (a variational loop also while it runs: its batches move): not started
    (or waiting to retry), or launched but not running (a queued job, an unbound pod: the
    cluster pass weighs moving them), or simulated by a running pod (it may be relaunched);
    their source read, no dependency failed. A dependency still running counts: the plan
    may see it finish and place its dependents at once. ``launched`` False: only what is
    still to be placed (not launched, no running loop or pod), for a decision that never
    looks at launched work again: the twin's static and batch baselines, not the operator
    (its cluster pass weighs launched work, and its ``Predicted`` condition is refreshed
    by every pass that predicts)."""
    phases = {s.name: s.phase for s in status.subtasks}
    waiting: tuple[SubtaskPhase, ...] = (SubtaskPhase.PENDING, SubtaskPhase.RETRYING)
    if launched:
        waiting += (SubtaskPhase.LAUNCHING, SubtaskPhase.SCHEDULED)
    dead = (SubtaskPhase.FAILED, SubtaskPhase.SKIPPED)
    simulating = {
        s.name
        for s in status.subtasks
        if s.phase is SubtaskPhase.RUNNING
        and s.placement is not None
        and s.placement.kind is ResourceKind.POOL
    }
    out = []
    for sub in spec.subtasks:
        if sub.name not in sources:
            continue
        phase = phases.get(sub.name, SubtaskPhase.PENDING)
        if sub.variational is not None:
            # A running loop's next batches may be re-routed: the pass weighs them too.
            if phase in waiting or (launched and phase is SubtaskPhase.RUNNING):
                out.append((sub.name, sub.variational.shots))
            continue
        if sub.circuit is None:
            continue
        if launched and sub.name in simulating and spec.reallocation.enabled:
            # A pod simulating it may be relaunched elsewhere when the gain pays for the
            # progress it loses: the pass needs its predictions on every resource.
            out.append((sub.name, sub.circuit.shots))
            continue
        if phase not in waiting:
            continue
        if not any(phases.get(d) in dead for d in sub.dependsOn):
            out.append((sub.name, sub.circuit.shots))
    return out
