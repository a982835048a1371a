"""The model directory the operator serves from (a ConfigMap or PVC mount), one
onnxruntime session per file, validated on load and hot-reloaded.

A file is REJECTED, with a reason naming what to change, when it does not load, lacks the
catalogue's metadata, names an unknown model, output or feature, has an input whose width
differs from its feature list, or fails a probe run (wrong output shape, non-finite values).
A valid file is REFUSED when a model for the same (model, output) is already serving with a
lower held-out error; the serving one stays. Nothing here raises on a bad file: the state
(:meth:`ModelStore.state`) and the changes of each :meth:`ModelStore.refresh` are data the
operator turns into a condition and Events.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal, Protocol, cast

import numpy as np

from qorch.predictor.catalogue import (
    ALL_FEATURES,
    META_FEATURES,
    META_HELDOUT_ERROR,
    META_HELDOUT_METRIC,
    META_MODEL,
    META_OUTPUT,
    META_SOURCES,
    META_SPLIT,
    META_TARGET,
    META_TRAINED_AT,
    MODELS,
)

Target = Literal["identity", "log", "logit"]
TARGETS: Final = ("identity", "log", "logit")
REQUIRED_METADATA: Final = (
    META_MODEL,
    META_OUTPUT,
    META_FEATURES,
    META_TARGET,
    META_HELDOUT_METRIC,
    META_HELDOUT_ERROR,
)
PROBE_ROWS: Final = 3
# The shipped models are under 1 MB; a file far beyond that is a mistake or an attack on
# the operator's memory (whoever can write the model ConfigMap or volume).
MAX_MODEL_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model file says it is."""

    model: str
    output: str
    path: str
    sha256: str
    features: tuple[str, ...]
    target: Target
    heldout_metric: str
    heldout_error: float
    split: str = ""
    trained_at: str = ""
    sources: str = ""
    # The features the graph actually reads (``graph_reads``), in ``features`` order; None:
    # all of them (or not known). Rows that differ only in the others give equal outputs,
    # so serving runs one of them.
    reads: tuple[str, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.model}/{self.output}"

    @property
    def read_features(self) -> tuple[str, ...]:
        return self.features if self.reads is None else self.reads


@dataclass(frozen=True)
class Rejection:
    """A file not served, and why (``model``/``output``: when its metadata said)."""

    path: str
    reason: str
    model: str | None = None
    output: str | None = None


ChangeKind = Literal["loaded", "replaced", "refused", "rejected", "removed"]


@dataclass(frozen=True)
class StoreChange:
    """One thing a refresh did; the operator logs it and counts it
    (``qorch_predictor_model_changes_total``)."""

    kind: ChangeKind
    path: str
    message: str
    model: str | None = None
    output: str | None = None


@dataclass(frozen=True)
class StoreState:
    """The store as data: served models, files not served (with reasons), and the
    (model, output) keys with no model, which the analytic fallback answers."""

    directory: str
    loaded: tuple[ModelInfo, ...]
    rejected: tuple[Rejection, ...]
    missing: tuple[str, ...]  # "model/output"

    @property
    def complete(self) -> bool:
        """Every output has a model and no file was turned away."""
        return not self.rejected and not self.missing

    def summary(self) -> str:
        """One line for a condition's message."""
        parts = [f"{len(self.loaded)} model(s) loaded from {self.directory}"]
        if self.missing:
            parts.append("analytic fallback for " + ", ".join(self.missing))
        parts.extend(f"{Path(r.path).name}: {r.reason}" for r in self.rejected)
        return "; ".join(parts)


class ServingModel(Protocol):
    """What the predictor runs: raw model output (before the target's inverse)."""

    @property
    def info(self) -> ModelInfo: ...

    def run(self, x: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, Any]: ...


class ModelSource(Protocol):
    """Where the predictor gets its models (the store; a test double in tests)."""

    def model(self, name: str, output: str) -> ServingModel | None: ...

    def why_missing(self, name: str, output: str) -> str: ...


