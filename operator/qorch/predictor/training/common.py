"""What every trained model shares: the ONNX graph it is exported as (one file per output,
float32 input [N, F] in catalogue feature names, metadata per the catalogue contract), the
metrics and the splits. LightGBM, onnxmltools and onnx are imported inside the functions that
need them, so this package imports without the ``train`` extra."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from qorch.predictor import catalogue

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

INPUT_NAME: Final = "input"
OUTPUT_NAME: Final = "output"
ONNX_OPSET: Final = 13
ONNX_ML_OPSET: Final = 1
ONNX_IR_VERSION: Final = 7

# Evaluation rows: every ``evaluate`` returns a list of these (bench/predictor.py prints them).
Row = dict[str, Any]


def row(
    model: str,
    metric: str,
    split: str,
    value: float,
    *,
    method: str,
    baselines: Mapping[str, float] | None = None,
    goal: str = "",
    note: str = "",
) -> Row:
    """One line of the results table: a metric of one method on one split, with the
    baselines measured on the same split beside it."""
    return {
        "model": model,
        "method": method,
        "metric": metric,
        "split": split,
        "value": float(value),
        "baselines": dict(baselines or {}),
        "goal": goal,
        "note": note,
    }


# ---- metrics ------------------------------------------------------------------------------
def relative_errors(predicted: FloatArray, actual: FloatArray) -> FloatArray:
    return np.asarray(np.abs(predicted - actual) / actual, dtype=np.float64)


def median_relative_error(predicted: FloatArray, actual: FloatArray) -> float:
    return float(np.median(relative_errors(predicted, actual)))


def mape(predicted: FloatArray, actual: FloatArray) -> float:
    return float(np.mean(relative_errors(predicted, actual)))


def interval_coverage(low: FloatArray, high: FloatArray, actual: FloatArray) -> float:
    return float(np.mean((actual >= low) & (actual <= high)))


def median_width(low: FloatArray, high: FloatArray) -> float:
    return float(np.median(high - low))


# ---- splits -------------------------------------------------------------------------------
def group_ids(x: npt.NDArray[Any]) -> IntArray:
    """One id per distinct row of ``x`` (rows with equal feature vectors share a group)."""
    _, inverse = np.unique(x, axis=0, return_inverse=True)
    return np.asarray(inverse, dtype=np.int64).reshape(-1)


def group_shuffle_split(
    groups: IntArray, *, test_fraction: float, seed: int
) -> tuple[IntArray, IntArray]:
    """Row indices (train, test): whole groups go to one side; about ``test_fraction`` of
    the groups (not rows) are held out."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_test = max(1, round(len(unique) * test_fraction))
    held = rng.choice(unique, size=n_test, replace=False)
    test_mask = np.isin(groups, held)
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def group_kfold(groups: IntArray, *, folds: int, seed: int) -> Iterator[tuple[IntArray, IntArray]]:
    """Shuffled group k-fold: each group lands in exactly one validation fold."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    for k in range(folds):
        val_mask = np.isin(groups, unique[k::folds])
        yield np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


def time_split(times: FloatArray, cutoff: float) -> tuple[IntArray, IntArray]:
    """Row indices (before, from): rows strictly before ``cutoff`` train, the rest test."""
    before = times < cutoff
    return np.flatnonzero(before), np.flatnonzero(~before)


# ---- LightGBM -> ONNX ---------------------------------------------------------------------
def fit_lightgbm(x: FloatArray, y: FloatArray, params: Mapping[str, Any]) -> Any:
    import lightgbm

    model = lightgbm.LGBMRegressor(verbose=-1, n_jobs=1, **params)
    model.fit(x, y)
    return model


def lightgbm_onnx(model: Any, n_features: int) -> Any:
    """The ONNX graph onnxmltools makes of a LightGBM regressor (input ``input`` [N, F])."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    return onnxmltools.convert_lightgbm(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=ONNX_OPSET,
    )


