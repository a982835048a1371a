"""The operator's own metrics, all in one place with typed helpers (no label strings at
call sites). Label values are bounded: reasons and action kinds are fixed vocabularies,
resource names come from QuantumBackend objects and pool definitions."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
RECONCILE_SECONDS = Histogram(
    "qorch_operator_reconcile_duration_seconds",
    "Time of one planning cycle for one workflow: snapshot, plan, apply.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def decisions(reason: str) -> None:
    DECISIONS.labels(reason=reason).inc()


def placements(resource: str, kind: str) -> None:
    PLACEMENTS.labels(resource=resource, kind=kind).inc()


def action_failures(action: str) -> None:
    ACTION_FAILURES.labels(action=action).inc()