class LoadedModel:
    """One validated onnxruntime session.

    ``run`` remembers the rows of its previous call: a row seen then (bitwise equal) is not
    run again, since a model is a pure function of its row. Across decision passes most
    rows repeat (circuit and calibration features change daily, not per pass), so a pass
    runs only what changed. The index over the remembered rows (a hash per row, sorted) is
    built when a later call first needs it: a call whose rows all repeat, and a first call,
    never pay for it."""

    def __init__(self, info: ModelInfo, session: Any) -> None:
        self.info = info
        self._session = session
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name
        width = len(info.features)
        rng = np.random.default_rng(width)
        self._mix = rng.integers(1, 2**63, size=width, dtype=np.uint64) | 1
        # The previous call: its rows (float32 bits), values and row hashes (None: not
        # computed yet); and the index over them (hash-sorted), built on demand.
        self._last_bits = np.zeros((0, width), dtype=np.uint32)
        self._last_values = np.zeros(0, dtype=np.float64)
        self._last_hash: np.ndarray[Any, Any] | None = None
        self._index: tuple[np.ndarray[Any, Any], ...] | None = None
        self.last_rows_run = 0
        self.last_rows_reused = 0

    def infer(self, x: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, Any]:
        """Run the session on every row (no memo), output flattened to [N]."""
        out = self._session.run([self._output], {self._input: x})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(x))

    def run(self, x: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, Any]:
        given = x
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2:
            x = x.reshape(len(x), -1 if x.size else len(self.info.features))
        bits = x.view(np.uint32)
        last = self._last_bits
        if bits.shape == last.shape and np.array_equal(bits, last):
            # The same rows in the same order as last time (an unchanged pass).
            self.last_rows_run, self.last_rows_reused = 0, len(x)
            return self._last_values.copy()
        values = np.empty(len(x), dtype=np.float64)
        hit = np.zeros(len(x), dtype=bool)
        hashes = None
        if len(last) and len(x):
            hashes = _row_hash(bits, self._mix)
            memo_hash, memo_rows, memo_values = self._memo_index()
            pos = np.searchsorted(memo_hash, hashes).clip(max=len(memo_hash) - 1)
            hit = (memo_hash[pos] == hashes) & np.all(memo_rows[pos] == bits, axis=1)
            values[hit] = memo_values[pos[hit]]
        self.last_rows_reused = int(hit.sum())
        self.last_rows_run = len(x) - self.last_rows_reused
        if self.last_rows_reused == 0:
            values = self.infer(x) if len(x) else values
        elif self.last_rows_run:
            miss = ~hit
            values[miss] = self.infer(x[miss])
        # Keep a private copy of the rows (the caller may reuse its array).
        own = not isinstance(given, np.ndarray) or not np.may_share_memory(bits, given)
        self._last_bits = bits if own else bits.copy()
        self._last_values = values
        self._last_hash = hashes
        self._index = None
        return values.copy()

    def _memo_index(self) -> tuple[np.ndarray[Any, Any], ...]:
        """(hashes, rows, values) of the previous call, sorted by hash."""
        if self._index is None:
            hashes = self._last_hash
            if hashes is None:
                hashes = _row_hash(self._last_bits, self._mix)
            order = np.argsort(hashes)
            self._index = (hashes[order], self._last_bits[order], self._last_values[order])
        return self._index

    def forget(self) -> None:
        """Drop the remembered rows (the next run runs everything)."""
        self._last_bits = self._last_bits[:0]
        self._last_values = self._last_values[:0]
        self._last_hash = None
        self._index = None


