"""The operator's own metrics, all in one place with typed helpers (no label strings at
call sites). Label values are bounded: reasons and action kinds are fixed vocabularies,
resource names come from QuantumBackend objects and pool definitions."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Histogram

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
