"""Rank quality: does the predictor order the resources a subtask could run on as their
measured costs order them? Per subtask, the Spearman correlation between predicted and actual
cost across those resources, on HELD-OUT data only; reported as its mean and median over
subtasks, beside baselines ranked the same way on the same subtasks.

Ground truth for one subtask on several resources exists in two places, so there are two
settings, each on the held-out split of the model it ranks with (the model's own split
functions, so a figure here and the model's error figure describe the same rows):

- fidelity: subtask = one benchmark circuit of ``fidelity.py``; resources = the HELD-OUT
  calibration days of ibm_perth, each day's calibration taken as a separate device (one
  topology, different error rates: what choosing between calibrated devices looks like);
  cost = 1 - success probability (the noisy-Aer label). Splits as ``fidelity.evaluate``:
  every 4th day held out, and the time split (last quarter of the days). ~29 resources per
  subtask.
- queue_wait: subtask = a job to place on one UTC day of the later period of
  ``queue_wait``'s time split (trained before 2020-09-01); resources = the backends that ran
  DONE jobs that day (days with at least ``MIN_RESOURCES``); actual cost = the median queue
  wait of that backend's jobs that day, predicted = the median P50 of the model for the same
  jobs (each with its own history features at its submission). 3-6 resources per subtask, so
  one subtask's rho is coarse (with 3 resources it is one of -1, -0.5, 0.5, 1).

Not measurable on our data: qpu_runtime (the run-time trace has no backend column) and the
classical pools (``models/measured/aer_cpu.csv`` has one core count and at most two methods
per circuit: over two resources Spearman is always +-1).

Baselines: the analytic model's ranking where it has one (fidelity: ``estimated_success``;
queue: none, since the job trace carries no queue length), last-value style rankings, and a
random ranking (expected 0; the mean of ``RANDOM_DRAWS`` seeded draws).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from qorch.predictor.training import fidelity, queue_wait
from qorch.predictor.training.common import FloatArray, Row, row
from qorch.traces import PathLike

MIN_RESOURCES: Final = 3  # fewer: Spearman over two values is +-1, over one undefined
RANDOM_DRAWS: Final = 200
RANDOM: Final = f"random ranking (expected 0; mean of {RANDOM_DRAWS} draws)"
METRIC: Final = "rank: Spearman(predicted, actual cost) per subtask across resources"


# ---- Spearman ----------------------------------------------------------------------------


def average_ranks(values: npt.ArrayLike) -> FloatArray:
    """Ranks 1..n, ties sharing the mean of their ranks (scipy's ``rankdata`` default)."""
    v = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    return np.asarray(((ends - counts + 1 + ends) / 2)[inverse.reshape(-1)])


def spearman(predicted: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """Spearman's rho (Pearson of average ranks) over the pairs where both are finite; NaN
    when fewer than two remain or either side is constant (no ranking to compare)."""
    p = np.asarray(predicted, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(a)
    if keep.sum() < 2:
        return float("nan")
    rp, ra = average_ranks(p[keep]), average_ranks(a[keep])
    rp -= rp.mean()
    ra -= ra.mean()
    denom = float(np.sqrt((rp * rp).sum() * (ra * ra).sum()))
    return float((rp * ra).sum() / denom) if denom > 0 else float("nan")


@dataclass(frozen=True)
class RankScores:
    """One rho per subtask (NaN where undefined) and its resources."""

    rho: FloatArray
    resources: npt.NDArray[np.int64]

    @property
    def defined(self) -> FloatArray:
        return np.asarray(self.rho[np.isfinite(self.rho)])

    @property
    def mean(self) -> float:
        d = self.defined
        return float(d.mean()) if len(d) else float("nan")

    @property
    def median(self) -> float:
        d = self.defined
        return float(np.median(d)) if len(d) else float("nan")


def per_subtask(
    subtasks: Sequence[str] | npt.NDArray[Any],
    predicted: npt.ArrayLike,
    actual: npt.ArrayLike,
    min_resources: int = MIN_RESOURCES,
) -> RankScores:
    """Spearman per subtask (rows sharing a subtask label are its resources, one row per
    resource); subtasks with fewer than ``min_resources`` rows are left out."""
    labels = np.asarray(subtasks)
    p = np.asarray(predicted, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    rhos: list[float] = []
    sizes: list[int] = []
    for label in np.unique(labels):
        mine = labels == label
        if mine.sum() < min_resources:
            continue
        rhos.append(spearman(p[mine], a[mine]))
        sizes.append(int(mine.sum()))
    return RankScores(np.asarray(rhos, dtype=np.float64), np.asarray(sizes, dtype=np.int64))


def random_ranking(
    subtasks: Sequence[str] | npt.NDArray[Any],
    actual: npt.ArrayLike,
    draws: int = RANDOM_DRAWS,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, median) over subtasks of a random ranking's rho, each averaged over ``draws``
    seeded draws: the figure a ranking with no information gets on these subtasks."""
    rng = np.random.default_rng(seed)
    a = np.asarray(actual, dtype=np.float64)
    means, medians = [], []
    for _ in range(draws):
        s = per_subtask(subtasks, rng.random(len(a)), a)
        means.append(s.mean)
        medians.append(s.median)
    return float(np.mean(means)), float(np.mean(medians))


# ---- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One ranking setting: the method's scores, the baselines', and what the rows are."""

    model: str
    split: str
    method: str
    scores: RankScores
    baselines: dict[str, RankScores]
    random: tuple[float, float]
    note: str


def fidelity_setting(rows: Sequence[dict[str, Any]], how: str) -> Setting:
    """Rank the held-out days of ``fidelity.split_days(how)`` per circuit. The test rows are
    chosen as ``fidelity.heldout`` chooses them: a held-out day whose calibration file is
    identical to a training day's is not unseen and is left out."""
    train_days, test_days = fidelity.split_days([r["day"] for r in rows], how)
    seen = {r["calibration_sha"] for r in rows if r["day"] in train_days}
    test = [r for r in rows if r["day"] in test_days and r["calibration_sha"] not in seen]
    train = [r for r in rows if r["day"] in train_days]
    x, y = fidelity.matrix(test)
    circuits = np.asarray([r["circuit"] for r in test])
    model = fidelity.FidelityModel.fit(train).predict(x)
    actual = 1.0 - y

    def scores(success: FloatArray) -> RankScores:
        return per_subtask(circuits, 1.0 - success, actual)

    s = scores(model)
    days = len({r["day"] for r in test})
    return Setting(
        model="fidelity",
        split=(
            f"{how}; subtask = circuit ({len(s.rho)}), resources = its held-out calibration "
            f"days of ibm_perth as separate devices ({days}); cost = 1 - success"
        ),
        method="fidelity model (LightGBM on logit residual), trained on the other days",
        scores=s,
        baselines={
            "analytic estimated_success": scores(x[:, fidelity.ESTIMATE_COLUMN]),
            "last value (same circuit, previous day)": scores(fidelity.last_value(rows, test)),
        },
        random=random_ranking(circuits, actual),
        note=_spread(s),
    )


def queue_setting(data: queue_wait.QueueData, quick: bool) -> Setting:
    """Rank the backends of each later-period UTC day by median wait (see the module doc)."""
    cutoff = queue_wait.CUTOFF.timestamp()
    tr = np.flatnonzero(data.submitted < cutoff)
    te = np.flatnonzero(data.submitted >= cutoff)
    model = queue_wait.train(data, tr, quick=quick)
    p50 = np.exp(model.predict_native(data.x[te])["p50"])
    # History only: the backend's recent median wait (the training median without history).
    recent = data.x[te, queue_wait.FEATURES.index("recent_wait_p50_s")]
    count = data.x[te, queue_wait.FEATURES.index("recent_wait_count")]
    overall = float(np.median(data.wait[tr]))
    recent = np.where(count > 0, recent, overall)
    # Static: each backend's training-period median (the overall one for a new backend).
    static = np.full(len(te), overall)
    for backend in np.unique(data.backend[te]):
        seen = data.wait[tr][data.backend[tr] == backend]
        if seen.size:
            static[data.backend[te] == backend] = float(np.median(seen))

    day = np.asarray(
        [datetime.fromtimestamp(t, UTC).date().isoformat() for t in data.submitted[te]]
    )
    cells = [f"{d}|{b}" for d, b in zip(day, data.backend[te], strict=True)]
    keys, inverse = np.unique(np.asarray(cells), return_inverse=True)
    inverse = inverse.reshape(-1)
    subtasks = np.asarray([k.split("|", 1)[0] for k in keys])

    def per_cell(values: FloatArray) -> FloatArray:
        return np.asarray([np.median(values[inverse == i]) for i in range(len(keys))])

    actual = per_cell(data.wait[te])

    def scores(values: FloatArray) -> RankScores:
        return per_subtask(subtasks, per_cell(values), actual)

    s = scores(p50)
    return Setting(
        model="queue_wait",
        split=(
            f"time split at {queue_wait.CUTOFF.date()} (later period); subtask = a job to "
            f"place on one UTC day ({len(s.rho)} days with >= {MIN_RESOURCES} backends), "
            "resources = the backends that ran DONE jobs that day; cost = median wait there"
        ),
        method=f"queue_wait P50 ({model.details.get('variant', 'shipped recipe')}), "
        "median over the backend's jobs that day",
        scores=s,
        baselines={
            "recent median wait of the backend (history only)": scores(recent),
            "backend's training-period median": scores(static),
        },
        random=random_ranking(subtasks, actual),
        note=_spread(s),
    )


def _spread(s: RankScores) -> str:
    if not len(s.rho):
        return "no subtask with enough resources"
    r = s.resources
    undefined = int((~np.isfinite(s.rho)).sum())
    return (
        f"{len(s.rho)} subtasks, resources per subtask min {r.min()} / median "
        f"{float(np.median(r)):g} / max {r.max()}; rho < 0 on {float((s.defined < 0).mean()):.0%}"
        + (f"; {undefined} undefined (ties)" if undefined else "")
    )


def setting_rows(setting: Setting) -> list[Row]:
    """Two rows per setting: the mean and the median of rho over subtasks."""
    out = []
    for i, (stat, get) in enumerate(_STATS):
        baselines = {name: get(b) for name, b in setting.baselines.items()}
        baselines[RANDOM] = setting.random[i]
        out.append(
            row(
                setting.model,
                f"{METRIC}, {stat} over subtasks",
                setting.split,
                get(setting.scores),
                method=setting.method,
                baselines=baselines,
                note=setting.note if i == 0 else "",
            )
        )
    return out


_STATS: Final[tuple[tuple[str, Callable[[RankScores], float]], ...]] = (
    ("mean", lambda s: s.mean),
    ("median", lambda s: s.median),
)


def evaluate(
    traces_dir: PathLike | None = None, quick: bool = False, export_to: Path | None = None
) -> list[Row]:
    """Rank-quality rows: fidelity (every 4th day held out; time split) and queue_wait (time
    split). Writes no model (``export_to`` is not used): the models ranked here are the ones
    the held-out figures of their own evaluations use, refitted on the training side."""
    del export_to
    labels = fidelity._dataset(traces_dir, quick)
    settings = [
        fidelity_setting(labels, fidelity.SPLIT_EVERY_4TH),
        fidelity_setting(labels, fidelity.SPLIT_TIME),
        queue_setting(queue_wait.load(traces_dir), quick),
    ]
    return [r for s in settings for r in setting_rows(s)]
