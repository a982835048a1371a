"""Rank quality (``training/rank.py``) on tiny synthetic data (no ../shared/data needed):
Spearman as scipy defines it, per subtask, the subtasks with too few resources left out,
a random ranking near 0, and both settings on the held-out side of their models' splits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from qorch.predictor.catalogue import BACKEND_FEATURES, CIRCUIT_FEATURES
from qorch.predictor.training import EVALUATIONS, fidelity, history, queue_wait, rank


def test_average_ranks_share_ties() -> None:
    assert rank.average_ranks([10.0, 30.0, 20.0, 30.0]).tolist() == [1.0, 3.5, 2.0, 3.5]
    assert rank.average_ranks([]).tolist() == []


def test_spearman_matches_scipy() -> None:
    from scipy.stats import spearmanr  # type: ignore[import-untyped]

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 6, size=9).astype(float)  # ties on purpose
        b = a + rng.normal(0, 2, size=9)
        assert rank.spearman(b, a) == pytest.approx(spearmanr(b, a).statistic)
    assert rank.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert rank.spearman([3, 2, 1], [10, 20, 30]) == pytest.approx(-1.0)
    assert np.isnan(rank.spearman([1, 1, 1], [1, 2, 3]))  # no ranking predicted
    assert np.isnan(rank.spearman([1.0], [2.0]))
    # Non-finite pairs are left out.
    assert rank.spearman([1, np.nan, 2, 3], [1, 5, 2, 3]) == pytest.approx(1.0)


def test_per_subtask_leaves_out_subtasks_with_too_few_resources() -> None:
    subtasks = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
    predicted = [1, 2, 3, 1, 2, 4, 3, 2, 1]
    actual = [1, 2, 3, 2, 1, 1, 2, 3, 4]
    s = rank.per_subtask(subtasks, predicted, actual)
    assert s.rho.tolist() == pytest.approx([1.0, -1.0])  # "b" has two resources: left out
    assert s.resources.tolist() == [3, 4]
    assert s.mean == pytest.approx(0.0) and s.median == pytest.approx(0.0)
    empty = rank.per_subtask([], [], [])
    assert np.isnan(empty.mean) and np.isnan(empty.median)


def test_a_random_ranking_scores_near_zero() -> None:
    rng = np.random.default_rng(1)
    subtasks = np.repeat(np.arange(30).astype(str), 8)
    mean, median = rank.random_ranking(subtasks, rng.random(len(subtasks)), draws=50)
    assert abs(mean) < 0.05 and abs(median) < 0.1


def fidelity_rows(days: int = 12, circuits: int = 6) -> list[dict[str, Any]]:
    """Days whose two-qubit error drifts; a circuit's success falls with its gates times
    that error, so the days rank alike for every circuit."""
    rng = np.random.default_rng(2)
    rows = []
    for d in range(days):
        e2 = float(rng.uniform(0.005, 0.03))
        for c in range(circuits):
            gates = 5.0 + 4 * c
            success = float(np.exp(-gates * e2 * 1.3))
            row: dict[str, Any] = {f: 1.0 for f in (*CIRCUIT_FEATURES, *BACKEND_FEATURES)}
            row |= {
                "day": f"2023-01-{d + 1:02d}",
                "calibration_sha": f"sha{d}",
                "circuit": f"c{c}",
                "family": f"f{c % 2}",
                "two_qubit_gates": gates,
                "median_two_qubit_error": e2,
                "estimated_success": float(np.exp(-gates * e2)),
                fidelity.LABEL: success,
            }
            rows.append(row)
    return rows


def test_fidelity_setting_ranks_the_held_out_days_per_circuit() -> None:
    rows = fidelity_rows()
    setting = rank.fidelity_setting(rows, fidelity.SPLIT_EVERY_4TH)
    # Every 4th of 12 days is held out: 3 resources (days) per circuit, 6 circuits.
    assert setting.scores.resources.tolist() == [3] * 6
    assert "resources = its held-out calibration days" in setting.split
    # The analytic estimate orders the days exactly as the label does.
    assert setting.baselines["analytic estimated_success"].mean == pytest.approx(1.0)
    assert -1.0 <= setting.scores.mean <= 1.0
    out = rank.setting_rows(setting)
    assert [r["metric"].rsplit(", ", 1)[1] for r in out] == [
        "mean over subtasks",
        "median over subtasks",
    ]
    assert rank.RANDOM in out[0]["baselines"] and out[0]["model"] == "fidelity"


def queue_data(n: int = 900) -> queue_wait.QueueData:
    """Four backends over 60 days around the time split, each with its own wait scale."""
    rng = np.random.default_rng(4)
    names = np.array(["ibmq_a", "ibmq_b", "ibmq_c", "ibmq_d"])
    backend = rng.choice(names, size=n)
    cut = queue_wait.CUTOFF.timestamp()
    submitted = np.sort(rng.uniform(cut - 30 * 86400, cut + 30 * 86400, size=n))
    scale = {"ibmq_a": 3000.0, "ibmq_b": 60.0, "ibmq_c": 600.0, "ibmq_d": 200.0}
    wait = np.array([scale[b] for b in backend]) * rng.lognormal(0.0, 0.5, size=n)
    hist = history.recent_wait_all(backend, submitted, wait)
    cal = [history.calendar(datetime.fromtimestamp(t, UTC)) for t in submitted]
    x = np.column_stack(
        [
            rng.integers(1, 6, n),
            rng.integers(1, 50, n),
            rng.choice([1024, 8192], n),
            rng.integers(1, 10, n),
            rng.choice([5, 27], n),
            hist,
            np.array(cal),
        ]
    ).astype(float)
    return queue_wait.QueueData(x, wait, submitted, backend)


def test_queue_setting_ranks_the_backends_of_each_later_day() -> None:
    setting = rank.queue_setting(queue_data(), quick=True)
    assert len(setting.scores.rho) >= 20  # most later days have 3+ of the 4 backends
    assert setting.scores.resources.min() >= rank.MIN_RESOURCES
    assert "subtask = a job to place on one UTC day" in setting.split
    # Scales 60..3000 s: history and the training medians rank the backends well.
    assert setting.scores.mean > 0.5
    assert setting.baselines["backend's training-period median"].mean > 0.5
    assert abs(setting.random[0]) < 0.15


def test_registered_after_the_models_it_ranks_with() -> None:
    order = list(EVALUATIONS)
    assert order.index(rank.evaluate) > order.index(fidelity.evaluate)
    assert order.index(rank.evaluate) > order.index(queue_wait.evaluate)
