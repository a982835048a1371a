"""Parse user circuits once, at the edge (OpenQASM 3, or 2 when the header says so)."""

from __future__ import annotations

import re

from qiskit import QuantumCircuit, qasm2, qasm3

from qorch.orchestrator.snapshot import CircuitInfo

_QASM2 = re.compile(r"^\s*(//[^\n]*\n\s*)*OPENQASM\s+2(\.\d+)?\s*;", re.MULTILINE)


class CircuitError(ValueError):
    """The circuit source does not parse; the message says where and why."""


def load_qasm(source: str) -> QuantumCircuit:
    try:
        if _QASM2.match(source):
            return qasm2.loads(source, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
        return qasm3.loads(source)
    except Exception as exc:  # qiskit raises several unrelated types for bad input
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CircuitError(f"OpenQASM does not parse: {first_line}") from exc


def inspect(source: str) -> CircuitInfo:
    try:
        circuit = load_qasm(source)
    except CircuitError as exc:
        return CircuitInfo(error=str(exc))
    return CircuitInfo(num_qubits=circuit.num_qubits, depth=circuit.depth())
