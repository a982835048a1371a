"""Predicted and actual outcomes of an attempt, as the subtask status records them.

The prediction the placement used is stored when the attempt starts; what the attempt
took when it succeeds. Side by side in the status they make every prediction's error
visible per subtask, and the operator turns them into its running-error metrics.
"""

from __future__ import annotations

import math
from typing import Any

from qorch.api.workflow import ActualOutcome, ClassicalPool, PredictedOutcome
from qorch.orchestrator.prediction import Prediction
from qorch.orchestrator.prices import pod_usd
from qorch.orchestrator.snapshot import JobState, PodState
from qorch.orchestrator.text import bounded

NOTE_LIMIT = 256
MAX_NOTES = 5


def predicted_outcome(prediction: Prediction | None) -> PredictedOutcome | None:
    """The status record of a prediction; None for none or an infeasible one."""
    if prediction is None or not prediction.feasible:
        return None
    figures = (
        prediction.queue_seconds_p10,
        prediction.queue_seconds_p50,
        prediction.queue_seconds_p90,
        prediction.run_seconds,
        prediction.usd,
    )
    if not all(math.isfinite(f) for f in figures):
        return None
    return PredictedOutcome(
        source=prediction.source,
        queueSecondsP10=_round(prediction.queue_seconds_p10),
        queueSecondsP50=_round(prediction.queue_seconds_p50),
        queueSecondsP90=_round(prediction.queue_seconds_p90),
        runSeconds=_round(prediction.run_seconds),
        fidelity=round(min(max(prediction.fidelity, 0.0), 1.0), 6),
        costUSD=_round(prediction.usd),
        peakMemoryBytes=max(int(prediction.peak_memory_bytes), 0),
        notes=[bounded(n, NOTE_LIMIT) for n in prediction.notes[:MAX_NOTES]],
    )


def job_outcome(job: JobState, price_per_qpu_second: float) -> ActualOutcome:
    """What a gateway job took: the gateway's queue and execution times; the QPU seconds
    the provider billed where there are any (IBM), which is what ``runSeconds`` predicts."""
    run = job.qpu_seconds if job.qpu_seconds > 0 else job.execution_seconds
    return ActualOutcome(
        queueSeconds=_maybe(job.queue_seconds),
        runSeconds=_maybe(run),
        costUSD=_round(job.qpu_seconds * price_per_qpu_second),
    )


def pod_outcome(
    pod: PodState | None, pool: ClassicalPool | None, elapsed_seconds: float | None
) -> ActualOutcome:
    """What a worker pod took, from the usage it reported: its wall time (``runSeconds``)
    and peak memory; the wait before it is the rest of the time since launch (scheduling,
    image pull, start-up). Cost: wall time at the pool's price per pod hour."""
    usage: dict[str, Any] = dict(pod.usage or {}) if pod is not None else {}
    wall = _number(usage.get("wallSeconds"))
    peak = _number(usage.get("peakMemoryBytes"))
    queue = None
    if wall is not None and elapsed_seconds is not None:
        queue = max(elapsed_seconds - wall, 0.0)
    cost = None
    if wall is not None and pool is not None:
        cost = pod_usd(pool, wall)
    return ActualOutcome(
        queueSeconds=_maybe(queue),
        runSeconds=_maybe(wall),
        costUSD=_maybe(cost),
        peakMemoryBytes=None if peak is None else int(peak),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def _maybe(value: float | None) -> float | None:
    return None if value is None else _round(value)


def _round(value: float) -> float:
    return round(max(float(value), 0.0), 6)
