"""QPU run time of a job: LightGBM on log(seconds) from the job's circuit quantities, trained
on the Qonductor regression set (``ibm-job-runtime/runtime.csv``).

Many rows share one feature vector (the same job repeated), so every split is by feature-vector
group: a row split puts repeats of a test job in training and looks far better than it is.

The exported graph takes the catalogue features below (float32 [N, 5]), derives per-circuit
and per-qubit ratios inside the graph, and outputs log(seconds) (``qorch.target = log``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from qorch.predictor.training.common import (
    FloatArray,
    Graph,
    IntArray,
    Row,
    TrainedModel,
    fit_lightgbm,
    group_ids,
    group_kfold,
    group_shuffle_split,
    lightgbm_onnx,
    mape,
    median_relative_error,
    relative_errors,
    row,
)
from qorch.predictor.training.common import export as _export
from qorch.traces import PathLike, read_runtime_jobs

NAME: Final = "qpu_runtime"
# Input columns, in catalogue order (CIRCUIT_FEATURES).
FEATURES: Final = ("depth_sum", "qubits_sum", "two_qubit_gates", "shots", "circuits")
SOURCES: Final = (
    "ibm-job-runtime/runtime.csv: Qonductor artifact (Giortamis et al., SC'25), "
    "manosgior/Qonductor-SC25 at d85452e, data/regression_dataset.npz, MIT licence",
)
METRIC: Final = "median_relative_error"
TEST_FRACTION: Final = 0.2
SEEDS_FULL: Final = (0, 1, 2, 3, 4)
SEEDS_QUICK: Final = (0, 1)
INNER_FOLDS: Final = 3

_BASE: Final[Mapping[str, Any]] = {
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_child_samples": 2,
    "min_data_in_bin": 1,
}
# Candidates chosen between by inner group k-fold on the training part only.
CONFIGS: Final[Mapping[str, Mapping[str, Any]]] = {
    "l1-200": {**_BASE, "objective": "l1", "n_estimators": 200},
    "l1-31-300": {**_BASE, "objective": "l1", "num_leaves": 31, "n_estimators": 300},
    "l2-denoised-400": {**_BASE, "objective": "l2", "n_estimators": 400, "denoise": True},
}
DEFAULT_CONFIG: Final = "l1-200"
PLAIN_GBDT: Final[Mapping[str, Any]] = {"objective": "l2"}  # LightGBM defaults, raw features


def derived(x: FloatArray) -> FloatArray:
    """The model's inputs: the 5 catalogue columns and 7 ratios, computed in float32 exactly
    as the exported graph does."""
    f = np.asarray(x, dtype=np.float32)
    one = np.float32(1.0)
    depth, qubits, two_q, shots, circuits = (f[:, i] for i in range(5))
    circuits = np.maximum(circuits, one)
    cols = [
        shots * circuits,
        two_q / circuits,
        depth / circuits,
        qubits / circuits,
        two_q / np.maximum(qubits, one),
        depth / np.maximum(qubits, one),
        two_q / np.maximum(depth, one),
    ]
    return np.column_stack([f, *cols]).astype(np.float64)


def _derived_graph(g: Graph) -> str:
    depth, qubits, two_q, shots, circuits = (g.column(i) for i in range(5))
    one = g.const([1.0])
    circuits_1 = g.op("Max", circuits, one)
    qubits_1 = g.op("Max", qubits, one)
    depth_1 = g.op("Max", depth, one)
    cols = [
        g.op("Mul", shots, circuits_1),
        g.op("Div", two_q, circuits_1),
        g.op("Div", depth, circuits_1),
        g.op("Div", qubits, circuits_1),
        g.op("Div", two_q, qubits_1),
        g.op("Div", depth, qubits_1),
        g.op("Div", two_q, depth_1),
    ]
    return g.concat(["input", *cols])


def build_dataset(traces_dir: PathLike | None = None) -> tuple[FloatArray, FloatArray, IntArray]:
    """(X [N, 5] in ``FEATURES`` order, y = seconds, feature-vector group of each row)."""
    path = None if traces_dir is None else Path(traces_dir) / "ibm-job-runtime" / "runtime.csv"
    jobs = read_runtime_jobs(path)
    x = np.array(
        [[j.depth_sum, j.qubits_sum, j.two_qubit_gates, j.shots, j.circuits] for j in jobs],
        dtype=np.float64,
    ).reshape(-1, len(FEATURES))
    y = np.array([j.time_taken_s for j in jobs], dtype=np.float64)
    return x, y, group_ids(x)


def _group_median_log(y: FloatArray, groups: IntArray) -> FloatArray:
    """log(y) replaced by its group's median (denoised target, training only)."""
    log_y = np.log(y)
    out = np.empty_like(log_y)
    for gid in np.unique(groups):
        mask = groups == gid
        out[mask] = np.median(log_y[mask])
    return out


