"""Training on tiny synthetic data (no ../shared/data needed): ONNX export agrees with the
native model, metadata follows the catalogue contract, quantiles never cross, splits keep
groups apart and respect time, history features never look ahead."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from qorch.predictor import catalogue
from qorch.predictor.training import EVALUATIONS, common, history, qpu_runtime, queue_wait


# ---- synthetic data ---------------------------------------------------------------------------
def runtime_data(n_groups: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    circuits = rng.choice([1, 20, 40], size=n_groups)
    shots = rng.choice([1000, 4000, 8000], size=n_groups)
    qubits = rng.integers(2, 8, size=n_groups) * circuits
    depth = rng.integers(10, 400, size=n_groups) * circuits
    two_q = (depth * rng.uniform(0.2, 1.0, size=n_groups)).astype(int)
    base = np.column_stack([depth, qubits, two_q, shots, circuits]).astype(float)
    repeats = rng.integers(1, 4, size=n_groups)
    x = np.repeat(base, repeats, axis=0)
    seconds = 0.5 + 3e-4 * x[:, 3] * x[:, 4] + 1e-4 * x[:, 2]
    y = seconds * rng.lognormal(0.0, 0.03, size=len(x))
    return x, y, common.group_ids(x)


def queue_data(n: int = 360, seed: int = 0) -> queue_wait.QueueData:
    rng = np.random.default_rng(seed)
    backend = rng.choice(np.array(["ibmq_a", "ibmq_b", "ibmq_c", "ibmq_d"]), size=n)
    submitted = np.sort(rng.uniform(0, 90 * 86400, size=n)) + 1.6e9
    scale = np.where(backend == "ibmq_a", 3000.0, np.where(backend == "ibmq_b", 60.0, 600.0))
    wait = scale * rng.lognormal(0.0, 1.0, size=n)
    hist = history.recent_wait_all(backend, submitted, wait)
    cal = [history.calendar(datetime.fromtimestamp(t, UTC)) for t in submitted]
    x = np.column_stack(
        [
            rng.integers(1, 6, n),  # num_qubits
            rng.integers(1, 50, n),  # depth
            rng.choice([1024, 8192], n),  # shots
            rng.integers(1, 10, n),  # circuits
            rng.choice([5, 27], n),  # backend_qubits
            hist,
            np.array(cal),
        ]
    ).astype(float)
    return queue_wait.QueueData(x, wait, submitted, backend)


# ---- splits -------------------------------------------------------------------------------
def test_group_split_never_shares_a_group() -> None:
    _, _, groups = runtime_data()
    for seed in range(5):
        tr, te = common.group_shuffle_split(groups, test_fraction=0.2, seed=seed)
        assert len(tr) + len(te) == len(groups)
        assert not set(groups[tr]) & set(groups[te])
        held = len(set(groups[te])) / len(set(groups))
        assert 0.15 < held < 0.25
    seen: set[int] = set()
    for tr, val in common.group_kfold(groups, folds=3, seed=1):
        assert not set(groups[tr]) & set(groups[val])
        assert not seen & set(val.tolist())
        seen |= set(val.tolist())
    assert seen == set(range(len(groups)))


def test_equal_feature_vectors_share_a_group() -> None:
    x = np.array([[1, 2], [3, 4], [1, 2], [1, 3]], dtype=float)
    g = common.group_ids(x)
    assert g[0] == g[2] and len({g[0], g[1], g[3]}) == 3


def test_time_split_respects_time() -> None:
    data = queue_data()
    cutoff = float(np.median(data.submitted))
    before, after = common.time_split(data.submitted, cutoff)
    assert data.submitted[before].max() < cutoff <= data.submitted[after].min()
    fit, cal = queue_wait._windows(len(before))
    assert data.submitted[before[fit]].max() <= data.submitted[before[cal]].min()


def test_history_features_never_look_ahead() -> None:
    data = queue_data()
    hist = history.recent_wait_all(data.backend, data.submitted, data.wait)
    started = data.submitted + data.wait
    for i in range(0, len(data.wait), 7):
        same = data.backend == data.backend[i]
        expected = history.recent_wait(started[same], data.wait[same], data.submitted[i])
        assert tuple(hist[i]) == pytest.approx(expected)
    # Changing the waits of jobs not started at submission time changes nothing.
    i = len(data.wait) - 1
    pending = started >= data.submitted[i]
    changed = data.wait.copy()
    changed[pending] *= 10
    changed_starts = data.submitted + changed
    assert history.recent_wait(changed_starts, changed, data.submitted[i]) == history.recent_wait(
        started, data.wait, data.submitted[i]
    )
    assert history.recent_wait([], [], 10.0) == (0.0, 0.0, 0.0)
    p50, p90, count = history.recent_wait(list(range(30)), [float(v) for v in range(30)], 25.0)
    assert count == 20 and p50 == np.median(np.arange(5, 25)) and p90 >= p50


# ---- run-time model -------------------------------------------------------------------------
def check_metadata(path: Path, model: str, output: str, features: tuple[str, ...]) -> None:
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[catalogue.META_MODEL] == model
    assert meta[catalogue.META_OUTPUT] == output
    assert json.loads(meta[catalogue.META_FEATURES]) == list(features)
    assert all(f in catalogue.ALL_FEATURES for f in features)
    assert meta[catalogue.META_TARGET] == "log"
    assert meta[catalogue.META_HELDOUT_METRIC]
    float(meta[catalogue.META_HELDOUT_ERROR])
    assert meta[catalogue.META_SPLIT] and meta[catalogue.META_SOURCES]
    datetime.fromisoformat(meta[catalogue.META_TRAINED_AT])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(float)" and inp.shape[1] == len(features)


def test_qpu_runtime_trains_exports_and_onnx_agrees(tmp_path: Path) -> None:
    x, y, groups = runtime_data()
    model = qpu_runtime.train(x, y, groups, quick=True, heldout_error=0.1, split="group test")
    assert model.features == qpu_runtime.FEATURES
    assert max(model.max_onnx_difference(x).values()) < 1e-4
    native = np.exp(model.predict_native(x)["value"])
    assert common.median_relative_error(native, y) < 0.1  # learns the synthetic law
    (path,) = qpu_runtime.export(model, tmp_path)
    assert path.name == "qpu_runtime.onnx"
    check_metadata(path, "qpu_runtime", "value", qpu_runtime.FEATURES)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert float(meta[catalogue.META_HELDOUT_ERROR]) == 0.1


def test_derived_features_match_the_graph() -> None:
    x = np.array([[10, 0, 3, 1000, 0], [7, 5, 2, 4000, 20]], dtype=float)
    d = qpu_runtime.derived(x)
    assert np.all(np.isfinite(d)) and d.shape == (2, 12)
    assert d[1, 5] == 4000 * 20 and d[0, 9] == 3.0  # shots*circuits; 2q/max(qubits, 1)


def test_analytic_baseline_and_noise_floor() -> None:
    x, y, groups = runtime_data()
    pred = qpu_runtime._analytic(x, y, x)
    assert common.median_relative_error(pred, y) < 0.5
    assert 0 < qpu_runtime.repeat_noise_floor(y, groups) < 0.1


# ---- queue-wait model -----------------------------------------------------------------------
@pytest.mark.parametrize("variant", [*queue_wait.VARIANTS, queue_wait.HISTORY_ONLY])
def test_queue_wait_quantiles_never_cross_and_onnx_agrees(
    tmp_path: Path, variant: queue_wait.Variant
) -> None:
    data = queue_data()
    idx = np.arange(240)
    model = queue_wait.train(data, idx, quick=True, variant=variant)
    assert max(model.max_onnx_difference(data.x).values()) < 1e-4
    # Wild inputs too: no history, huge and zero values.
    rng = np.random.default_rng(3)
    wild = np.abs(rng.normal(0, 1, size=(500, len(queue_wait.FEATURES)))) * rng.choice(
        [0.0, 1.0, 1e6], size=(500, len(queue_wait.FEATURES))
    )
    wild[:100, queue_wait.FEATURES.index("recent_wait_count")] = 0
    paths = queue_wait.export(model, tmp_path)
    assert [p.name for p in paths] == [
        "queue_wait_p10.onnx",
        "queue_wait_p50.onnx",
        "queue_wait_p90.onnx",
    ]
    outs = {}
    for path, output in zip(paths, ("p10", "p50", "p90"), strict=True):
        check_metadata(path, "queue_wait", output, queue_wait.FEATURES)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        both = np.vstack([data.x, wild]).astype(np.float32)
        outs[output] = session.run(None, {"input": both})[0].reshape(-1)
    assert np.all(outs["p10"] <= outs["p50"]) and np.all(outs["p50"] <= outs["p90"])
    assert np.all(np.isfinite(outs["p10"])) and np.all(np.isfinite(outs["p90"]))


def test_queue_wait_variant_selection_and_calibration() -> None:
    data = queue_data()
    idx = np.arange(300)
    model = queue_wait.train(data, idx, quick=True)
    names = {v.name for v in (*queue_wait.VARIANTS, queue_wait.HISTORY_ONLY)}
    assert model.details["variant"] in names
    assert set(model.details["inner_scores"]) == names
    q = model.predict_native(data.x[300:])
    log_wait = np.log(np.maximum(data.wait[300:], queue_wait.MIN_WAIT_S))
    coverage = np.mean((log_wait >= q["p10"]) & (log_wait <= q["p90"]))
    assert coverage > 0.5  # calibrated on a stationary synthetic stream
    assert queue_wait.interval_score(q["p10"], q["p90"], log_wait) > 0


def test_trained_model_refuses_features_outside_the_catalogue() -> None:
    x, y, groups = runtime_data(n_groups=30)
    model = qpu_runtime.train(x, y, groups, quick=True)
    with pytest.raises(ValueError, match="not in the catalogue"):
        type(model)(**{**model.__dict__, "features": ("depth_sum", "vibes")})


def test_registry_lists_both_models() -> None:
    assert qpu_runtime.evaluate in EVALUATIONS and queue_wait.evaluate in EVALUATIONS
