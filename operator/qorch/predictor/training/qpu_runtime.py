"""QPU run time of a job from the job's circuit quantities, trained on the Qonductor
regression set (``ibm-job-runtime/runtime.csv``), in log seconds:

    log t = log(a + b * shots * circuits + c * circuits + d * shots * depth_sum)
            + fine(x) + coarse(x)

The first term is a physical model of an IBM job (a fixed overhead, the shots of every
circuit, a per-circuit overhead, and the gate time of every shot), its four non-negative
coefficients fitted by least absolute log error. ``fine`` is LightGBM boosted on its log
residual with a Huber loss of small delta (log space): each tree moves a leaf by at most
learning_rate * delta, in proportion to how consistently its residuals point one way, so
these trees make bounded, robust corrections to the physical model instead of replacing it.
``coarse`` is a few small L1 trees with large leaves (>= 20 jobs) boosted on what is left:
they move whole populations the physical model misses by far (e.g. jobs IBM reports in
hundredths of a second), which the bounded trees cannot reach.

Many rows share one feature vector (the same job repeated), so every split is by feature-vector
group: a row split puts repeats of a test job in training and looks far better than it is.

The exported graph takes the catalogue features below (float32 [N, 5]), computes the physical
term and the per-circuit and per-qubit ratios inside the graph, and outputs log(seconds)
(``qorch.target = log``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

_FINE: Final[Mapping[str, Any]] = {
    "objective": "huber",
    "alpha": 0.02,  # Huber's delta, log seconds
    "learning_rate": 0.3,
    "n_estimators": 100,
    "num_leaves": 63,
    "min_child_samples": 2,
    "min_data_in_bin": 1,
}
_COARSE: Final[Mapping[str, Any]] = {
    "objective": "l1",
    "learning_rate": 0.3,
    "n_estimators": 20,
    "num_leaves": 7,
    "min_child_samples": 20,
    "min_data_in_bin": 1,
}


@dataclass(frozen=True)
class Config:
    """A physical term (or none) and the tree stages boosted from it, in order."""

    physical: bool
    stages: tuple[Mapping[str, Any], ...]


# Candidates chosen between by inner group k-fold on the training part only (per split, and
# for the final model on all rows). Both fine stages have the same correction budget
# (trees * learning_rate * delta = 0.6 log s); at most 100 trees of 63 leaves keeps the file
# near 400 KB (150 trees scored the same in inner CV but take 620 KB).
CONFIGS: Final[Mapping[str, Config]] = {
    "phys+huber100+l1x20": Config(True, (_FINE, _COARSE)),
    "phys+huber50+l1x20": Config(
        True, ({**_FINE, "alpha": 0.03, "learning_rate": 0.4, "n_estimators": 50}, _COARSE)
    ),
}
DEFAULT_CONFIG: Final = "phys+huber50+l1x20"
# The model shipped before (no physical term, one L1 stage): a baseline row, same splits.
PREVIOUS: Final = Config(
    False,
    (
        {
            "objective": "l1",
            "learning_rate": 0.05,
            "num_leaves": 63,
            "min_child_samples": 2,
            "min_data_in_bin": 1,
            "n_estimators": 200,
        },
    ),
)
PLAIN_GBDT: Final[Mapping[str, Any]] = {"objective": "l2"}  # LightGBM defaults, raw features
PHYSICAL_TERMS: Final = ("1", "shots*circuits", "circuits", "shots*depth_sum")
_PHYSICAL_FLOOR: Final = 1e-3  # seconds, before the log


def physical_terms(x: FloatArray) -> FloatArray:
    """[N, 4] columns of the physical model (``PHYSICAL_TERMS``), float32 as in the graph."""
    f = np.asarray(x, dtype=np.float32)
    depth, shots = f[:, 0], f[:, 3]
    circuits = np.maximum(f[:, 4], np.float32(1.0))
    cols = [np.ones_like(shots), shots * circuits, circuits, shots * depth]
    return np.column_stack(cols).astype(np.float64)


def fit_physical(x: FloatArray, y: FloatArray) -> FloatArray:
    """Non-negative coefficients of ``PHYSICAL_TERMS`` minimising the mean absolute log error
    |log(design @ w) - log y| (median-like and symmetric in ratio; Nelder-Mead over log w,
    started from non-negative least squares on seconds, restarted once)."""
    from scipy.optimize import minimize, nnls  # type: ignore[import-untyped]

    design = physical_terms(x)
    log_y = np.log(np.asarray(y, dtype=np.float64))
    # Columns span ~1 to ~1e9: start every coefficient at least at a small share of the time.
    scale = np.median(np.asarray(y)) / np.maximum(np.median(design, axis=0), 1e-12)
    start, _ = nnls(design, np.asarray(y, dtype=np.float64))
    start = np.maximum(start, 1e-3 * scale)

    def loss(log_w: FloatArray) -> float:
        seconds = np.maximum(design @ np.exp(log_w), _PHYSICAL_FLOOR)
        return float(np.mean(np.abs(np.log(seconds) - log_y)))

    options = {"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000, "maxfev": 4000}
    log_w = np.log(start)
    for _ in range(2):
        log_w = minimize(loss, log_w, method="Nelder-Mead", options=options).x
    return np.asarray(np.exp(log_w), dtype=np.float64)


def physical_log(x: FloatArray, weights: FloatArray) -> FloatArray:
    """log seconds of the physical model, in float32 as the graph computes it."""
    terms = physical_terms(x).astype(np.float32)
    w = np.asarray(weights, dtype=np.float32)
    seconds = w[0] * terms[:, 0]
    for k in range(1, len(w)):  # term by term, in the graph's order
        seconds = seconds + w[k] * terms[:, k]
    logged = np.log(np.maximum(seconds, np.float32(_PHYSICAL_FLOOR)))
    return np.asarray(logged, dtype=np.float64)


@dataclass(frozen=True)
class RuntimeModel:
    """log seconds = physical term (if fitted) + every tree stage on the derived features."""

    physical: FloatArray | None
    stages: tuple[Any, ...]

    def predict(self, x: FloatArray) -> FloatArray:
        d = derived(x)
        out = np.zeros(len(d)) if self.physical is None else physical_log(x, self.physical)
        for stage in self.stages:
            out = out + np.asarray(stage.predict(d), dtype=np.float64)
        return out


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


def _fit(x: FloatArray, y: FloatArray, config: Config) -> RuntimeModel:
    """The physical term on these rows, then each tree stage boosted from the sum so far
    (``init_score``; without a physical term the first stage starts from LightGBM's own)."""
    import lightgbm

    d = derived(x)
    log_y = np.log(y)
    weights = fit_physical(x, y) if config.physical else None
    so_far = None if weights is None else physical_log(x, weights)
    stages = []
    for params in config.stages:
        stage = lightgbm.LGBMRegressor(verbose=-1, n_jobs=1, **params)
        stage.fit(d, log_y, init_score=so_far)
        raw = np.asarray(stage.predict(d), dtype=np.float64)
        so_far = raw if so_far is None else so_far + raw
        stages.append(stage)
    return RuntimeModel(weights, tuple(stages))


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
            model = _fit(x[fit_idx], y[fit_idx], CONFIGS[name])
            predicted = np.exp(model.predict(x[val_idx]))
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


def _compact(converted: Any) -> Any:
    """Drop what onnxruntime does not need from a converted tree ensemble: the optional
    ``nodes_hitrates`` (all 1.0), and ``nodes_missing_value_tracks_true`` when it is all 0
    (its default). Same outputs, about a sixth fewer bytes."""
    for node in converted.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        keep = [
            a
            for a in node.attribute
            if a.name != "nodes_hitrates"
            and not (a.name == "nodes_missing_value_tracks_true" and not any(a.ints))
        ]
        del node.attribute[:]
        node.attribute.extend(keep)
    return converted


def _physical_graph(g: Graph, weights: FloatArray) -> str:
    """log(max(a + b * shots * c + c' * c + d * shots * depth_sum, floor)), c = max(circuits, 1)."""
    depth, shots, circuits = g.column(0), g.column(3), g.column(4)
    circuits_1 = g.op("Max", circuits, g.const([1.0]))
    terms = [g.op("Mul", shots, circuits_1), circuits_1, g.op("Mul", shots, depth)]
    w = [float(v) for v in weights]
    seconds = g.op("Mul", g.op("Mul", depth, g.const([0.0])), g.const([0.0]))  # zeros [N, 1]
    seconds = g.op("Add", seconds, g.const([w[0]]))
    for k, term in enumerate(terms, start=1):
        seconds = g.op("Add", seconds, g.op("Mul", term, g.const([w[k]])))
    return g.op("Log", g.op("Max", seconds, g.const([_PHYSICAL_FLOOR])))


def _to_trained(
    model: RuntimeModel,
    config: str,
    heldout_error: float,
    split: str,
    details: Mapping[str, Any],
) -> TrainedModel:
    g = Graph(len(FEATURES))
    features = _derived_graph(g)
    width = derived(np.zeros((1, 5))).shape[1]
    out = "" if model.physical is None else _physical_graph(g, model.physical)
    for stage in model.stages:  # added in the native order (float32 sums agree)
        trees = g.trees(_compact(lightgbm_onnx(stage, width)), features)
        out = trees if not out else g.op("Add", out, trees)
    graph = g.build(out, {})

    def native(x: FloatArray) -> dict[str, FloatArray]:
        return {"value": model.predict(x)}

    physical = None if model.physical is None else [float(w) for w in model.physical]
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
        details={"config": config, "physical": physical, **details},
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
    model = _fit(x, y, CONFIGS[config])
    return _to_trained(model, config, heldout_error, split, {"inner_cv": scores})


def export(model: TrainedModel, directory: Path | str) -> list[Path]:
    return _export(model, directory)


def evaluate(
    traces_dir: PathLike | None = None, quick: bool = False, export_to: Path | None = None
) -> list[Row]:
    """Held-out figures over several group splits (80/20 of feature-vector groups), beside
    the physical term alone, the previously shipped LightGBM, the analytic, neighbour and
    plain-GBDT baselines; trains the final model on all rows and, with ``export_to``, writes
    it there."""
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
        model = _fit(x[tr], y[tr], CONFIGS[config])
        plain = fit_lightgbm(x[tr], np.log(y[tr]), PLAIN_GBDT)
        physical = fit_physical(x[tr], y[tr])
        candidates = {
            "gbdt": np.exp(model.predict(x[te])),
            "physical": np.exp(physical_log(x[te], physical)),
            "previous": np.exp(_fit(x[tr], y[tr], PREVIOUS).predict(x[te])),
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
    size = len(final.onnx_model("value").SerializeToString())
    if export_to is not None:
        export(final, export_to)
    method = f"physical term + LightGBM corrections, config {final.details['config']}"
    labels = {
        "physical": "physical term alone (4 coefficients)",
        "previous": "previous: LightGBM L1, 63 leaves x 200",
        "analytic": "analytic a+b*shots*circuits",
        "neighbours": "neighbours (5 nearest groups)",
        "plain_gbdt": "plain GBDT (defaults, raw)",
    }
    note = (
        f"per seed {[round(v, 4) for v in per_seed['gbdt:median']]}; previous model per seed "
        f"{[round(v, 4) for v in per_seed['previous:median']]}; chosen by inner group "
        f"{INNER_FOLDS}-fold: {chosen}; physical coefficients (s) "
        f"{[float(f'{w:.3g}') for w in final.details['physical'] or []]} for "
        f"{list(PHYSICAL_TERMS)}; ONNX max |diff| {diff:.2g} (log s), {size / 1024:.0f} KiB"
    )
    return [
        row(
            NAME,
            "median relative error",
            split,
            gbdt_median,
            method=method,
            baselines={
                **{labels[k]: mean(f"{k}:median") for k in labels},
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
            baselines={labels[k]: mean(f"{k}:mape") for k in labels},
        ),
    ]