def _row_hash(bits: np.ndarray[Any, Any], mix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A 64-bit hash per row: the row's words times random odd multipliers, summed modulo
    2^64. Equality is checked on the rows themselves, so a collision only costs a re-run."""
    with np.errstate(over="ignore"):
        hashes: np.ndarray[Any, Any] = (bits.astype(np.uint64) * mix).sum(axis=1, dtype=np.uint64)
    return hashes


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: a rejected file is reported as data
    # The operator shares its cores: threads sleep between runs instead of spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_model(path: Path, data: bytes, threads: int = 1) -> LoadedModel | Rejection:
    """Validate one model file; a :class:`Rejection` says what is wrong with it."""
    import onnxruntime as ort

    where = str(path)
    sha = hashlib.sha256(data).hexdigest()
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        return Rejection(where, f"not a loadable ONNX model: {_first_line(exc)}", *_named(path))
    meta = dict(session.get_modelmeta().custom_metadata_map or {})
    absent = [k for k in REQUIRED_METADATA if not meta.get(k)]
    model, output = meta.get(META_MODEL), meta.get(META_OUTPUT)
    if absent:
        if model is None or output is None:
            model, output = _named(path)
        return Rejection(where, f"metadata_props lacks {', '.join(absent)}", model, output)
    assert model is not None and output is not None
    if model not in MODELS:
        return Rejection(
            where, f"{META_MODEL}={model!r} is not a model of the catalogue {sorted(MODELS)}"
        )
    if output not in MODELS[model]:
        return Rejection(
            where, f"{META_OUTPUT}={output!r}: {model} has outputs {list(MODELS[model])}", model
        )
    stem = path.name.removesuffix(".onnx")
    if stem not in (model, f"{model}_{output}"):
        return Rejection(
            where,
            f"the file is named {path.name} but says it is {model}/{output}: "
            f"name it {model}_{output}.onnx",
            model,
            output,
        )
    features, problem = _parse_features(meta[META_FEATURES])
    if problem:
        return Rejection(where, problem, model, output)
    target = meta[META_TARGET]
    if target not in TARGETS:
        return Rejection(
            where, f"{META_TARGET}={target!r}: expected one of {TARGETS}", model, output
        )
    try:
        error = float(meta[META_HELDOUT_ERROR])
    except ValueError:
        error = math.nan
    if not math.isfinite(error) or error < 0:
        return Rejection(
            where,
            f"{META_HELDOUT_ERROR}={meta[META_HELDOUT_ERROR]!r}: expected a finite number >= 0",
            model,
            output,
        )
    problem = _check_signature(session, len(features))
    if problem:
        return Rejection(where, problem, model, output)
    info = ModelInfo(
        model=model,
        output=output,
        path=where,
        sha256=sha,
        features=features,
        target=cast(Target, target),  # checked against TARGETS above
        heldout_metric=meta[META_HELDOUT_METRIC],
        heldout_error=error,
        split=meta.get(META_SPLIT, ""),
        trained_at=meta.get(META_TRAINED_AT, ""),
        sources=meta.get(META_SOURCES, ""),
    )
    loaded = LoadedModel(info, session)
    probe = np.zeros((PROBE_ROWS, len(features)), dtype=np.float32)
    probe[1] = 1.0
    probe[2] = np.nan  # every feature may be missing at run time
    try:
        raw = session.run([session.get_outputs()[0].name], {loaded._input: probe})[0]
    except Exception as exc:
        return Rejection(where, f"a probe run fails: {_first_line(exc)}", model, output)
    reads = _checked_reads(session, loaded._input, data, features)
    if reads is not None:
        loaded.info = info = replace(info, reads=reads)
    shape = tuple(np.shape(raw))
    if shape not in ((PROBE_ROWS,), (PROBE_ROWS, 1)):
        return Rejection(
            where,
            f"output has shape {shape} for {PROBE_ROWS} rows: expected [N] or [N, 1]",
            model,
            output,
        )
    if not np.all(np.isfinite(np.asarray(raw, dtype=np.float64)[:2])):
        return Rejection(where, "a probe run returns non-finite values", model, output)
    return loaded


def _checked_reads(
    session: Any, input_name: str, data: bytes, features: tuple[str, ...]
) -> tuple[str, ...] | None:
    """The features the graph reads (``graph_reads``), confirmed on probe rows: random values
    in the other columns must give bitwise the same outputs as NaN there. None (all read)
    when the graph does not say or the probe disagrees."""
    try:
        columns = graph_reads(data, input_name, len(features))
    except (ValueError, IndexError):  # not the protobuf this reader knows: assume all
        return None
    if columns is None or len(columns) == len(features):
        return None
    rng = np.random.default_rng(0)
    noisy = (rng.standard_normal((8, len(features))) * 1e3).astype(np.float32)
    quiet = np.full_like(noisy, np.nan)
    quiet[:, list(columns)] = noisy[:, list(columns)]
    out = session.get_outputs()[0].name
    try:
        a = np.asarray(session.run([out], {input_name: noisy})[0])
        b = np.asarray(session.run([out], {input_name: quiet})[0])
    except Exception:
        return None
    if a.shape != b.shape or a.tobytes() != b.tobytes():
        return None
    return tuple(features[i] for i in columns)


# ---- which columns a graph reads ---------------------------------------------------------
# A minimal reader of the ONNX protobuf (onnx itself is a training dependency, not a serving
# one): field numbers of onnx.proto3's ModelProto.graph, GraphProto.node/initializer,
# NodeProto.input/output/op_type/domain/attribute, AttributeProto.name/i/t and
# TensorProto.dims/data_type/int32_data/int64_data/name/raw_data.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_OUTPUT = 1, 5, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 4, 5, 7
_ATTR_NAME, _ATTR_I, _ATTR_T = 1, 3, 5
_SUBGRAPH_OPS: Final = frozenset({"If", "Loop", "Scan", "SequenceMap"})  # graph attributes
_KNOWN_DOMAINS: Final = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_INT32, _TENSOR_INT64, _TENSOR_NAME, _TENSOR_RAW = (
    1, 2, 5, 7, 8, 9,
)  # fmt: skip
_INT32, _INT64 = 6, 7


def graph_reads(data: bytes, input_name: str, width: int) -> tuple[int, ...] | None:
    """The input columns (sorted) a model's graph can read, when every node that consumes
    the input is a ``Gather`` along axis 1 with constant indices; None (all columns) when
    any other node reads it whole, a graph output is the input itself, or a node carries a
    subgraph (which may read it by name)."""
    graph = _one(_MODEL_GRAPH, memoryview(data))
    if graph is None:
        return None
    constants: dict[str, list[int]] = {}
    nodes = []
    for field, value in _fields(graph):
        if field == _GRAPH_INITIALIZER:
            name, ints = _int_tensor(value)
            if ints is not None:
                constants[name] = ints
        elif field == _GRAPH_NODE:
            nodes.append(value)
        elif field == _GRAPH_OUTPUT and _text(_one(1, value)) == input_name:
            return None
    columns: set[int] = set()
    for node in nodes:
        inputs, outputs, attrs, op, domain = [], [], [], "", ""
        for field, value in _fields(node):
            if field == _NODE_INPUT:
                inputs.append(_text(value))
            elif field == _NODE_OUTPUT:
                outputs.append(_text(value))
            elif field == _NODE_OP:
                op = _text(value)
            elif field == _NODE_DOMAIN:
                domain = _text(value)
            elif field == _NODE_ATTRIBUTE:
                attrs.append(value)
        if op in _SUBGRAPH_OPS or domain not in _KNOWN_DOMAINS:
            return None  # a subgraph may read the input by name; unknown ops: who knows
        if op == "Constant" and domain in ("", "ai.onnx") and len(outputs) == 1:
            for a in attrs:
                tensor = _one(_ATTR_T, a)
                if _text(_one(_ATTR_NAME, a)) == "value" and tensor is not None:
                    _, ints = _int_tensor(tensor)
                    if ints is not None:
                        constants[outputs[0]] = ints
        if input_name not in inputs:
            continue
        if op != "Gather" or domain not in ("", "ai.onnx") or inputs[0] != input_name:
            return None
        if inputs.count(input_name) != 1 or len(inputs) != 2 or inputs[1] not in constants:
            return None
        axis = 0
        for a in attrs:
            if _text(_one(_ATTR_NAME, a)) == "axis":
                axis = _signed(_one(_ATTR_I, a) or 0)
        if axis not in (1, -1):
            return None
        for index in constants[inputs[1]]:
            if not -width <= index < width:
                return None
            columns.add(index % width)
    return tuple(sorted(columns))


def _fields(buf: memoryview) -> Iterator[tuple[int, Any]]:
    """(field number, value) of one protobuf message: an int (varint), a memoryview
    (length-delimited) or bytes (fixed 32/64 bits)."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire == 1:
            value, i = bytes(buf[i : i + 8]), i + 8
        elif wire == 5:
            value, i = bytes(buf[i : i + 4]), i + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if i > n:
            raise ValueError("truncated protobuf")
        yield field, value


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def _one(number: int, message: Any) -> Any:
    """The last value of field ``number`` (protobuf: the last one wins), or None."""
    if not isinstance(message, memoryview):
        return None
    found = None
    for field, value in _fields(message):
        if field == number:
            found = value
    return found


def _text(value: Any) -> str:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, memoryview) else ""


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _int_tensor(tensor: memoryview) -> tuple[str, list[int] | None]:
    """(name, values) of an int32/int64 tensor of at most one dimension; values None for
    any other tensor."""
    name, kind, dims, raw = "", 0, [], None
    ints: list[int] = []
    for field, value in _fields(tensor):
        if field == _TENSOR_NAME:
            name = _text(value)
        elif field == _TENSOR_TYPE:
            kind = value
        elif field == _TENSOR_DIMS:
            dims += _packed(value)
        elif field in (_TENSOR_INT32, _TENSOR_INT64):
            ints += _packed(value)
        elif field == _TENSOR_RAW:
            raw = bytes(value)
        elif field in (12, 13, 14):  # external data, data_location, double data: not ours
            return name, None
    if kind not in (_INT32, _INT64) or len(dims) > 1:
        return name, None
    if raw is not None:
        ints = np.frombuffer(raw, dtype="<i8" if kind == _INT64 else "<i4").tolist()
    else:
        ints = [_signed(v) for v in ints]
        if kind == _INT32:
            ints = [v - (1 << 32) if v >= 1 << 31 else v for v in ints]
    if dims and dims[0] != len(ints):
        return name, None
    return name, ints


