"""Daily calibrations of one IBM device (``ibm_perth``, Qonductor artifact): one
``BackendProperties`` snapshot a day — T1, T2, readout error per qubit, error and length per
gate. Each file also loads as the properties of qiskit-ibm-runtime's ``FakePerth``; the raw
dict is kept in ``Calibration.properties`` for that."""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

from qorch.traces._io import PathLike, TraceError, resolve

CALIBRATIONS_DIR: Final = "ibm-calibrations/ibm_perth"

# to microseconds / nanoseconds / GHz
_TIME_US: Final = {"us": 1.0, "µs": 1.0, "ns": 1e-3, "ms": 1e3, "s": 1e6}
_TIME_NS: Final = {"ns": 1.0, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}
_FREQ_GHZ: Final = {"GHz": 1.0, "MHz": 1e-3, "kHz": 1e-6, "Hz": 1e-9}
# Gates that are virtual (no error) or not unitary: left out of single-qubit error medians.
_NOT_ERROR_GATES: Final = frozenset({"rz", "reset", "delay", "measure"})


@dataclass(frozen=True, slots=True)
class QubitCalibration:
    qubit: int
    t1_us: float
    t2_us: float
    readout_error: float
    frequency_ghz: float | None = None
    readout_length_ns: float | None = None
    prob_meas0_prep1: float | None = None
    prob_meas1_prep0: float | None = None


@dataclass(frozen=True, slots=True)
class GateCalibration:
    name: str  # e.g. "cx0_1"
    gate: str  # e.g. "cx"
    qubits: tuple[int, ...]
    error: float | None  # None where the snapshot has no gate_error (reset)
    length_ns: float | None


@dataclass(frozen=True)
class Calibration:
    """One day's snapshot. ``day`` comes from the file name (``YYYY-MM-DD.json``)."""

    path: Path
    day: date
    backend_name: str
    backend_version: str
    last_update: datetime  # UTC
    qubits: tuple[QubitCalibration, ...]
    gates: tuple[GateCalibration, ...]
    properties: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def median_t1_us(self) -> float:
        return statistics.median(q.t1_us for q in self.qubits)

    @property
    def median_t2_us(self) -> float:
        return statistics.median(q.t2_us for q in self.qubits)

    @property
    def median_readout_error(self) -> float:
        return statistics.median(q.readout_error for q in self.qubits)

    @property
    def median_two_qubit_error(self) -> float:
        errors = [g.error for g in self.gates if len(g.qubits) == 2 and g.error is not None]
        return statistics.median(errors) if errors else float("nan")

    @property
    def median_single_qubit_error(self) -> float:
        errors = [
            g.error
            for g in self.gates
            if len(g.qubits) == 1 and g.error is not None and g.gate not in _NOT_ERROR_GATES
        ]
        return statistics.median(errors) if errors else float("nan")


# ---- JSON with positions -------------------------------------------------------------------
class _Located(dict[str, Any]):
    """A JSON object that remembers where it starts in the text."""

    pos: int = 0


def _located_decoder() -> json.JSONDecoder:
    decoder = json.JSONDecoder()
    parse_object: Callable[..., tuple[dict[str, Any], int]] = json.decoder.JSONObject  # type: ignore[attr-defined]

    def parse(s_and_end: tuple[str, int], *args: Any) -> tuple[_Located, int]:
        value, end = parse_object(s_and_end, *args)
        located = _Located(value)
        located.pos = s_and_end[1] - 1
        return located, end

    decoder.parse_object = parse  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


