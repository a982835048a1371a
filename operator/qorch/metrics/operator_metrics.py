"""The operator's own metrics, all in one place with typed helpers (no label strings at
call sites). Label values are bounded: reasons and action kinds are fixed vocabularies,
resource names come from QuantumBackend objects and pool definitions."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from qorch.metrics.exporters import LATENCY_BUCKETS

DECISIONS = Counter(
    "qorch_operator_decisions_total",
    "Decisions the operator took, by reason (Placed, Started, AttemptFailed, ...).",
    ["reason"],
)
PLACEMENTS = Counter(
    "qorch_operator_placements_total",
    "Subtask attempts placed, by resource and resource kind (pool or backend).",
    ["resource", "kind"],
)
ACTION_FAILURES = Counter(
    "qorch_operator_action_failures_total",
    "API or gateway writes that failed and will be retried, by action.",
    ["action"],
)
STATUS_CONFLICTS = Counter(
    "qorch_operator_status_conflicts_total",
    "Status writes refused because the workflow changed since it was read (then re-planned).",
)
RECONCILE_SECONDS = Histogram(
    "qorch_operator_reconcile_duration_seconds",
    "Time of one planning cycle for one workflow: snapshot, plan, apply.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


CLUSTER_PASS_SECONDS = Histogram(
    "qorch_operator_cluster_pass_duration_seconds",
    "Time of one cluster-wide decision pass over every workflow this operator drives.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# The predictor (``operator/predictions.py``): which models serve, when it falls back, and
# how far the predictions the placements used were from what happened.
PREDICTOR_MODEL_SERVING = Gauge(
    "qorch_predictor_model_serving",
    "1 while a validated model serves this output; 0 while the analytic fallback answers.",
    ["model", "output"],
)
PREDICTOR_MODEL_CHANGES = Counter(
    "qorch_predictor_model_changes_total",
    "Model files loaded, replaced, refused (worse held-out error), rejected or removed.",
    ["model", "output", "change"],
)
PREDICTOR_FALLBACKS = Counter(
    "qorch_predictor_fallbacks_total",
    "Prediction passes in which this model output was answered by the analytic model.",
    ["model", "output"],
)
PREDICTION_RELATIVE_ERROR = Histogram(
    "qorch_prediction_relative_error",
    "|predicted - actual| / actual of each prediction a placement used, once the subtask "
    "succeeded, by quantity and by where the prediction came from (model or analytic).",
    ["quantity", "source"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0),
)
PREDICTION_MEDIAN_RELATIVE_ERROR = Gauge(
    "qorch_prediction_median_relative_error",
    "Median relative error over the last 256 outcomes of each quantity (running error).",
    ["quantity"],
)
BACKEND_LEARNED_SERVICE_SECONDS = Gauge(
    "qorch_backend_learned_service_seconds",
    "Seconds each job ahead holds the backend, learned from the operator's own jobs (their "
    "waits over the jobs they found ahead, summed, the analytic 66 s counting as ten more "
    "jobs); the predicted median queue wait is the live queue length times it.",
    ["quantum_backend"],
)
PREDICTION_QUEUE_INTERVAL_COVERAGE = Gauge(
    "qorch_prediction_queue_interval_coverage",
    "Share of the last 256 gateway jobs whose queue wait fell inside the predicted P10-P90.",
)

# From the ``usage`` a worker pod reports in its result: short pods end before any
# scrape, so the operator records what each one took. ``kind`` is circuit or classical.
SUBTASK_EXECUTION_SECONDS = Histogram(
    "qorch_subtask_execution_seconds",
    "Wall time of one subtask pod's worker, by pool and kind (circuit or classical).",
    ["pool", "kind"],
    buckets=LATENCY_BUCKETS,
)
SUBTASK_CPU_SECONDS = Histogram(
    "qorch_subtask_cpu_seconds",
    "CPU time one subtask pod's worker used, by pool and kind.",
    ["pool", "kind"],
    buckets=LATENCY_BUCKETS,
)
SUBTASK_PEAK_MEMORY_BYTES = Histogram(
    "qorch_subtask_peak_memory_bytes",
    "Peak resident memory of one subtask pod's worker, by pool and kind.",
    ["pool", "kind"],
    buckets=tuple(float(1 << k) for k in range(26, 38)),  # 64 MiB .. 128 GiB
)
_USAGE = (
    ("wallSeconds", SUBTASK_EXECUTION_SECONDS),
    ("cpuSeconds", SUBTASK_CPU_SECONDS),
    ("peakMemoryBytes", SUBTASK_PEAK_MEMORY_BYTES),
)


def record_worker_usage(pool: str, kind: str, usage: Mapping[str, Any]) -> None:
    """Observe one finished pod's ``usage`` (``PodState.usage``); values that are missing
    or not plain non-negative numbers are skipped, never raised on."""
    for key, histogram in _USAGE:
        value = usage.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value) and value >= 0:
            histogram.labels(pool=pool, kind=kind).observe(float(value))


def decisions(reason: str) -> None:
    DECISIONS.labels(reason=reason).inc()


def placements(resource: str, kind: str) -> None:
    PLACEMENTS.labels(resource=resource, kind=kind).inc()


def action_failures(action: str) -> None:
    ACTION_FAILURES.labels(action=action).inc()
