"""What one replay of the digital twin records, and the figures it is judged by.

The twin (``qorch.sim.twin``) fills a :class:`TwinResult` per policy; the report
(``qorch.sim.report``) prints one table over several and draws the plots. Times are float
seconds since the start of the replay.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class SpanEnd(StrEnum):
    DONE = "done"  # the attempt finished there
    MOVED = "moved"  # taken away (cancelled while queued, relaunched, re-routed)
    FAILED = "failed"
    OPEN = "open"  # still there when the replay ended


@dataclass(frozen=True)
class Span:
    """One stretch of a subtask on one resource: queued or running there from ``start`` to
    ``end`` (``running_from``: when it started running; None: it never did)."""

    workflow: str
    subtask: str
    resource: str
    kind: str  # "backend" | "pool"
    start: float
    end: float
    running_from: float | None
    outcome: SpanEnd


@dataclass(frozen=True)
class WorkflowOutcome:
    key: str
    shape: str  # what kind of workflow it is (scenario's name: "sampling", "vqe", ...)
    arrived: float
    finished: float | None  # None: not finished when the replay ended
    fidelity: float | None  # mean realised fidelity of its circuits (None: none ran)
    usd: float
    moves: int
    failed: bool = False

    @property
    def completion_seconds(self) -> float | None:
        return None if self.finished is None else self.finished - self.arrived


@dataclass
class TwinResult:
    """One policy's replay."""

    policy: str
    horizon: float  # seconds replayed
    workflows: list[WorkflowOutcome] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    # Per backend: (time, pending jobs seen, others' and Qorch's), sampled as the twin stepped.
    queue_samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    cost_points: list[tuple[float, float]] = field(default_factory=list)  # (t, cumulative USD)
    decision_seconds: list[float] = field(default_factory=list)  # wall time of each pass
    qpu_busy_seconds: float = 0.0  # seconds Qorch's jobs held the devices
    qpu_capacity_seconds: float = 0.0  # devices x the seconds they were up
    gpu_busy_seconds: float = 0.0  # GPU-seconds Qorch's pods held
    gpu_capacity_seconds: float = 0.0  # GPU-seconds the pools had
    wall_seconds: float = 0.0

    def summary(self) -> PolicySummary:
        """The table's row. A workflow still unfinished when the replay ended counts as
        finishing then (a lower bound): leaving work behind never looks fast."""
        done = [
            w.completion_seconds
            if w.completion_seconds is not None
            else max(self.horizon - w.arrived, 0.0)
            for w in self.workflows
            if not w.failed
        ]
        fids = [w.fidelity for w in self.workflows if w.fidelity is not None]
        return PolicySummary(
            policy=self.policy,
            workflows=len(self.workflows),
            finished=sum(1 for w in self.workflows if w.completion_seconds is not None),
            failed=sum(1 for w in self.workflows if w.failed),
            mean_jct=statistics.fmean(done) if done else math.nan,
            p95_jct=_quantile(sorted(done), 0.95) if done else math.nan,
            mean_fidelity=statistics.fmean(fids) if fids else math.nan,
            usd=math.fsum(w.usd for w in self.workflows),
            qpu_utilisation=_ratio(self.qpu_busy_seconds, self.qpu_capacity_seconds),
            gpu_utilisation=_ratio(self.gpu_busy_seconds, self.gpu_capacity_seconds),
            moves=sum(w.moves for w in self.workflows),
            decision_median=statistics.median(self.decision_seconds)
            if self.decision_seconds
            else math.nan,
            decision_p99=_quantile(sorted(self.decision_seconds), 0.99)
            if self.decision_seconds
            else math.nan,
            passes=len(self.decision_seconds),
        )


@dataclass(frozen=True)
class PolicySummary:
    """One row of the replay's table."""

    policy: str
    workflows: int
    finished: int
    failed: int
    mean_jct: float  # seconds, over finished workflows
    p95_jct: float
    mean_fidelity: float
    usd: float
    qpu_utilisation: float  # 0..1
    gpu_utilisation: float  # 0..1
    moves: int
    decision_median: float  # seconds per pass
    decision_p99: float
    passes: int


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear between order statistics (numpy's default)."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (pos - low) * (ordered[high] - ordered[low])
