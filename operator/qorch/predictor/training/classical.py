"""Classical simulation models: seconds and peak bytes of an Aer simulation on a pool,
learnt from our own measurements (``bench/measure_aer.py`` -> ``models/measured/aer_cpu.csv``,
CPU, one thread per run).

``classical_time`` (target "log": the file outputs log seconds) is a non-negative sum of cost
terms per method, fitted for relative error (:class:`CostModel`):

    statevector: t = k0 + k1 gates + k2 gates 2^n + k3 2^n + k4 shots
    MPS:         t = k0 + k1 gates + k2 gates n + k3 shots n

``classical_memory`` (target "log": log bytes) is overhead + 16 * 2^n for statevector and the
overhead alone for MPS, the overhead fitted (:class:`AnalyticMemory`). LightGBM on the
residual (``USE_TREES``) made held-out families worse for both, so the shipped graphs are
these formulas; ``fit_target(..., trees=True)`` still builds the hybrid for comparison.

Split by CIRCUIT FAMILY: every family is held out in turn (leave-one-family-out), the model
trained on the other families only; figures are over all held-out predictions. Baselines:
the fitted gate count x 2^n scaling (time), the same formula (memory), and the nearest
measured run of the other families.

Also here: :func:`circuit_features`, the catalogue's CIRCUIT_FEATURES of a circuit, counted
by serving's ``qorch.predictor.features.circuit_counts`` so both count alike.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np

from qorch.orchestrator.simulation import AMPLITUDE_BYTES, worker_memory_bytes
from qorch.predictor.catalogue import CIRCUIT_FEATURES, CLASSICAL_FEATURES
from qorch.predictor.features import circuit_counts
from qorch.predictor.training.common import (
    INPUT_NAME,
    Graph,
    Row,
    TrainedModel,
    export,
    lightgbm_onnx,
    models_dir,
    row,
)
from qorch.traces import PathLike

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

FEATURES: Final = CIRCUIT_FEATURES + CLASSICAL_FEATURES
MEASURED_CSV: Final = models_dir() / "measured" / "aer_cpu.csv"
SOURCE: Final = (
    "models/measured/aer_cpu.csv: our own qiskit-aer 0.18 runs (bench/measure_aer.py) on a "
    "2-core AMD EPYC, CPU, one thread per run"
)
SPLIT: Final = (
    "circuit family: leave-one-family-out (each family predicted by a model trained on the "
    "other families)"
)

Matrix = np.ndarray[Any, np.dtype[np.float64]]


# ---- circuit features ---------------------------------------------------------------------


def circuit_features(circuit: QuantumCircuit, shots: int) -> dict[str, float]:
    """CIRCUIT_FEATURES of one circuit (a job of one circuit), counted on the LOGICAL circuit
    (before transpiling for any backend) by the same ``circuit_counts`` serving uses:
    flattened to standard one- and two-qubit gates; depth ignores barriers and delays but
    counts measurements."""
    counts = circuit_counts(circuit)
    return {
        "num_qubits": float(counts.num_qubits),
        "depth": float(counts.depth),
        "depth_sum": float(counts.depth),
        "qubits_sum": float(counts.num_qubits),
        "two_qubit_gates": float(counts.two_qubit_gates),
        "one_qubit_gates": float(counts.one_qubit_gates),
        "measurements": float(counts.measurements),
        "shots": float(shots),
        "circuits": 1.0,
    }


# ---- the measured data --------------------------------------------------------------------


@dataclass(frozen=True)
class Measurements:
    families: tuple[str, ...]  # per row
    x: Matrix  # [N, len(FEATURES)]
    log_seconds: Matrix
    log_bytes: Matrix

    def col(self, name: str) -> Matrix:
        return self.x[:, FEATURES.index(name)]

    def subset(self, mask: np.ndarray[Any, np.dtype[np.bool_]]) -> Measurements:
        fams = tuple(f for f, keep in zip(self.families, mask, strict=True) if keep)
        return Measurements(fams, self.x[mask], self.log_seconds[mask], self.log_bytes[mask])


def read_measurements(path: Path = MEASURED_CSV) -> Measurements:
    """The ``ok`` rows of a ``bench/measure_aer.py`` CSV; a malformed row raises ValueError
    naming the file and line."""
    with path.open(encoding="utf-8") as fh:
        numbered = [(i, line) for i, line in enumerate(fh, 1) if not line.startswith("#")]
    if not numbered:
        raise ValueError(f"{path}: empty")
    reader = csv.DictReader(line for _, line in numbered)
    needed = {"family", "status", "seconds", "peak_memory_bytes", *FEATURES}
    missing = needed - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}:{numbered[0][0]}: columns missing: {sorted(missing)}")
    fams: list[str] = []
    xs: list[list[float]] = []
    secs: list[float] = []
    peaks: list[float] = []
    for (lineno, _), raw in zip(numbered[1:], reader, strict=False):
        if raw["status"] != "ok":
            continue
        try:
            xs.append([float(raw[f]) for f in FEATURES])
            seconds, peak = float(raw["seconds"]), float(raw["peak_memory_bytes"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
        if seconds <= 0 or peak <= 0:
            raise ValueError(f"{path}:{lineno}: seconds and peak_memory_bytes must be > 0")
        fams.append(raw["family"])
        secs.append(seconds)
        peaks.append(peak)
    if not xs:
        raise ValueError(f"{path}: no rows with status ok")
    return Measurements(
        tuple(fams), np.asarray(xs), np.log(np.asarray(secs)), np.log(np.asarray(peaks))
    )


def family_folds(families: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """(held-out family, train mask, test mask) for every family: the two masks never share
    a family."""
    arr = np.asarray(families)
    return [(fam, arr != fam, arr == fam) for fam in sorted(set(families))]


# ---- analytic models (fitted) --------------------------------------------------------------


def _gates(m: Measurements) -> Matrix:
    return np.asarray(m.col("one_qubit_gates") + m.col("two_qubit_gates"))


# Cost terms of a run, in seconds per unit: t = sum of k * term over the terms of its
# method, every k >= 0. The scales keep the coefficients near 1 (float32 in ONNX).
_TERMS: Final[dict[str, float]] = {
    "1": 1.0,  # fixed cost: sampler set-up, result
    "gates": 1e-3,  # per gate: parse, transpile, dispatch
    "gates*2^n": 1e-6,  # a statevector gate sweeps 2^n amplitudes
    "2^n": 1e-6,  # statevector initialisation and sampling
    "shots": 1e-6,
    "gates*n": 1e-6,  # an MPS gate at bounded bond dimension
    "shots*n": 1e-6,  # MPS samples shot by shot, qubit by qubit
}
SV, MPS = "statevector", "matrix_product_state"
# The time model's terms, and the analytic baseline's (the gate count x 2^n scaling).
TIME_TERMS: Final = tuple((SV, t) for t in ("1", "gates", "gates*2^n", "2^n", "shots")) + tuple(
    (MPS, t) for t in ("1", "gates", "gates*n", "shots*n")
)
BASELINE_TERMS: Final = ((SV, "1"), (SV, "gates*2^n"), (MPS, "1"), (MPS, "gates*n"))
_MAX_N: Final = 60.0  # 2^n stays finite in float32 (and * 0 for MPS rows, not NaN)


def _term_values(m: Measurements, term: str) -> Matrix:
    n = np.minimum(m.col("num_qubits"), _MAX_N)
    g, shots = _gates(m), m.col("shots")
    raw = {
        "1": np.ones(len(n)),
        "gates": g,
        "gates*2^n": g * 2.0**n,
        "2^n": 2.0**n,
        "shots": shots,
        "gates*n": g * n,
        "shots*n": shots * n,
    }[term]
    return np.asarray(raw * _TERMS[term])


@dataclass(frozen=True)
class CostModel:
    """Seconds as a non-negative sum of cost terms per method, fitted for relative error:
    non-negative least squares on t_pred / t - 1, reweighted towards least absolute
    relative error (a few IRLS rounds: the target is a median relative error)."""

    terms: tuple[tuple[str, str], ...]
    coef: tuple[float, ...]

    IRLS_ROUNDS: ClassVar[int] = 5

    def basis(self, m: Measurements) -> Matrix:
        mps = m.col("method_mps")
        return np.column_stack(
            [_term_values(m, t) * (mps if meth == MPS else 1 - mps) for meth, t in self.terms]
        )

    @classmethod
    def fit(cls, m: Measurements, terms: tuple[tuple[str, str], ...] = TIME_TERMS) -> CostModel:
        from scipy.optimize import nnls  # type: ignore[import-untyped]

        t = np.exp(m.log_seconds)
        design = cls(terms, ()).basis(m) / t[:, None]
        weights = np.ones(len(t))
        coef = np.zeros(len(terms))
        for _ in range(cls.IRLS_ROUNDS + 1):
            coef, _ = nnls(design * weights[:, None], weights)
            weights = 1 / np.sqrt(np.maximum(np.abs(design @ coef - 1), 0.02))
        return cls(terms, tuple(float(c) for c in coef))

    def predict(self, m: Measurements) -> Matrix:
        return np.asarray(np.log(np.maximum(self.basis(m) @ np.asarray(self.coef), 1e-6)))

    def to_graph(self, g: Graph) -> str:
        """log(max(sum of k * term, 1e-6)) as [N, 1]: the same arithmetic as ``predict``."""
        one_q = g.column(FEATURES.index("one_qubit_gates"))
        two_q = g.column(FEATURES.index("two_qubit_gates"))
        shots = g.column(FEATURES.index("shots"))
        mps = g.column(FEATURES.index("method_mps"))
        n = g.op("Min", g.column(FEATURES.index("num_qubits")), g.const([_MAX_N]))
        gates = g.op("Add", one_q, two_q)
        pow2 = g.op("Pow", g.const([2.0]), n)
        raw = {
            "gates": gates,
            "gates*2^n": g.op("Mul", gates, pow2),
            "2^n": pow2,
            "shots": shots,
            "gates*n": g.op("Mul", gates, n),
            "shots*n": g.op("Mul", shots, n),
        }
        weight = {SV: g.op("Sub", g.const([1.0]), mps), MPS: mps}
        total = ""
        for (meth, term), c in zip(self.terms, self.coef, strict=True):
            k = g.const([c * _TERMS[term]])
            part = g.op("Mul", weight[meth], k if term == "1" else g.op("Mul", raw[term], k))
            total = part if not total else g.op("Add", total, part)
        return g.op("Log", g.op("Max", total, g.const([1e-6])))


@dataclass(frozen=True)
class AnalyticMemory:
    """Peak bytes = overhead + 16 * 2^n for statevector, overhead alone for MPS (whose
    state the width does not bound); the overhead is the median of what is left."""

    overhead: float

    @classmethod
    def fit(cls, m: Measurements) -> AnalyticMemory:
        rest = np.exp(m.log_bytes) - _state_bytes(m)
        return cls(float(max(np.median(rest), 1.0)))

    def predict(self, m: Measurements) -> Matrix:
        return np.log(self.overhead + _state_bytes(m))

    def to_graph(self, g: Graph) -> str:
        """log(overhead + 16 * 2^n * (1 - method_mps)) as [N, 1]."""
        n = g.op("Min", g.column(FEATURES.index("num_qubits")), g.const([_MAX_N]))
        sv = g.op("Sub", g.const([1.0]), g.column(FEATURES.index("method_mps")))
        state = g.op("Mul", g.op("Pow", g.const([2.0]), n), g.const([float(AMPLITUDE_BYTES)]))
        return g.op("Log", g.op("Add", g.op("Mul", state, sv), g.const([self.overhead])))


def _state_bytes(m: Measurements) -> Matrix:
    n = np.minimum(m.col("num_qubits"), _MAX_N)
    return np.asarray(np.where(m.col("method_mps") > 0, 0.0, AMPLITUDE_BYTES * 2.0**n))


def product_memory_bytes(m: Measurements) -> Matrix:
    """What the operator sizes a worker pod at today (``simulation.worker_memory_bytes``)."""
    return np.asarray(
        [
            float(worker_memory_bytes(int(n) if mps == 0 else 10**6))
            for n, mps in zip(m.col("num_qubits"), m.col("method_mps"), strict=True)
        ]
    )


# ---- models ----------------------------------------------------------------------------------

LGBM_PARAMS: Final[dict[str, Any]] = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 7,
    "min_child_samples": 5,
    "subsample": 1.0,
    "reg_lambda": 1.0,
    "deterministic": True,
    "num_threads": 1,
    "random_state": 7,
    "verbose": -1,
}


# Trees over the analytic model made held-out families worse (time: 18% vs 14% median
# relative error; memory: 0.9% vs 0.7%), so the shipped models are the analytic ones.
USE_TREES: Final = {"time": False, "memory": False}


@dataclass(frozen=True)
class Fitted:
    analytic: CostModel | AnalyticMemory
    trees: Any  # None: the analytic model alone

    def predict(self, m: Measurements) -> Matrix:
        base = self.analytic.predict(m)
        return base if self.trees is None else np.asarray(base + self.trees.predict(m.x))


def fit_target(m: Measurements, target: str, trees: bool | None = None) -> Fitted:
    """The model of ``target`` ("time" or "memory"); ``trees`` (default ``USE_TREES``):
    LightGBM on the residual over the analytic part."""
    y = m.log_seconds if target == "time" else m.log_bytes
    analytic: CostModel | AnalyticMemory = (
        CostModel.fit(m) if target == "time" else AnalyticMemory.fit(m)
    )
    if not (USE_TREES[target] if trees is None else trees):
        return Fitted(analytic, None)
    import lightgbm as lgb

    residual = y - analytic.predict(m)
    return Fitted(analytic, lgb.LGBMRegressor(**LGBM_PARAMS).fit(m.x, residual))


def nearest_neighbour(train: Measurements, test: Measurements, y_train: Matrix) -> Matrix:
    """The measured value of the closest training run (standardized log features)."""

    def embed(m: Measurements) -> Matrix:
        return np.column_stack(
            [
                m.col("num_qubits"),
                np.log1p(_gates(m)),
                np.log1p(m.col("depth")),
                np.log(np.maximum(m.col("shots"), 1.0)),
                10 * m.col("method_mps"),
            ]
        )

    a, b = embed(train), embed(test)
    scale = a.std(axis=0)
    scale[scale == 0] = 1.0
    dist = (((b[:, None, :] - a[None, :, :]) / scale) ** 2).sum(axis=2)
    return np.asarray(y_train[dist.argmin(axis=1)])


def relative_errors(log_pred: Matrix, log_true: Matrix) -> Matrix:
    return np.asarray(np.abs(np.exp(log_pred - log_true) - 1.0))


@dataclass(frozen=True)
class CrossValidated:
    model: Matrix  # log predictions per row, each from the fold that held its family out
    analytic: Matrix
    nearest: Matrix
    truth: Matrix


def cross_validate(m: Measurements, target: str, trees: bool | None = None) -> CrossValidated:
    """Leave-one-family-out predictions of the model, of the analytic baseline (time: the
    fitted gate count x 2^n scaling; memory: overhead + 16 * 2^n) and of the nearest
    training run."""
    y = m.log_seconds if target == "time" else m.log_bytes
    model = np.zeros(len(y))
    analytic = np.zeros(len(y))
    nearest = np.zeros(len(y))
    for _, train_mask, test_mask in family_folds(m.families):
        train, test = m.subset(train_mask), m.subset(test_mask)
        fitted = fit_target(train, target, trees)
        model[test_mask] = fitted.predict(test)
        baseline = CostModel.fit(train, BASELINE_TERMS) if target == "time" else fitted.analytic
        analytic[test_mask] = baseline.predict(test)
        nearest[test_mask] = nearest_neighbour(train, test, y[train_mask])
    return CrossValidated(model, analytic, nearest, y)


NAMES: Final = {"time": "classical_time", "memory": "classical_memory"}


def trained_model(fitted: Fitted, target: str, heldout_error: float) -> TrainedModel:
    """The catalogue model of ``fitted`` (its ONNX graph computes ``fitted.predict``)."""
    g = Graph(len(FEATURES))
    out = fitted.analytic.to_graph(g)
    if fitted.trees is not None:
        trees = g.trees(lightgbm_onnx(fitted.trees, len(FEATURES)), INPUT_NAME)
        out = g.op("Add", out, trees)
    onx = g.build(out, {})

    def native(x: Matrix) -> dict[str, Matrix]:
        m = Measurements(("?",) * len(x), np.asarray(x, dtype=np.float64), *(np.zeros(len(x)),) * 2)
        return {"value": fitted.predict(m)}

    return TrainedModel(
        name=NAMES[target],
        features=FEATURES,
        target="log",
        heldout_metric="median_relative_error",
        heldout_error=heldout_error,
        split=SPLIT,
        sources=(SOURCE,),
        onnx_outputs={"value": onx},
        predict_native=native,
        details={"trees": fitted.trees is not None},
    )


def evaluate(
    traces_dir: PathLike | None = None, quick: bool = False, export_to: Path | None = None
) -> list[Row]:
    """Rows for the results table, from our measurements (``traces_dir`` is not used: they
    are not traces; ``quick`` changes nothing, the fits take a second). With ``export_to``,
    the models fitted on every family are written there."""
    del traces_dir, quick
    m = read_measurements(MEASURED_CSV)
    rows: list[Row] = []
    for target in ("time", "memory"):
        cv = cross_validate(m, target)
        hybrid = cross_validate(m, target, trees=True)
        error = _median_rel(cv.model, cv.truth)
        final = trained_model(fit_target(m, target), target, error)
        diff = final.max_onnx_difference(m.x)["value"]
        if export_to is not None:
            export(final, export_to)
        method = (
            "cost terms per method, NNLS + IRLS on relative error"
            if target == "time"
            else "overhead + 16*2^n (statevector), overhead (MPS); overhead fitted"
        )
        analytic = "fitted k0 + k1 gates x 2^n (SV), k0 + k1 gates x n (MPS)"
        for subset, keep in (
            ("all runs", np.ones(len(cv.truth), dtype=bool)),
            ("statevector runs", m.col("method_mps") == 0),
            ("matrix_product_state runs", m.col("method_mps") == 1),
        ):
            if not keep.any():
                continue
            baselines = {
                "nearest run of other families": _median_rel(cv.nearest[keep], cv.truth[keep]),
                "model + LightGBM residual": _median_rel(hybrid.model[keep], cv.truth[keep]),
            }
            if target == "time":
                baselines[f"analytic ({analytic})"] = _median_rel(cv.analytic[keep], cv.truth[keep])
            else:
                sized = np.log(product_memory_bytes(m))
                baselines["pod sizing today (worker_memory_bytes)"] = _median_rel(
                    sized[keep], cv.truth[keep]
                )
            rows.append(
                row(
                    NAMES[target],
                    "median relative error",
                    f"{SPLIT}; {subset} ({int(keep.sum())})",
                    _median_rel(cv.model[keep], cv.truth[keep]),
                    method=method,
                    baselines=baselines,
                    goal="<= 0.15" if target == "time" and subset == "all runs" else "",
                    note=(
                        f"CPU, 1 thread, {len(m.families)} runs of {len(set(m.families))} "
                        f"families; ONNX max |diff| {diff:.2g} (log)"
                        if subset == "all runs"
                        else ""
                    ),
                )
            )
    return rows


def _median_rel(log_pred: Matrix, log_true: Matrix) -> float:
    return float(np.median(relative_errors(log_pred, log_true)))
