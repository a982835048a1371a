"""Semantic checks the schema cannot express: the DAG, circuits, capacity, backends."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from qorch.api.workflow import ENV_NAME, LABEL_VALUE, QUALIFIED_NAME, HybridWorkflowSpec, Primitive
from qorch.orchestrator.snapshot import BackendInfo, CircuitInfo


@dataclass(frozen=True)
class SpecError:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def find_cycle(spec: HybridWorkflowSpec) -> list[str] | None:
    """Return one dependency cycle as a path of names, or None."""
    deps = {s.name: [d for d in s.dependsOn] for s in spec.subtasks}
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in deps[node]:
            if nxt not in deps:
                continue
            if colour[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == white and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = black
        return None

    for name in deps:
        if colour[name] == white and (cycle := visit(name)):
            return cycle
    return None


def validate(
    spec: HybridWorkflowSpec,
    circuits: Mapping[str, CircuitInfo],
    backends: Mapping[str, BackendInfo],
) -> list[SpecError]:
    errors: list[SpecError] = []
    names = [s.name for s in spec.subtasks]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            errors.append(SpecError(f"spec.subtasks[{i}].name", f"duplicate subtask name {name!r}"))
        seen.add(name)
    for i, sub in enumerate(spec.subtasks):
        for j, dep in enumerate(sub.dependsOn):
            if dep not in seen:
                errors.append(
                    SpecError(f"spec.subtasks[{i}].dependsOn[{j}]", f"unknown subtask {dep!r}")
                )
            elif dep == sub.name:
                errors.append(
                    SpecError(
                        f"spec.subtasks[{i}].dependsOn[{j}]",
                        f"subtask {sub.name!r} depends on itself",
                    )
                )
    errors.extend(_pod_strings(spec))
    cycle = find_cycle(spec)
    if cycle and len(cycle) > 2:
        errors.append(SpecError("spec.subtasks", "dependency cycle: " + " -> ".join(cycle)))

    for j, backend in enumerate(spec.resources.quantumBackends):
        if backend not in backends:
            errors.append(
                SpecError(
                    f"spec.resources.quantumBackends[{j}]", f"unknown QuantumBackend {backend!r}"
                )
            )
    wants_gpu = any(
        (s.classical and s.classical.resources.gpu) or (s.variational and s.variational.wants_gpu)
        for s in spec.subtasks
    )
    if wants_gpu and not any(p.gpu for p in spec.resources.classicalPools):
        errors.append(
            SpecError(
                "spec.resources.classicalPools", "a subtask requests GPUs but no pool has gpu: true"
            )
        )

    largest_classical = max((p.maxQubits for p in spec.resources.classicalPools), default=0)
    largest_quantum = max(
        (backends[b].num_qubits for b in spec.resources.quantumBackends if b in backends), default=0
    )
    for i, sub in enumerate(spec.subtasks):
        if sub.circuit is None:
            continue
        info = circuits.get(sub.name)
        where = "qasm" if sub.circuit.qasm is not None else "configMapRef"
        if info is None or info.error:
            reason = (info.error if info else None) or "circuit was not parsed"
            errors.append(SpecError(f"spec.subtasks[{i}].circuit.{where}", reason))
            continue
        if info.num_qubits is not None and info.num_qubits > max(
            largest_classical, largest_quantum
        ):
            errors.append(
                SpecError(
                    f"spec.subtasks[{i}].circuit.{where}",
                    f"circuit needs {info.num_qubits} qubits but the largest allowed resource has "
                    f"{max(largest_classical, largest_quantum)} (classical pools up to "
                    f"{largest_classical}, quantum backends up to {largest_quantum})",
                )
            )
        if sub.circuit.primitive is Primitive.SAMPLER and (
            info.measurements == 0 or info.num_clbits == 0
        ):
            errors.append(
                SpecError(
                    f"spec.subtasks[{i}].circuit.{where}",
                    "a sampler circuit needs measurements (e.g. `bit[n] c; c = measure q;`); "
                    "for expectation values use primitive: estimator",
                )
            )
        if info.parameters:
            shown = ", ".join(info.parameters[:10])
            more = f" and {len(info.parameters) - 10} more" if len(info.parameters) > 10 else ""
            errors.append(
                SpecError(
                    f"spec.subtasks[{i}].circuit.{where}",
                    f"unbound parameters: {shown}{more}; give them values in the circuit",
                )
            )
        if sub.circuit.observables and info.num_qubits is not None:
            for k, obs in enumerate(sub.circuit.observables):
                if len(obs) != info.num_qubits or set(obs) - set("IXYZ"):
                    errors.append(
                        SpecError(
                            f"spec.subtasks[{i}].circuit.observables[{k}]",
                            f"{obs!r} must be a Pauli string of {info.num_qubits} letters "
                            "from IXYZ",
                        )
                    )
    errors.extend(_variational(spec, circuits, max(largest_classical, largest_quantum)))
    return errors


def _variational(
    spec: HybridWorkflowSpec, circuits: Mapping[str, CircuitInfo], largest: int
) -> list[SpecError]:
    """An ansatz must parse, have parameters, fit a resource; the Hamiltonian's terms and
    the initial point must match it."""
    errors: list[SpecError] = []
    for i, sub in enumerate(spec.subtasks):
        var = sub.variational
        if var is None:
            continue
        at = f"spec.subtasks[{i}].variational"
        if not spec.resources.classicalPools:
            errors.append(
                SpecError(
                    "spec.resources.classicalPools",
                    f"subtask {sub.name!r} is variational: its optimizer runs in a pod, which "
                    "needs a classical pool",
                )
            )
        where = f"{at}.{'qasm' if var.qasm is not None else 'configMapRef'}"
        info = circuits.get(sub.name)
        if info is None or info.error:
            errors.append(SpecError(where, (info.error if info else None) or "ansatz not parsed"))
            continue
        if not info.parameters:
            errors.append(
                SpecError(
                    where,
                    "the ansatz has no parameters to optimise (declare them as "
                    "`input float[64] theta;`)",
                )
            )
        elif var.initialPoint is not None and len(var.initialPoint) != len(info.parameters):
            errors.append(
                SpecError(
                    f"{at}.initialPoint",
                    f"has {len(var.initialPoint)} values; the "
                    f"ansatz has {len(info.parameters)} parameters",
                )
            )
        qubits = info.num_qubits
        if qubits is not None and qubits > largest:
            errors.append(
                SpecError(
                    where,
                    f"ansatz needs {qubits} qubits but the largest allowed resource has {largest}",
                )
            )
        for k, term in enumerate(var.hamiltonian):
            if qubits is not None and len(term.pauli) != qubits:
                errors.append(
                    SpecError(
                        f"{at}.hamiltonian[{k}].pauli",
                        f"{term.pauli!r} must have one letter per qubit of the ansatz ({qubits})",
                    )
                )
    return errors


_QUALIFIED = re.compile(QUALIFIED_NAME)
_LABEL_VALUE = re.compile(LABEL_VALUE)
_ENV_NAME = re.compile(ENV_NAME)


def _pod_strings(spec: HybridWorkflowSpec) -> list[SpecError]:
    """Map keys that end up in pods and that the apiserver would refuse there (the CRD
    schema cannot check map keys cheaply): caught here, before any pod exists."""
    errors: list[SpecError] = []
    for i, sub in enumerate(spec.subtasks):
        if sub.classical is None:
            continue
        for key in sub.classical.annotations:
            if not _QUALIFIED.match(key):
                errors.append(
                    SpecError(
                        f"spec.subtasks[{i}].classical.annotations[{key!r}]",
                        "not a valid annotation key (an optional DNS prefix and '/', then up "
                        "to 63 of [A-Za-z0-9-_.], starting and ending alphanumeric)",
                    )
                )
        for key in sub.classical.env:
            if not _ENV_NAME.match(key):
                errors.append(
                    SpecError(
                        f"spec.subtasks[{i}].classical.env[{key!r}]",
                        "not a valid environment variable name ([-._a-zA-Z][-._a-zA-Z0-9]*)",
                    )
                )
    for j, pool in enumerate(spec.resources.classicalPools):
        for key, value in pool.nodeSelector.items():
            if not _QUALIFIED.match(key):
                errors.append(
                    SpecError(
                        f"spec.resources.classicalPools[{j}].nodeSelector[{key!r}]",
                        "not a valid label key",
                    )
                )
            if not _LABEL_VALUE.match(value):
                errors.append(
                    SpecError(
                        f"spec.resources.classicalPools[{j}].nodeSelector[{key!r}]",
                        f"{value!r} is not a valid label value (up to 63 of [A-Za-z0-9-_.])",
                    )
                )
    return errors