def _packed(value: Any) -> list[int]:
    """A repeated varint field: one value, or a packed run of them."""
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def _named(path: Path) -> tuple[str | None, str | None]:
    """The (model, output) a file's name claims (``<model>[_<output>].onnx``), for a file
    too broken to say it itself."""
    stem = path.name.removesuffix(".onnx")
    for model, outputs in MODELS.items():
        for output in outputs:
            if stem == f"{model}_{output}" or (stem == model and len(outputs) == 1):
                return model, output
    return None, None


def _parse_features(text: str) -> tuple[tuple[str, ...], str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return (), f"{META_FEATURES} is not JSON: {exc.msg}"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return (), f"{META_FEATURES} must be a non-empty JSON list of feature names"
    unknown = [v for v in value if v not in ALL_FEATURES]
    if unknown:
        return (), f"{META_FEATURES} names features not in the catalogue: {unknown}"
    if len(set(value)) != len(value):
        return (), f"{META_FEATURES} lists a feature twice"
    return tuple(value), ""


def _check_signature(session: Any, width: int) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        return f"the graph has {len(inputs)} inputs: expected one float32 [N, {width}]"
    node = inputs[0]
    if node.type != "tensor(float)":
        return f"input {node.name!r} is {node.type}: expected tensor(float)"
    shape = list(node.shape or [])
    if len(shape) != 2:
        return f"input {node.name!r} has rank {len(shape)}: expected [N, {width}]"
    if isinstance(shape[1], int) and shape[1] != width:
        return (
            f"input {node.name!r} has {shape[1]} columns but {META_FEATURES} lists {width} features"
        )
    if not session.get_outputs():
        return "the graph has no output"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


@dataclass
class _File:
    signature: tuple[int, int, int]
    sha256: str
    outcome: ModelInfo | Rejection


@dataclass
class _Candidate:
    path: Path
    model: LoadedModel


class ModelStore:
    """The models under ``directory`` (``*.onnx``; a ConfigMap mount's symlinks followed,
    its hidden ``..data`` folders ignored). Call :meth:`refresh` at start and on a timer."""

    def __init__(self, directory: str | Path, *, threads: int = 1) -> None:
        self.directory = Path(directory)
        self.threads = threads
        self._files: dict[Path, _File] = {}
        self._serving: dict[tuple[str, str], LoadedModel] = {}
        self._problem = ""  # the directory itself cannot be read

    # -- ModelSource ---------------------------------------------------------------------
    def model(self, name: str, output: str) -> LoadedModel | None:
        return self._serving.get((name, output))

    def why_missing(self, name: str, output: str) -> str:
        if self._problem:
            return self._problem
        for path, f in sorted(self._files.items()):
            if isinstance(f.outcome, Rejection) and (f.outcome.model, f.outcome.output) == (
                name,
                output,
            ):
                return f"{path.name} rejected: {f.outcome.reason}"
        return f"no model file for {name}/{output} in {self.directory}"

    # -- state -----------------------------------------------------------------------------
    def state(self) -> StoreState:
        rejected = [f.outcome for _, f in sorted(self._files.items())]
        problem = (Rejection(str(self.directory), self._problem),) if self._problem else ()
        return StoreState(
            directory=str(self.directory),
            loaded=tuple(m.info for _, m in sorted(self._serving.items())),
            rejected=problem + tuple(r for r in rejected if isinstance(r, Rejection)),
            missing=tuple(
                f"{m}/{o}"
                for m, outs in MODELS.items()
                for o in outs
                if (m, o) not in self._serving
            ),
        )

    # -- reload ----------------------------------------------------------------------------
    def refresh(self) -> tuple[StoreChange, ...]:
        """Re-scan the directory: load new and changed files, refuse worse models, unload
        models whose file is gone. Returns what changed (empty when nothing did)."""
        changes: list[StoreChange] = []
        try:
            paths = sorted(p for p in self.directory.glob("*.onnx") if not p.name.startswith("."))
            self._problem = ""
        except OSError as exc:
            paths = []
            self._problem = f"cannot list {self.directory}: {exc}"
        if not self.directory.is_dir() and not self._problem:
            self._problem = f"model directory {self.directory} does not exist"

        # Files gone: unload what they served; reconsider files refused in their favour.
        recheck: set[tuple[str, str]] = set()
        for path in sorted(set(self._files) - set(paths)):
            gone = self._files.pop(path)
            for key, serving in list(self._serving.items()):
                if serving.info.path == str(path):
                    del self._serving[key]
                    recheck.add(key)
                    changes.append(
                        StoreChange(
                            "removed",
                            str(path),
                            f"{key[0]}/{key[1]}: the file is gone; analytic fallback unless "
                            "another file serves it",
                            *key,
                        )
                    )
            del gone

        candidates: list[_Candidate] = []
        for path in paths:
            known = self._files.get(path)
            refused_for = (
                known is not None
                and isinstance(known.outcome, Rejection)
                and (known.outcome.model, known.outcome.output) in recheck
            )
            try:
                st = path.stat()
                signature = (st.st_mtime_ns, st.st_size, st.st_ino)
                if known is not None and known.signature == signature and not refused_for:
                    continue
                if st.st_size > MAX_MODEL_BYTES:
                    reason = (
                        f"{st.st_size} bytes, over the {MAX_MODEL_BYTES} a model may have "
                        "(not read: it could exhaust the operator's memory)"
                    )
                    rejection = Rejection(str(path), reason, *_named(path))
                    self._files[path] = _File(signature, "", rejection)  # again only if changed
                    changes.append(StoreChange("rejected", str(path), reason, *_named(path)))
                    continue
                data = path.read_bytes()
            except OSError as exc:
                rejection = Rejection(str(path), f"cannot read: {exc}", *_named(path))
                self._files[path] = _File((0, 0, 0), "", rejection)
                changes.append(StoreChange("rejected", str(path), rejection.reason, *_named(path)))
                continue
            sha = hashlib.sha256(data).hexdigest()
            if known is not None and known.sha256 == sha and not refused_for:
                known.signature = signature  # touched, not changed
                continue
            outcome = load_model(path, data, self.threads)
            if isinstance(outcome, Rejection):
                self._files[path] = _File(signature, sha, outcome)
                keeps = ""
                kept = self._serving.get((outcome.model or "", outcome.output or ""))
                if kept is not None:
                    keeps = f"; still serving {Path(kept.info.path).name}"
                changes.append(
                    StoreChange(
                        "rejected", str(path), outcome.reason + keeps, outcome.model, outcome.output
                    )
                )
                continue
            self._files[path] = _File(signature, sha, outcome.info)
            candidates.append(_Candidate(path, outcome))

        # Best first, so that of two new files for one output the better one is served.
        candidates.sort(key=lambda c: (c.model.info.heldout_error, str(c.path)))
        for cand in candidates:
            changes.append(self._offer(cand))
        return tuple(changes)

    def _offer(self, cand: _Candidate) -> StoreChange:
        info = cand.model.info
        key = (info.model, info.output)
        current = self._serving.get(key)
        where = str(cand.path)
        if current is None:
            self._serving[key] = cand.model
            return StoreChange("loaded", where, f"serving {info.key} ({_quality(info)})", *key)
        cur = current.info
        if cur.heldout_metric != info.heldout_metric:
            reason = (
                f"held-out metric {info.heldout_metric!r} differs from the serving model's "
                f"{cur.heldout_metric!r} ({Path(cur.path).name}), so the two cannot be "
                "compared; keeping the serving model (remove its file to switch)"
            )
        elif info.heldout_error > cur.heldout_error:
            reason = (
                f"held-out {info.heldout_metric} {info.heldout_error:g} is worse than "
                f"{cur.heldout_error:g} of the serving model ({Path(cur.path).name}); "
                "keeping the serving model"
            )
        else:
            self._serving[key] = cand.model
            if cur.path != where:
                # The file the old model came from now only holds a worse model.
                old = self._files.get(Path(cur.path))
                if old is not None:
                    old.outcome = Rejection(
                        cur.path,
                        f"superseded by {cand.path.name} ({_quality(info)})",
                        *key,
                    )
            return StoreChange(
                "replaced",
                where,
                f"serving {info.key} ({_quality(info)}; was {cur.heldout_error:g} from "
                f"{Path(cur.path).name})",
                *key,
            )
        self._files[cand.path].outcome = Rejection(where, reason, *key)
        return StoreChange("refused", where, reason, *key)


def _quality(info: ModelInfo) -> str:
    return f"held-out {info.heldout_metric} {info.heldout_error:g}"


def load_directory(directory: str | Path, threads: int = 1) -> ModelStore:
    """A store with ``directory`` scanned once."""
    store = ModelStore(directory, threads=threads)
    store.refresh()
    return store


__all__: Sequence[str] = (
    "LoadedModel",
    "ModelInfo",
    "ModelSource",
    "ModelStore",
    "Rejection",
    "ServingModel",
    "StoreChange",
    "StoreState",
    "graph_reads",
    "load_directory",
    "load_model",
)