class Graph:
    """A small builder of the exported graph: catalogue features in, one [N, 1] float32
    out. Arithmetic on columns and embedded tree ensembles, so that derived features and
    quantile offsets live inside the model file and serving feeds catalogue features only."""

    def __init__(self, n_features: int):
        from onnx import TensorProto, helper

        self._helper = helper
        self._tensor = TensorProto
        self.n_features = n_features
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, values: float | Sequence[float], *, dtype: str = "float") -> str:
        name = self._name("c")
        if dtype == "int64":
            array = np.asarray(values, dtype=np.int64)
            kind = self._tensor.INT64
        else:
            array = np.asarray(values, dtype=np.float32)
            kind = self._tensor.FLOAT
        self.initializers.append(
            self._helper.make_tensor(name, kind, list(array.shape), array.reshape(-1).tolist())
        )
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(
            self._helper.make_node(op_type, list(inputs), [out], name=out + "_node", **attrs)
        )
        return out

    def column(self, index: int) -> str:
        """Column ``index`` of the input, shape [N, 1]."""
        return self.op("Gather", INPUT_NAME, self.const([index], dtype="int64"), axis=1)

    def concat(self, columns: Sequence[str]) -> str:
        return self.op("Concat", *columns, axis=1)

    def trees(self, converted: Any, features: str) -> str:
        """Embed the tree ensemble of a converted LightGBM model, fed with ``features``
        ([N, F']); returns its [N, 1] output."""
        prefix = self._name("trees")
        graph = converted.graph
        source_input = graph.input[0].name
        renamed: dict[str, str] = {source_input: features}
        final = graph.output[0].name
        for init in graph.initializer:
            copy = type(init)()
            copy.CopyFrom(init)
            copy.name = renamed.setdefault(init.name, f"{prefix}/{init.name}")
            self.initializers.append(copy)
        for node in graph.node:
            copy = type(node)()
            copy.CopyFrom(node)
            del copy.input[:]
            del copy.output[:]
            copy.input.extend(renamed.setdefault(i, f"{prefix}/{i}") for i in node.input)
            copy.output.extend(renamed.setdefault(o, f"{prefix}/{o}") for o in node.output)
            copy.name = f"{prefix}/{node.name or node.op_type}"
            self.nodes.append(copy)
        return renamed[final]

    def build(self, output: str, metadata: Mapping[str, str]) -> Any:
        helper = self._helper
        self.nodes.append(helper.make_node("Identity", [output], [OUTPUT_NAME], name="output"))
        graph = helper.make_graph(
            self.nodes,
            "qorch",
            [
                helper.make_tensor_value_info(
                    INPUT_NAME, self._tensor.FLOAT, [None, self.n_features]
                )
            ],
            [helper.make_tensor_value_info(OUTPUT_NAME, self._tensor.FLOAT, [None, 1])],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid("", ONNX_OPSET),
                helper.make_opsetid("ai.onnx.ml", ONNX_ML_OPSET),
            ],
            producer_name="qorch.predictor.training",
        )
        model.ir_version = ONNX_IR_VERSION
        helper.set_model_props(model, dict(metadata))
        import onnx

        onnx.checker.check_model(model)
        return model


def run_onnx(model: Any, x: npt.NDArray[Any]) -> FloatArray:
    """Score ``x`` with onnxruntime (one CPU session), as the operator will."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {INPUT_NAME: np.asarray(x, dtype=np.float32)})
    return np.asarray(out, dtype=np.float64).reshape(-1)


# ---- the trained model --------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedModel:
    """A trained model: native prediction (numpy/LightGBM) and one ONNX graph per output
    that computes the same thing from the catalogue features."""

    name: str  # a key of catalogue.MODELS
    features: tuple[str, ...]
    target: str  # "log" | "identity" | "logit"
    heldout_metric: str
    heldout_error: float
    split: str
    sources: tuple[str, ...]
    onnx_outputs: Mapping[str, Any] = field(repr=False)  # output -> onnx.ModelProto
    predict_native: Callable[[FloatArray], dict[str, FloatArray]] = field(repr=False)
    trained_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        outputs = catalogue.MODELS[self.name]
        if set(self.onnx_outputs) != set(outputs):
            raise ValueError(f"{self.name}: outputs {sorted(self.onnx_outputs)} != {outputs}")
        unknown = [f for f in self.features if f not in catalogue.ALL_FEATURES]
        if unknown:
            raise ValueError(f"{self.name}: features not in the catalogue: {unknown}")

    def metadata(self, output: str) -> dict[str, str]:
        return {
            catalogue.META_MODEL: self.name,
            catalogue.META_OUTPUT: output,
            catalogue.META_FEATURES: json.dumps(list(self.features)),
            catalogue.META_TARGET: self.target,
            catalogue.META_HELDOUT_METRIC: self.heldout_metric,
            catalogue.META_HELDOUT_ERROR: repr(float(self.heldout_error)),
            catalogue.META_SPLIT: self.split,
            catalogue.META_TRAINED_AT: self.trained_at,
            catalogue.META_SOURCES: "; ".join(self.sources),
        }

    def file_name(self, output: str) -> str:
        return f"{self.name}.onnx" if output == "value" else f"{self.name}_{output}.onnx"

    def onnx_model(self, output: str) -> Any:
        """The output's graph with this model's metadata_props."""
        model = self.onnx_outputs[output]
        copy = type(model)()
        copy.CopyFrom(model)
        del copy.metadata_props[:]
        from onnx import helper

        helper.set_model_props(copy, self.metadata(output))
        return copy

    def max_onnx_difference(self, x: FloatArray) -> dict[str, float]:
        """Largest absolute difference, per output, between onnxruntime and the native
        model on ``x`` (in the target's space, e.g. log seconds)."""
        native = self.predict_native(x)
        return {
            out: float(np.max(np.abs(run_onnx(self.onnx_model(out), x) - native[out])))
            if len(x)
            else 0.0
            for out in self.onnx_outputs
        }


def export(model: TrainedModel, directory: Path | str) -> list[Path]:
    """Write one ``<name>[_<output>].onnx`` per output into ``directory``."""
    import onnx

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for output in catalogue.MODELS[model.name]:
        path = folder / model.file_name(output)
        tmp = path.with_suffix(".onnx.tmp")
        onnx.save_model(model.onnx_model(output), str(tmp))
        tmp.replace(path)
        written.append(path)
    return written


def models_dir() -> Path:
    """``models/`` of the repository this file sits in."""
    return Path(__file__).resolve().parents[4] / "models"


def finite(value: float) -> float:
    return value if math.isfinite(value) else float("nan")


def format_figure(value: Any) -> str:
    """A results-table cell: thousands separators from 100, 2 decimals from 1, else 4;
    NaN as "n/a"; anything not a number as text."""
    if not isinstance(value, int | float):
        return str(value)
    v = float(value)
    if v != v:  # NaN
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"