class _Doc:
    """Typed access into the decoded document; errors name file, line and column."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.text = text

    def error(self, node: Any, where: str, message: str) -> TraceError:
        pos = node.pos if isinstance(node, _Located) else 0
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return TraceError(self.path, line, f"{where}: {message}", column)

    def obj(self, node: Any, where: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise self.error(node, where, f"expected an object, got {type(node).__name__}")
        return node

    def get(self, node: dict[str, Any], key: str, where: str) -> Any:
        if key not in node:
            raise self.error(node, where, f"missing key {key!r}")
        return node[key]

    def list(self, parent: dict[str, Any], key: str, where: str) -> list[Any]:
        value = self.get(parent, key, where)
        if not isinstance(value, list):
            raise self.error(parent, f"{where}.{key}", "expected a list")
        return value

    def text_of(self, parent: dict[str, Any], key: str, where: str) -> str:
        value = self.get(parent, key, where)
        if not isinstance(value, str):
            raise self.error(parent, f"{where}.{key}", "expected a string")
        return value

    def number(self, parent: dict[str, Any], key: str, where: str) -> float:
        value = self.get(parent, key, where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(parent, f"{where}.{key}", f"{value!r} is not a number")
        return float(value)

    def time(self, parent: dict[str, Any], key: str, where: str) -> datetime:
        raw = self.text_of(parent, key, where)
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise self.error(parent, f"{where}.{key}", f"{raw!r} is not a timestamp") from None
        if value.tzinfo is None:
            raise self.error(parent, f"{where}.{key}", f"{raw!r} has no time zone")
        return value.astimezone(UTC)

    def scaled(
        self, param: dict[str, Any], where: str, units: Mapping[str, float]
    ) -> tuple[str, float]:
        """(name, value converted by the parameter's unit)."""
        name = self.text_of(param, "name", where)
        value = self.number(param, "value", where)
        unit = param.get("unit", "")
        if units:
            if unit not in units:
                raise self.error(param, f"{where}.unit", f"unexpected unit {unit!r} for {name}")
            value *= units[unit]
        return name, value


_QUBIT_UNITS: Final[Mapping[str, Mapping[str, float]]] = {
    "T1": _TIME_US,
    "T2": _TIME_US,
    "frequency": _FREQ_GHZ,
    "readout_length": _TIME_NS,
}


def _qubit(doc: _Doc, params: Any, index: int) -> QubitCalibration:
    where = f"qubits[{index}]"
    if not isinstance(params, list):
        raise doc.error(params, where, "expected a list of parameters")
    values: dict[str, float] = {}
    for k, p in enumerate(params):
        param = doc.obj(p, f"{where}[{k}]")
        name = doc.text_of(param, "name", f"{where}[{k}]")
        _, values[name] = doc.scaled(param, f"{where}[{k}]", _QUBIT_UNITS.get(name, {}))
    anchor = params[0] if params else None
    for required in ("T1", "T2", "readout_error"):
        if required not in values:
            raise doc.error(anchor, where, f"no {required!r} parameter")
    return QubitCalibration(
        qubit=index,
        t1_us=values["T1"],
        t2_us=values["T2"],
        readout_error=values["readout_error"],
        frequency_ghz=values.get("frequency"),
        readout_length_ns=values.get("readout_length"),
        prob_meas0_prep1=values.get("prob_meas0_prep1"),
        prob_meas1_prep0=values.get("prob_meas1_prep0"),
    )


def _gate(doc: _Doc, node: Any, index: int) -> GateCalibration:
    where = f"gates[{index}]"
    gate = doc.obj(node, where)
    qubits = doc.list(gate, "qubits", where)
    if not qubits or not all(isinstance(q, int) and not isinstance(q, bool) for q in qubits):
        raise doc.error(gate, f"{where}.qubits", f"{qubits!r} is not a list of qubit indices")
    error: float | None = None
    length: float | None = None
    for k, p in enumerate(doc.list(gate, "parameters", where)):
        param = doc.obj(p, f"{where}.parameters[{k}]")
        name = doc.text_of(param, "name", f"{where}.parameters[{k}]")
        if name == "gate_error":
            error = doc.number(param, "value", f"{where}.parameters[{k}]")
        elif name == "gate_length":
            _, length = doc.scaled(param, f"{where}.parameters[{k}]", _TIME_NS)
    return GateCalibration(
        name=doc.text_of(gate, "name", where),
        gate=doc.text_of(gate, "gate", where),
        qubits=tuple(qubits),
        error=error,
        length_ns=length,
    )


def read_calibration(path: PathLike) -> Calibration:
    """One ``YYYY-MM-DD.json`` snapshot."""
    file = Path(path)
    try:
        day = date.fromisoformat(file.stem)
    except ValueError:
        raise TraceError(file, None, "file name is not YYYY-MM-DD.json") from None
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(file, None, f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TraceError(file, 1, f"not UTF-8 text: {exc.reason}") from exc
    try:
        plain: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(file, exc.lineno, f"invalid JSON: {exc.msg}", exc.colno) from exc
    try:
        return _build(_Doc(file, text), plain, file, day)
    except TraceError:
        # Decode again, slowly, keeping where each object starts, so that the error can
        # name the line and column of the offending object.
        _build(_Doc(file, text), _located_decoder().decode(text), file, day)
        raise


def _build(doc: _Doc, root: Any, file: Path, day: date) -> Calibration:
    top = doc.obj(root, "$")
    if not doc.list(top, "qubits", "$"):
        raise doc.error(top, "$.qubits", "no qubits")
    return Calibration(
        path=file,
        day=day,
        backend_name=doc.text_of(top, "backend_name", "$"),
        backend_version=doc.text_of(top, "backend_version", "$"),
        last_update=doc.time(top, "last_update_date", "$"),
        qubits=tuple(_qubit(doc, q, i) for i, q in enumerate(doc.list(top, "qubits", "$"))),
        gates=tuple(_gate(doc, g, i) for i, g in enumerate(doc.list(top, "gates", "$"))),
        properties=root,
    )


def read_calibrations(directory: PathLike | None = None) -> tuple[Calibration, ...]:
    """Every ``*.json`` snapshot of ``directory`` (default ``ibm-calibrations/ibm_perth``),
    by day."""
    folder = resolve(directory, CALIBRATIONS_DIR)
    if not folder.is_dir():
        raise TraceError(folder, None, "not a directory")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise TraceError(folder, None, "no *.json calibration files")
    return tuple(read_calibration(f) for f in files)
