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
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ResourceKind,
    SubtaskStatus,
)
from qorch.metrics import operator_metrics as metrics
from qorch.orchestrator.plan import Plan
from qorch.orchestrator.prediction import Prediction
from qorch.orchestrator.snapshot import (
    BackendInfo,
    MetricsView,
    PredictorReport,
    WorkflowSnapshot,
)
from qorch.predictor import (
    CircuitCache,
    ModelStore,
    Predictor,
    StoreChange,
)
from qorch.predictor.workflow import (
    NewSuccesses,
    QueueObservations,
    placeable,
    predict_workflow,
)

# Imported here, on the main thread: qiskit's OpenQASM 2 parser (a Rust extension) first
# loaded in a worker thread that later exits crashes the process on a later parse (seen
# with qiskit 2.x); circuits are then parsed in the pass's worker thread.
from qorch.quantum import circuits as _circuits  # noqa: F401

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
        # What the operator saw its own gateway jobs wait, per backend (cluster-wide, all
        # workflows): the queue-wait model's history window and each backend's learned
        # service time.
        self.queues = QueueObservations()
        self._running: dict[str, _RunningError] = {}
        # Outcomes already counted by this process (bounded).
        self._new = NewSuccesses(COUNTED_MAX)

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
        *,
        launched: bool = True,
    ) -> tuple[dict[tuple[str, str], Prediction], PredictorReport | None]:
        """Predictions for every circuit subtask that may be placed this cycle on every
        resource it may use; (empty, None) when there is none. ``launched``: see
        ``placeable``."""
        subtasks = placeable(spec, status, sources, launched=launched)
        if not subtasks:
            return {}, None
        # Read here, on the event loop that appends to them, not in the pass's thread.
        waits = self.queues.recent_waits()
        service = self.queues.service_seconds()
        return await asyncio.to_thread(
            self._locked,
            self._predict,
            spec,
            subtasks,
            sources,
            list(backends),
            live,
            waits,
            service,
        )

    @property
    def recent_waits(self) -> dict[str, deque[float]]:
        return self.queues.waits

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
        service: Mapping[str, float] | None = None,
    ) -> tuple[dict[tuple[str, str], Prediction], PredictorReport | None]:
        """The pass itself, in a worker thread: parsing (cached) and onnxruntime."""
        done = predict_workflow(
            self.predictor, self.circuits, spec, subtasks, sources, backends, live, waits, service
        )
        for use in done.fallbacks:
            metrics.PREDICTOR_FALLBACKS.labels(use.model, use.output).inc()
        return done.by_pair, done.report

    # -- outcomes ----------------------------------------------------------------------------
    def record_outcomes(self, snapshot: WorkflowSnapshot, decided: Plan) -> None:
        """Note the jobs this plan submits with the queue each found; for each succeeded
        subtask this process has not yet counted (``NewSuccesses``), remember its queue
        wait (history features, learned service time) and export how far the prediction
        its placement used was off. Each process counts each outcome once (its metrics
        start from zero, so a restarted operator counts the running workflows' finished
        subtasks again, into its own fresh counters)."""
        self.queues.note_plan(snapshot.backends, decided.actions)
        for st in self._new.of(snapshot.namespace, snapshot.name, decided.status):
            backend = self.queues.waited_for(st)
            learned = self.queues.service_seconds().get(backend) if backend else None
            if backend is not None and learned is not None:
                metrics.BACKEND_LEARNED_SERVICE_SECONDS.labels(backend).set(learned)
            self._compare(st)

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


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)
