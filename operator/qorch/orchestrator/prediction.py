"""What the predictor tells the orchestrator about one (subtask, resource) pair.

Pure data: ``qorch.predictor`` fills it (onnxruntime models, or the analytic fallback), the
cost function and the re-allocation pass read it. A decision pass asks for every pair at
once (10,000 and more), so a prediction is a ``NamedTuple``: immutable, typed and cheap to
build in bulk (a frozen dataclass costs several times more per object).
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

ResourceKind = Literal["qpu", "pool"]
QPU: Final = "qpu"
POOL: Final = "pool"

# "model": every figure of the prediction came from a loaded model; "analytic": at least one
# came from the analytic fallback (``notes`` says which and why).
PredictionSource = Literal["model", "analytic"]
MODEL: Final = "model"
ANALYTIC: Final = "analytic"


class Prediction(NamedTuple):
    """Predicted outcome of running ``subtask`` on ``resource``.

    Times are seconds from submission. For a QPU, ``seconds_*`` are the queue wait quantile
    plus the run time; for a pool they are the simulation's run time (a point, so the three
    are equal). The quantiles never cross: ``seconds_p10 <= seconds_p50 <= seconds_p90``.
    An infeasible pair (unknown subtask or resource, circuit wider than the resource) has
    ``feasible`` False, infinite times and cost, fidelity 0, and a note saying why.
    """

    subtask: str
    resource: str
    kind: ResourceKind
    feasible: bool
    seconds_p10: float
    seconds_p50: float
    seconds_p90: float
    queue_seconds_p10: float  # QPU: wait in the backend's queue; pool: 0
    queue_seconds_p50: float
    queue_seconds_p90: float
    run_seconds: float  # QPU execution, or simulation wall time on the pool
    fidelity: float  # expected success probability; 1.0 for an exact simulation
    usd: float  # QPU seconds x price per QPU second, or wall seconds x pool price
    peak_memory_bytes: int  # pool: peak memory of the simulation; QPU: 0
    source: PredictionSource
    notes: tuple[str, ...] = ()


def repeated(p: Prediction, times: int) -> Prediction:
    """``p`` for ``times`` batches run one after another, as a variational loop runs them:
    each batch queues and runs again, so durations, queue waits, run time and USD scale;
    fidelity and peak memory do not. ``times`` under 1 counts as 1."""
    n = max(times, 1)
    if n == 1 or not p.feasible:
        return p
    return p._replace(
        seconds_p10=p.seconds_p10 * n,
        seconds_p50=p.seconds_p50 * n,
        seconds_p90=p.seconds_p90 * n,
        queue_seconds_p10=p.queue_seconds_p10 * n,
        queue_seconds_p50=p.queue_seconds_p50 * n,
        queue_seconds_p90=p.queue_seconds_p90 * n,
        run_seconds=p.run_seconds * n,
        usd=p.usd * n,
        notes=(*p.notes, f"x{n} batches still to run"),
    )