def _fit(x: FloatArray, y: FloatArray, groups: IntArray, config: Mapping[str, Any]) -> Any:
    params = dict(config)
    denoise = bool(params.pop("denoise", False))
    target = _group_median_log(y, groups) if denoise else np.log(y)
    return fit_lightgbm(derived(x), target, params)


def _select_config(
    x: FloatArray, y: FloatArray, groups: IntArray, configs: Sequence[str], seed: int
) -> tuple[str, dict[str, float]]:
    """The candidate with the lowest median relative error in inner group k-fold."""
    if len(configs) == 1:
        return configs[0], {}
    scores: dict[str, float] = {}
    for name in configs:
        errors = []
        for fit_idx, val_idx in group_kfold(groups, folds=INNER_FOLDS, seed=seed):
            model = _fit(x[fit_idx], y[fit_idx], groups[fit_idx], CONFIGS[name])
            predicted = np.exp(model.predict(derived(x[val_idx])))
            errors.append(relative_errors(predicted, y[val_idx]))
        scores[name] = float(np.median(np.concatenate(errors)))
    return min(scores, key=lambda n: scores[n]), scores


def _analytic(x_train: FloatArray, y_train: FloatArray, x: FloatArray) -> FloatArray:
    """``a + b * shots * circuits`` by least squares on seconds (floored at 1 ms)."""
    work = x_train[:, 3] * x_train[:, 4]
    design = np.column_stack([np.ones_like(work), work])
    (a, b), *_ = np.linalg.lstsq(design, y_train, rcond=None)
    return np.asarray(np.maximum(a + b * x[:, 3] * x[:, 4], 1e-3), dtype=np.float64)


def _neighbours(
    x_train: FloatArray, y_train: FloatArray, groups: IntArray, x: FloatArray, k: int = 5
) -> FloatArray:
    """Mean log time of the k nearest training groups (log1p features, standardised)."""
    from sklearn.neighbors import NearestNeighbors

    unique, inverse = np.unique(groups, return_inverse=True)
    centre = np.zeros(len(unique))
    feats = np.zeros((len(unique), x_train.shape[1]))
    log_y = np.log(y_train)
    for i in range(len(unique)):
        mask = inverse == i
        centre[i] = np.median(log_y[mask])
        feats[i] = x_train[mask][0]
    z = np.log1p(feats)
    mean, std = z.mean(axis=0), z.std(axis=0) + 1e-9
    nn = NearestNeighbors(n_neighbors=min(k, len(unique))).fit((z - mean) / std)
    _, idx = nn.kneighbors((np.log1p(x) - mean) / std)
    return np.asarray(np.exp(centre[idx].mean(axis=1)), dtype=np.float64)


def repeat_noise_floor(y: FloatArray, groups: IntArray) -> float:
    """Median relative error of predicting a job by the median of its identical repeats
    (leave one out): no model on these features can do better on average."""
    errors = []
    for gid in np.unique(groups):
        values = y[groups == gid]
        if len(values) < 2:
            continue
        for k in range(len(values)):
            rest = np.delete(values, k)
            errors.append(abs(np.median(rest) - values[k]) / values[k])
    return float(np.median(errors)) if errors else float("nan")


def _to_trained(
    model: Any, config: str, heldout_error: float, split: str, details: Mapping[str, Any]
) -> TrainedModel:
    g = Graph(len(FEATURES))
    out = g.trees(lightgbm_onnx(model, derived(np.zeros((1, 5))).shape[1]), _derived_graph(g))
    graph = g.build(out, {})

    def native(x: FloatArray) -> dict[str, FloatArray]:
        return {"value": np.asarray(model.predict(derived(x)), dtype=np.float64)}

    return TrainedModel(
        name=NAME,
        features=FEATURES,
        target="log",
        heldout_metric=METRIC,
        heldout_error=heldout_error,
        split=split,
        sources=SOURCES,
        onnx_outputs={"value": graph},
        predict_native=native,
        details={"config": config, **details},
    )


