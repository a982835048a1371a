"""Training on tiny synthetic data (no ../shared/data needed): ONNX export agrees with the
native model, metadata follows the catalogue contract, quantiles never cross, splits keep
groups apart and respect time, history features never look ahead. Then the files shipped in
models/, and (skipped where ../shared/data is absent) a quick run on the real traces."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from qorch import traces
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


def test_physical_term_recovers_its_coefficients() -> None:
    rng = np.random.default_rng(1)
    n = 400
    x = np.column_stack(
        [
            rng.integers(10, 5000, n),  # depth_sum
            rng.integers(2, 100, n),  # qubits_sum
            rng.integers(0, 3000, n),  # two_qubit_gates
            rng.choice([1000, 4000, 8000, 20000], n),  # shots
            rng.choice([1, 20, 60, 100], n),  # circuits
        ]
    ).astype(float)
    truth = np.array([2.5, 3e-4, 0.03, 2e-7])
    seconds = qpu_runtime.physical_terms(x) @ truth
    y = seconds * rng.lognormal(0.0, 0.02, size=n)
    fitted = qpu_runtime.fit_physical(x, y)
    assert np.all(fitted >= 0)
    assert fitted == pytest.approx(truth, rel=0.15)
    log_fit = qpu_runtime.physical_log(x, fitted)
    assert np.median(np.abs(log_fit - np.log(y))) < 0.03
    # No circuits at all still gives a finite, positive time (max(circuits, 1), floor).
    edge = np.array([[0.0, 0.0, 0.0, 0.0, 0.0]])
    assert np.isfinite(qpu_runtime.physical_log(edge, np.zeros(4))).all()


def test_qpu_runtime_graph_holds_the_physical_term_and_every_tree_stage() -> None:
    x, y, groups = runtime_data()
    model = qpu_runtime.train(x, y, groups, quick=True)
    config = qpu_runtime.CONFIGS[model.details["config"]]
    assert config.physical and len(config.stages) == 2
    assert model.details["physical"] is not None and len(model.details["physical"]) == 4
    proto = model.onnx_model("value")
    ensembles = [n for n in proto.graph.node if n.op_type == "TreeEnsembleRegressor"]
    assert len(ensembles) == len(config.stages)
    for node in ensembles:  # compacted: no per-node hit rates
        assert "nodes_hitrates" not in {a.name for a in node.attribute}
    # Jobs far outside the training range stay finite and positive in seconds.
    wild = np.array([[1e6, 1e4, 1e6, 1e5, 1e4], [0, 0, 0, 0, 0], [1, 1, 0, 1, 1]], dtype=float)
    out = common.run_onnx(proto, wild)
    assert np.all(np.isfinite(out)) and out == pytest.approx(
        model.predict_native(wild)["value"], abs=1e-4
    )


def test_analytic_baseline_and_noise_floor() -> None:
    x, y, groups = runtime_data()
    pred = qpu_runtime._analytic(x, y, x)
    assert common.median_relative_error(pred, y) < 0.5
    assert 0 < qpu_runtime.repeat_noise_floor(y, groups) < 0.1


# ---- queue-wait model -----------------------------------------------------------------------
@pytest.mark.parametrize("variant", queue_wait.ALL_VARIANTS)
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


def test_queue_wait_shipped_model_inner_scores_and_calibration() -> None:
    data = queue_data()
    idx = np.arange(300)
    model = queue_wait.train(data, idx, quick=True)
    assert model.details["variant"] == queue_wait.SHIPPED.name
    assert not queue_wait.SHIPPED.trees  # the shipped model is the tree-free one
    scores = queue_wait.inner_scores(data, idx, quick=True)
    assert set(scores) == {v.name for v in queue_wait.ALL_VARIANTS}
    assert all(np.isfinite(v) and v > 0 for v in scores.values())
    q = model.predict_native(data.x[300:])
    log_wait = np.log(np.maximum(data.wait[300:], queue_wait.MIN_WAIT_S))
    coverage = np.mean((log_wait >= q["p10"]) & (log_wait <= q["p90"]))
    assert coverage > 0.5  # calibrated on a stationary synthetic stream
    assert queue_wait.interval_score(q["p10"], q["p90"], log_wait) > 0
    # The shipped graph is arithmetic only: a few kilobytes, no tree ensemble.
    for output in ("p10", "p50", "p90"):
        proto = model.onnx_model(output)
        assert len(proto.SerializeToString()) < 8192
        assert not any(n.domain == "ai.onnx.ml" for n in proto.graph.node)


def test_queue_wait_no_history_prior_weights_backends_equally() -> None:
    # One busy backend with long waits and two quiet ones: the prior is the quiet ones'.
    backend = np.array(["busy"] * 98 + ["quiet_a", "quiet_b"])
    wait = np.array([10_000.0] * 98 + [10.0, 30.0])
    lo, mid, hi = queue_wait.no_history_prior(wait, backend)
    assert lo <= mid <= hi
    assert np.exp(mid) == pytest.approx(30.0, rel=0.01)  # the middle of the three backends
    assert np.exp(hi) == pytest.approx(10_000.0)
    assert queue_wait.weighted_quantiles(
        np.arange(5.0), np.ones(5), (0.1, 0.5, 0.9)
    ) == pytest.approx((0.0, 2.0, 4.0))


def test_queue_wait_serves_the_prior_without_history() -> None:
    data = queue_data()
    idx = np.arange(300)
    model = queue_wait.train(data, idx, quick=True)
    prior = model.details["prior"]
    expected = queue_wait.no_history_prior(data.wait[idx], data.backend[idx])
    assert prior == pytest.approx(expected)
    x = np.array(data.x[:4])
    x[:, queue_wait.FEATURES.index("recent_wait_count")] = 0
    x[:, queue_wait.FEATURES.index("recent_wait_p50_s")] = 0
    x[:, queue_wait.FEATURES.index("recent_wait_p90_s")] = 0
    outs = {o: common.run_onnx(model.onnx_model(o), x) for o in ("p10", "p50", "p90")}
    for value, output in zip(prior, ("p10", "p50", "p90"), strict=True):
        assert outs[output] == pytest.approx(np.full(4, value), abs=1e-5)
    # With history the interval is the conformal one around log(recent p50).
    x[:, queue_wait.FEATURES.index("recent_wait_count")] = 5
    x[:, queue_wait.FEATURES.index("recent_wait_p50_s")] = 100.0
    p10, p50, p90 = (common.run_onnx(model.onnx_model(o), x) for o in ("p10", "p50", "p90"))
    assert p50 == pytest.approx(np.full(4, np.log(100.0)), abs=1e-5)
    assert p10 == pytest.approx(p50 - max(model.details["k_lo"], 0.0), abs=1e-5)
    assert p90 == pytest.approx(p50 + max(model.details["k_hi"], 0.0), abs=1e-5)


def test_trained_model_refuses_features_outside_the_catalogue() -> None:
    x, y, groups = runtime_data(n_groups=30)
    model = qpu_runtime.train(x, y, groups, quick=True)
    with pytest.raises(ValueError, match="not in the catalogue"):
        type(model)(**{**model.__dict__, "features": ("depth_sum", "vibes")})


def test_registry_lists_both_models() -> None:
    assert qpu_runtime.evaluate in EVALUATIONS and queue_wait.evaluate in EVALUATIONS


# ---- the shipped files in models/ (no traces needed) ------------------------------------------
MODELS = common.models_dir()


def test_shipped_queue_wait_files_serve_the_prior_and_never_cross() -> None:
    paths = [MODELS / f"queue_wait_{o}.onnx" for o in ("p10", "p50", "p90")]
    if not all(p.exists() for p in paths):
        pytest.skip("queue_wait files not in models/")
    rng = np.random.default_rng(5)
    wild = np.abs(rng.normal(0, 1, size=(400, len(queue_wait.FEATURES)))) * rng.choice(
        [0.0, 1.0, 1e6], size=(400, len(queue_wait.FEATURES))
    )
    count = queue_wait.FEATURES.index("recent_wait_count")
    wild[:100, count] = 0
    outs = []
    for path in paths:
        assert path.stat().st_size < 16 * 1024  # arithmetic only: fits any ConfigMap
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {"input": wild.astype(np.float32)})[0].reshape(-1))
    p10, p50, p90 = outs
    assert np.all(np.isfinite(p10)) and np.all(p10 <= p50) and np.all(p50 <= p90)
    # Without history every job gets the same prior; with history P50 = log(recent p50).
    assert np.ptp(p10[:100]) == 0 and np.ptp(p50[:100]) == 0 and np.ptp(p90[:100]) == 0
    assert p10[0] < p50[0] < p90[0]
    known = wild[:, count] > 0.5
    recent = np.maximum(wild[known, queue_wait.FEATURES.index("recent_wait_p50_s")], 0.1)
    assert p50[known] == pytest.approx(np.log(recent.astype(np.float32)), abs=1e-4)


def test_shipped_qpu_runtime_file_is_small_and_sane() -> None:
    path = MODELS / "qpu_runtime.onnx"
    if not path.exists():
        pytest.skip("qpu_runtime.onnx not in models/")
    assert path.stat().st_size < 512 * 1024
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # More shots or more circuits of the same circuit never make a job much faster.
    base = np.array([[200, 7, 40, 1000, 1]], dtype=np.float32)
    jobs = np.repeat(base, 4, axis=0)
    jobs[:, 3] = [1000, 4000, 8000, 20000]
    seconds = np.exp(session.run(None, {"input": jobs})[0].reshape(-1))
    assert np.all(np.isfinite(seconds)) and np.all(seconds > 0)
    assert seconds[-1] > seconds[0]


# ---- the real traces (skipped where ../shared/data is absent) ---------------------------------
REAL = traces.default_traces_dir()
needs_real = pytest.mark.skipif(not (REAL / "README.md").exists(), reason=f"no traces at {REAL}")


@needs_real
def test_quick_evaluations_on_the_real_traces(tmp_path: Path) -> None:
    rows = qpu_runtime.evaluate(REAL, True, tmp_path) + queue_wait.evaluate(REAL, True, tmp_path)
    by_metric = {(r["model"], r["metric"]): r for r in rows}
    runtime = by_metric["qpu_runtime", "median relative error"]
    assert 0 < runtime["value"] < 0.15
    coverage = by_metric["queue_wait", "P10-P90 coverage"]
    assert 0.5 < coverage["value"] <= 1.0
    assert queue_wait.SHIPPED.name in coverage["method"]
    assert "gbdt+history, tree offsets" in coverage["baselines"]
    names = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert names == [
        "qpu_runtime.onnx",
        "queue_wait_p10.onnx",
        "queue_wait_p50.onnx",
        "queue_wait_p90.onnx",
    ]
