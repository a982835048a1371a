"""A backend's calibration of the day and the success probability it predicts for a circuit.

Two sources give the same :class:`BackendCalibration`: a qiskit ``Target`` (what a gateway's
backend carries at run time, serving) and a day's ``BackendProperties`` snapshot from the
calibration trace (``ibm-calibrations/<device>/YYYY-MM-DD.json``, training), which loads as
the properties of qiskit-ibm-runtime's ``FakePerth`` and so goes through a ``Target`` too.

:func:`estimated_success` is the analytic success probability of a TRANSPILED circuit, the
``estimated_success`` feature of ``qorch.predictor.catalogue`` and the fallback when the
fidelity model is missing:

    product over instructions of (1 - error of that gate on those qubits)
  x product over measurements of (1 - readout error of the qubit)
  x product over idle periods of (1 + exp(-t/T1) + 2 exp(-t/T2)) / 4

An idle period is time a qubit waits between its first operation and its measurement: an
explicit ``delay``, or the gap an as-soon-as-possible timeline of gate lengths leaves before
the qubit's next operation (barriers align their qubits). Time spent in |0> before the first
operation costs nothing (relaxation leaves |0> alone). The last factor is the probability
that the Pauli-twirled thermal-relaxation channel of that duration acts as the identity; the
gates' own decoherence is part of their calibrated error already. Scheduled (with delays)
and unscheduled transpiled circuits give the same estimate up to where the idle time sits.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from qorch.traces.calibrations import Calibration as CalibrationDay
from qorch.traces.calibrations import read_calibration, read_calibrations

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.providers import BackendV2
    from qiskit.transpiler import Target

# How every circuit is transpiled for a backend when its success is estimated or labelled:
# the gateway's optimization level, a fixed seed so that the layout is reproducible.
OPTIMIZATION_LEVEL: Final = 1
TRANSPILE_SEED: Final = 20230101
# Single-qubit operations whose error is not a gate error (virtual, or not unitary).
_NOT_GATE_ERRORS: Final = frozenset({"rz", "reset", "delay", "measure"})

__all__ = [
    "OPTIMIZATION_LEVEL",
    "TRANSPILE_SEED",
    "BackendCalibration",
    "CalibrationDay",
    "CalibrationError",
    "backend_for_day",
    "estimated_success",
    "idle_survival",
    "load_calibration_days",
    "read_calibration",
    "transpile_for",
]


class CalibrationError(ValueError):
    """A calibration day that cannot be used as a backend; the message names the file."""


# ---- the calibration trace (read by ``qorch.traces.calibrations``) -----------------------


def load_calibration_days(directory: str | Path | None = None) -> tuple[CalibrationDay, ...]:
    """Every day of the calibration trace, oldest first (``qorch.traces`` reads and checks
    the files: a bad one raises ``TraceError`` naming its file and line)."""
    return read_calibrations(directory)


def backend_for_day(day: CalibrationDay) -> BackendV2:
    """The fake backend of the device with that day's properties (its ``target`` and
    ``NoiseModel.from_backend`` follow the day). Only ibm_perth has a fake backend here."""
    from qiskit_ibm_runtime.fake_provider import FakePerth
    from qiskit_ibm_runtime.fake_provider.fake_backend import properties_from_server_data

    if day.backend_name != "ibm_perth":
        raise CalibrationError(f"{day.path}: no fake backend for {day.backend_name!r}")
    backend = FakePerth()
    props = copy.deepcopy(dict(day.properties))
    try:
        properties_from_server_data(props)
        backend._props_dict = props
        backend._target = None
        _ = backend.target  # build it now, so a bad file fails here, naming the file
    except Exception as exc:
        raise CalibrationError(f"{day.path}: not usable as {day.backend_name}: {exc}") from exc
    return backend


# ---- what the estimate and the features need -------------------------------------------


@dataclass(frozen=True)
class BackendCalibration:
    """Per-qubit and per-gate figures of a backend, in seconds and probabilities."""

    num_qubits: int
    t1_s: tuple[float | None, ...]
    t2_s: tuple[float | None, ...]
    readout_error: tuple[float | None, ...]
    gate_error: Mapping[tuple[str, tuple[int, ...]], float]
    gate_duration_s: Mapping[tuple[str, tuple[int, ...]], float]
    dt_s: float | None

    @classmethod
    def from_target(cls, target: Target) -> BackendCalibration:
        n = target.num_qubits or 0
        qprops = list(target.qubit_properties or [None] * n)
        errors: dict[tuple[str, tuple[int, ...]], float] = {}
        durations: dict[tuple[str, tuple[int, ...]], float] = {}
        for name in target.operation_names:
            for qargs, props in (target[name] or {}).items():
                if qargs is None or props is None:
                    continue
                key = (name, tuple(qargs))
                if props.error is not None:
                    errors[key] = float(props.error)
                if props.duration is not None:
                    durations[key] = float(props.duration)
        readout = tuple(errors.get(("measure", (q,))) for q in range(n))
        return cls(
            num_qubits=n,
            t1_s=tuple(getattr(p, "t1", None) for p in qprops),
            t2_s=tuple(getattr(p, "t2", None) for p in qprops),
            readout_error=readout,
            gate_error=errors,
            gate_duration_s=durations,
            dt_s=target.dt,
        )

    def features(self) -> dict[str, float]:
        """The BACKEND_FEATURES of the catalogue but ``estimated_success`` (that one
        depends on the circuit): medians over qubits / gates, times in microseconds. Two-
        qubit: every two-qubit operation with an error (as the gateway's calibration summary
        counts them); single-qubit: every one-qubit operation but rz, reset, delay and
        measure; readout: the ``measure`` errors."""
        two_q = [e for (_, qargs), e in self.gate_error.items() if len(qargs) == 2]
        one_q = [
            e
            for (name, qargs), e in self.gate_error.items()
            if len(qargs) == 1 and name not in _NOT_GATE_ERRORS
        ]
        return {
            "backend_qubits": float(self.num_qubits),
            "median_two_qubit_error": _median(two_q),
            "median_readout_error": _median([e for e in self.readout_error if e is not None]),
            "median_single_qubit_error": _median(one_q),
            "median_t1_us": _median([t * 1e6 for t in self.t1_s if t is not None]),
            "median_t2_us": _median([t * 1e6 for t in self.t2_s if t is not None]),
        }


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def idle_survival(seconds: float, t1_s: float | None, t2_s: float | None) -> float:
    """Probability that an idle qubit's relaxation (Pauli-twirled) acts as the identity:
    (1 + exp(-t/T1) + 2 exp(-t/T2)) / 4, with T2 capped at 2 T1 (as Aer does)."""
    if seconds <= 0 or t1_s is None or t2_s is None or t1_s <= 0 or t2_s <= 0:
        return 1.0
    t2 = min(t2_s, 2 * t1_s)
    return (1 + math.exp(-seconds / t1_s) + 2 * math.exp(-seconds / t2)) / 4


def estimated_success(circuit: QuantumCircuit, properties: BackendCalibration | Target) -> float:
    """The analytic success probability of a circuit transpiled for the backend whose
    calibration is ``properties`` (see the module docstring for the formula)."""
    cal = (
        properties
        if isinstance(properties, BackendCalibration)
        else BackendCalibration.from_target(properties)
    )
    probability = 1.0
    cursor: dict[int, float] = {}  # qubit -> end of its last operation (s), once started
    for inst in circuit.data:
        name = inst.operation.name
        qargs = tuple(circuit.find_bit(q).index for q in inst.qubits)
        if name == "barrier":
            busy = [cursor[q] for q in qargs if q in cursor]
            if busy:
                start = max(busy)
                for q in qargs:
                    if q in cursor:
                        probability *= _idle(cal, q, start - cursor[q])
                        cursor[q] = start
            continue
        if name == "delay":
            seconds = _delay_seconds(inst.operation, cal.dt_s)
            for q in qargs:
                if q in cursor:
                    probability *= _idle(cal, q, seconds)
                    cursor[q] += seconds
            continue
        started = [cursor[q] for q in qargs if q in cursor]
        start = max(started) if started else 0.0
        for q in qargs:
            if q in cursor:
                probability *= _idle(cal, q, start - cursor[q])
        key = (name, qargs)
        if name == "measure":
            error = cal.readout_error[qargs[0]] if qargs[0] < cal.num_qubits else None
        else:
            error = cal.gate_error.get(key)
        if error is not None:
            probability *= 1.0 - min(max(error, 0.0), 1.0)
        end = start + cal.gate_duration_s.get(key, 0.0)
        for q in qargs:
            cursor[q] = end
    return probability


def _idle(cal: BackendCalibration, qubit: int, seconds: float) -> float:
    if qubit >= cal.num_qubits:
        return 1.0
    return idle_survival(seconds, cal.t1_s[qubit], cal.t2_s[qubit])


def _delay_seconds(op: Any, dt_s: float | None) -> float:
    duration = float(op.duration or 0.0)
    unit = getattr(op, "unit", "dt")
    if unit == "dt":
        return duration * dt_s if dt_s else 0.0
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12}.get(unit)
    return duration * scale if scale is not None else 0.0


def transpile_for(circuit: QuantumCircuit, target: Target) -> QuantumCircuit:
    """The transpiled circuit estimates and labels are made on: optimization level 1 (as
    the gateway does) and a fixed seed, so a (circuit, calibration) pair has one layout."""
    from qiskit.transpiler import generate_preset_pass_manager

    pm = generate_preset_pass_manager(
        optimization_level=OPTIMIZATION_LEVEL, target=target, seed_transpiler=TRANSPILE_SEED
    )
    return pm.run(circuit)