def train(
    x: FloatArray,
    y: FloatArray,
    groups: IntArray,
    *,
    quick: bool = False,
    heldout_error: float = float("nan"),
    split: str = "",
) -> TrainedModel:
    """Fit on every row given (config chosen by inner group k-fold unless ``quick``)."""
    configs = (DEFAULT_CONFIG,) if quick else tuple(CONFIGS)
    config, scores = _select_config(x, y, groups, configs, seed=100)
    model = _fit(x, y, groups, CONFIGS[config])
    return _to_trained(model, config, heldout_error, split, {"inner_cv": scores})


def export(model: TrainedModel, directory: Path | str) -> list[Path]:
    return _export(model, directory)


def evaluate(
    traces_dir: PathLike | None = None, quick: bool = False, export_to: Path | None = None
) -> list[Row]:
    """Held-out figures over several group splits (80/20 of feature-vector groups), beside
    the analytic, neighbour and plain-GBDT baselines; trains the final model on all rows and,
    with ``export_to``, writes it there."""
    x, y, groups = build_dataset(traces_dir)
    seeds = SEEDS_QUICK if quick else SEEDS_FULL
    configs = (DEFAULT_CONFIG,) if quick else tuple(CONFIGS)
    per_seed: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        per_seed.setdefault(key, []).append(value)

    chosen = []
    for seed in seeds:
        tr, te = group_shuffle_split(groups, test_fraction=TEST_FRACTION, seed=seed)
        config, _ = _select_config(x[tr], y[tr], groups[tr], configs, seed=seed + 100)
        chosen.append(config)
        model = _fit(x[tr], y[tr], groups[tr], CONFIGS[config])
        predicted = np.exp(model.predict(derived(x[te])))
        plain = fit_lightgbm(x[tr], np.log(y[tr]), PLAIN_GBDT)
        candidates = {
            "gbdt": predicted,
            "analytic": _analytic(x[tr], y[tr], x[te]),
            "neighbours": _neighbours(x[tr], y[tr], groups[tr], x[te]),
            "plain_gbdt": np.exp(plain.predict(x[te])),
        }
        for key, pred in candidates.items():
            add(f"{key}:median", median_relative_error(pred, y[te]))
            add(f"{key}:mape", mape(pred, y[te]))

    def mean(key: str) -> float:
        return float(np.mean(per_seed[key]))

    split = (
        f"group split by feature vector, {int(TEST_FRACTION * 100)}% of groups held out, "
        f"{len(seeds)} seeds (mean)"
    )
    floor = repeat_noise_floor(y, groups)
    gbdt_median = mean("gbdt:median")
    final = train(x, y, groups, quick=quick, heldout_error=gbdt_median, split=split)
    sample = x[np.random.default_rng(0).choice(len(x), size=min(2000, len(x)), replace=False)]
    diff = final.max_onnx_difference(sample)["value"]
    if export_to is not None:
        export(final, export_to)
    method = f"LightGBM log(t), config {final.details['config']}"
    note = (
        f"per seed {[round(v, 4) for v in per_seed['gbdt:median']]}; chosen by inner "
        f"group {INNER_FOLDS}-fold: {sorted(set(chosen))}; ONNX max |diff| {diff:.2g} (log s)"
    )
    return [
        row(
            NAME,
            "median relative error",
            split,
            gbdt_median,
            method=method,
            baselines={
                "analytic a+b*shots*circuits": mean("analytic:median"),
                "neighbours (5 nearest groups)": mean("neighbours:median"),
                "plain GBDT (defaults, raw)": mean("plain_gbdt:median"),
                "repeat-noise floor": floor,
            },
            goal="<= 0.08",
            note=note,
        ),
        row(
            NAME,
            "MAPE",
            split,
            mean("gbdt:mape"),
            method=method,
            baselines={
                "analytic a+b*shots*circuits": mean("analytic:mape"),
                "neighbours (5 nearest groups)": mean("neighbours:mape"),
                "plain GBDT (defaults, raw)": mean("plain_gbdt:mape"),
            },
        ),
    ]
