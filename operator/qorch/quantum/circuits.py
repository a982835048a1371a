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
        raise CircuitError(f"OpenQASM does not parse: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """The most specific message in the cause chain; the OpenQASM 3 parser bails out with
    an empty exception whose cause holds the offending token."""
    pending: list[object] = [exc]
    while pending:
        seen = pending.pop(0)
        token = getattr(seen, "offendingToken", None)
        if token is not None:
            return f"line {token.line}, column {token.column + 1}: unexpected {token.text!r}"
        if isinstance(seen, BaseException):
            pending.extend(a for a in seen.args if isinstance(a, BaseException))
            pending.extend(e for e in (seen.__cause__, seen.__context__) if e is not None)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def inspect(source: str) -> CircuitInfo:
    try:
        circuit = load_qasm(source)
    except CircuitError as exc:
        return CircuitInfo(error=str(exc))
    return CircuitInfo(
        num_qubits=circuit.num_qubits,
        depth=circuit.depth(),
        num_clbits=circuit.num_clbits,
        measurements=int(circuit.count_ops().get("measure", 0)),
        parameters=tuple(sorted(p.name for p in circuit.parameters)),
    )
