"""The predictor as the operator runs it: models from a mounted directory, hot-reloaded;
one prediction pass per planning cycle over the pairs that may be placed; the outcome of
each prediction that was used, compared and exported as the running prediction error.

The decisions stay in the pure planner: this module only fills the snapshot's
``predictions`` and ``predictor`` and reads the plan's outcomes back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from qorch.api.backend import Provider
from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ResourceKind,
    SubtaskPhase,
    SubtaskStatus,
)
from qorch.metrics import operator_metrics as metrics
from qorch.orchestrator.plan import Plan
from qorch.orchestrator.prediction import Prediction
from qorch.orchestrator.prices import pool_price_per_hour
from qorch.orchestrator.snapshot import (
    BackendInfo,
    MetricsView,
    PredictorReport,
    WorkflowSnapshot,
)
from qorch.predictor import (
    BackendInput,
    CalibrationMedians,
    CircuitCache,
    ModelStore,
    PoolInput,
    PredictionContext,
    Predictor,
    QueueHistory,
    StoreChange,
    SubtaskInput,
)

# Imported here, on the main thread: qiskit's OpenQASM 2 parser (a Rust extension) first
# loaded in a worker thread that later exits crashes the process on a later parse (seen
# with qiskit 2.x); circuits are then parsed in the pass's worker thread.
from qorch.quantum import circuits as _circuits  # noqa: F401

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Worker pods that simulate a circuit request one core (``podspec``).
WORKER_CORES = 1.0
# Queue waits remembered per backend for the history features (the models use the last 20).
RECENT_WAITS = 20
# Outcomes per quantity the running error is computed over.
ERROR_WINDOW = 256
# Outcomes remembered as counted (a finished workflow's daemon stops, so old keys only age).
COUNTED_MAX = 100_000


@dataclass
class _RunningError:
    """The last ``ERROR_WINDOW`` relative errors of one quantity, and interval hits."""

    errors: deque[float] = field(default_factory=lambda: deque(maxlen=ERROR_WINDOW))
    inside: deque[bool] = field(default_factory=lambda: deque(maxlen=ERROR_WINDOW))


class PredictionService:
    """Owns the model store, the predictor and what the operator learned of queues."""

    def __init__(self, models_dir: str | None, *, refresh_seconds: float = 30.0) -> None:
        self.models_dir = models_dir
        self.store = ModelStore(models_dir) if models_dir else None
        self.predictor = Predictor(self.store)
        # Counts only, not the parsed circuits (the exact success estimate that would need
        # them is not computed in the operator): bounded memory for big sources.
        self.circuits = CircuitCache(max_entries=1024, keep_circuits=False)
        self.refresh_seconds = refresh_seconds
        self._next_refresh = 0.0
        # One pass (or model re-scan) at a time: the predictor remembers its previous rows.
        # A threading lock, taken in the worker thread itself, so that a daemon cancelled
        # while its pass runs cannot let a second pass start beside it.
        self._lock = threading.Lock()
        # Queue waits the operator saw its own gateway jobs take, per backend, oldest first:
        # the history window of the queue-wait model (cluster-wide, all workflows).
        self.recent_waits: dict[str, deque[float]] = {}
        self._running: dict[str, _RunningError] = {}
        # Outcomes already counted by this process, oldest first (bounded).
        self._counted: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    # -- models ------------------------------------------------------------------------------
    def refresh_models(self, *, force: bool = False) -> tuple[StoreChange, ...]:
        """Re-scan the model directory at most every ``refresh_seconds`` (a ConfigMap or
        PVC update shows up there); log and count what changed."""
        if self.store is None:
            return ()
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return ()
        self._next_refresh = now + self.refresh_seconds
        changes = self.store.refresh()
        for change in changes:
            level = logging.WARNING if change.kind in ("rejected", "refused") else logging.INFO
            log.log(level, "model %s: %s (%s)", change.kind, change.message, change.path)
            metrics.PREDICTOR_MODEL_CHANGES.labels(
                change.model or "unknown", change.output or "unknown", change.kind
            ).inc()
        if changes:
            state = self.store.state()
            serving = {(m.model, m.output) for m in state.loaded}
            for key in state.missing:
                name, output = key.split("/", 1)
                metrics.PREDICTOR_MODEL_SERVING.labels(name, output).set(0)
            for name, output in serving:
                metrics.PREDICTOR_MODEL_SERVING.labels(name, output).set(1)
        return changes

    async def keep_models_fresh(self) -> None:
        """Re-scan the model directory every ``refresh_seconds``, between passes, until
        cancelled (the operator's cleanup). A failed scan is logged, not fatal."""
        if self.store is None:
            return
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await asyncio.to_thread(self._locked, partial(self.refresh_models, force=True))
            except Exception:
                log.exception("re-scanning the model directory failed; keeping what serves")

    # -- one pass ----------------------------------------------------------------------------
    async def predict(
        self,
        spec: HybridWorkflowSpec,
        status: HybridWorkflowStatus,
        sources: Mapping[str, str],
        backends: Iterable[BackendInfo],
        live: MetricsView | None,
    ) -> tuple[dict[tuple[str, str], Prediction], PredictorReport | None]:
        """Predictions for every circuit subtask that may be placed this cycle on every
        resource it may use; (empty, None) when there is none."""
        subtasks = _placeable(spec, status, sources)
        if not subtasks:
            return {}, None
        # Read here, on the event loop that appends to them, not in the pass's thread.
        waits = {name: tuple(seen) for name, seen in self.recent_waits.items()}
        return await asyncio.to_thread(
            self._locked, self._predict, spec, subtasks, sources, list(backends), live, waits
        )

    def _locked(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self._lock:
            return fn(*args)

    def _predict(
        self,
        spec: HybridWorkflowSpec,
        subtasks: list[tuple[str, int]],
        sources: Mapping[str, str],
        backends: list[BackendInfo],
        live: MetricsView | None,
        waits: Mapping[str, tuple[float, ...]],
    ) -> tuple[dict[tuple[str, str], Prediction], PredictorReport | None]:
        """The pass itself, in a worker thread: parsing (cached) and onnxruntime."""
        inputs = [
            SubtaskInput(name, self.circuits.parse(sources[name]), shots)
            for name, shots in subtasks
        ]
        known = {b.name: b for b in backends}
        allowed = [known[b] for b in spec.resources.quantumBackends if b in known]
        context = PredictionContext.of(
            inputs,
            [backend_input(b, live, waits.get(b.name, ())) for b in allowed],
            [
                PoolInput.from_pool(
                    p, cpu_cores=WORKER_CORES, price_per_hour_usd=pool_price_per_hour(p)
                )
                for p in spec.resources.classicalPools
            ],
        )
        resources = [b.name for b in allowed] + [p.name for p in spec.resources.classicalPools]
        pairs = [(s.name, r) for s in inputs for r in resources]
        if not pairs:
            return {}, None
        predictions = self.predictor.predict(pairs, context)
        report = self.predictor.last_report
        fallbacks: tuple[str, ...] = ()
        if report is not None:
            fallbacks = tuple(f"{u.key}: {u.reason or 'analytic'}" for u in report.fallbacks)
            if report.error:
                fallbacks += (report.error,)
            for use in report.fallbacks:
                metrics.PREDICTOR_FALLBACKS.labels(use.model, use.output).inc()
        return (
            {(p.subtask, p.resource): p for p in predictions},
            PredictorReport(fallbacks=fallbacks, pairs=len(pairs)),
        )

    # -- outcomes ----------------------------------------------------------------------------
    def record_outcomes(self, snapshot: WorkflowSnapshot, decided: Plan) -> None:
        """For each succeeded subtask this process has not yet counted: remember its queue
        wait (history features) and export how far the prediction its placement used was
        off. Keyed by (workflow, subtask, attempt), not by the transition in this plan: the
        transition may have been stored by another writer (a replica that led before, a
        write whose answer was lost), and each process counts each outcome once (its
        metrics start from zero, so a restarted operator counts the running workflows'
        finished subtasks again, into its own fresh counters)."""
        workflow = f"{snapshot.namespace}/{snapshot.name}"
        for st in decided.status.subtasks:
            if st.phase is not SubtaskPhase.SUCCEEDED:
                continue
            key = (workflow, st.name, st.attempts)
            if key in self._counted:
                continue
            self._counted[key] = None
            while len(self._counted) > COUNTED_MAX:
                self._counted.popitem(last=False)
            self._remember_wait(st)
            self._compare(st)

    def _remember_wait(self, st: SubtaskStatus) -> None:
        if (
            st.placement is None
            or st.placement.kind is not ResourceKind.BACKEND
            or st.actual is None
            or st.actual.queueSeconds is None
        ):
            return
        waits = self.recent_waits.setdefault(st.placement.name, deque(maxlen=RECENT_WAITS))
        waits.append(st.actual.queueSeconds)

    def _compare(self, st: SubtaskStatus) -> None:
        predicted, actual = st.predicted, st.actual
        if predicted is None or actual is None or st.placement is None or st.route is not None:
            # A variational loop: its prediction is for its batches (wherever they went),
            # its outcome its optimizer pod's; no error to speak of between the two.
            return
        on_backend = st.placement.kind is ResourceKind.BACKEND
        # A pool's start-up wait is not predicted (0): no error to speak of there.
        pairs = [
            ("qpu_run_seconds" if on_backend else "simulation_seconds",
             predicted.runSeconds, actual.runSeconds),
        ]  # fmt: skip
        if on_backend:
            pairs.append(("queue_seconds", predicted.queueSecondsP50, actual.queueSeconds))
        else:
            memory = _float(actual.peakMemoryBytes)
            pairs.append(("peak_memory_bytes", float(predicted.peakMemoryBytes), memory))
        for quantity, guess, truth in pairs:
            if truth is None or truth <= 0 or not math.isfinite(guess):
                continue
            error = abs(guess - truth) / truth
            metrics.PREDICTION_RELATIVE_ERROR.labels(quantity, predicted.source).observe(error)
            running = self._running.setdefault(quantity, _RunningError())
            running.errors.append(error)
            metrics.PREDICTION_MEDIAN_RELATIVE_ERROR.labels(quantity).set(
                statistics.median(running.errors)
            )
        if on_backend and actual.queueSeconds is not None:
            running = self._running.setdefault("queue_seconds", _RunningError())
            running.inside.append(
                predicted.queueSecondsP10 <= actual.queueSeconds <= predicted.queueSecondsP90
            )
            metrics.PREDICTION_QUEUE_INTERVAL_COVERAGE.set(
                sum(running.inside) / len(running.inside)
            )


def backend_input(
    backend: BackendInfo, live: MetricsView | None, waits: tuple[float, ...]
) -> BackendInput:
    """A backend as the predictor sees it: calibration, queue now, the queue waits the
    operator saw its jobs take there (``waits``, oldest first)."""
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
        service_seconds=measured.execution_p50_seconds if measured else None,
    )


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _placeable(
    spec: HybridWorkflowSpec, status: HybridWorkflowStatus, sources: Mapping[str, str]
) -> list[tuple[str, int]]:
    """Circuit and variational subtasks (name, shots per batch) that may be placed or moved
    in this cycle (a variational loop also while it runs: its batches move): not started
    (or waiting to retry), or launched but not running (a queued job, an unbound pod: the
    cluster pass weighs moving them), or simulated by a running pod (it may be relaunched);
    their source read, no dependency failed. A dependency still running counts: the plan
    may see it finish and place its dependents at once."""
    phases = {s.name: s.phase for s in status.subtasks}
    waiting = (
        SubtaskPhase.PENDING,
        SubtaskPhase.RETRYING,
        SubtaskPhase.LAUNCHING,
        SubtaskPhase.SCHEDULED,
    )
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
            if phase in waiting or phase is SubtaskPhase.RUNNING:
                out.append((sub.name, sub.variational.shots))
            continue
        if sub.circuit is None:
            continue
        if sub.name in simulating and spec.reallocation.enabled:
            # A pod simulating it may be relaunched elsewhere when the gain pays for the
            # progress it loses: the pass needs its predictions on every resource.
            out.append((sub.name, sub.circuit.shots))
            continue
        if phase not in waiting:
            continue
        if not any(phases.get(d) in dead for d in sub.dependsOn):
            out.append((sub.name, sub.circuit.shots))
    return out
