"""A fake device's noise model, made cheap for Aer to take on every run.

Aer hands the whole noise model to its C++ simulator on every ``run``, which rebuilds every
error from it before simulating anything. On fake_manila that fixed part was 28 ms of a
one-circuit call whose simulation takes 1 ms, and 97 ms on fake_kolkata (191 errors):
the gateway paid it once per batch. Three things cut it, each keeping the simulation
the same:

- ``SerialisedOnceNoiseModel``: the JSON-safe dict Aer makes of the model
  (``to_dict(serializable=True)``, a JSON round trip of every error) is made once.
- ``NoiseModel.for_circuits``: a run gets only the errors its circuits can meet (those of
  the operations on the qubits they use, the readout errors of the qubits they measure).
  An error on a qubit or a gate no circuit touches is never applied, so the simulation,
  random draws included, is the one the whole model gives.
- Each error of that model is one Kraus channel (``Kraus(error)``): the same channel as
  the mixture of circuits a device model builds (e.g. 12 Pauli-and-reset circuits for a
  gate's depolarizing plus thermal relaxation), which Aer rebuilds far faster. With the
  density-matrix method (Aer's choice for small noisy circuits) the counts are the same,
  seed for seed; with the statevector method each shot draws its trajectory from the
  same channel through other random numbers, so counts agree in distribution, not seed
  for seed.

Measured in one process (``tests/unit/test_gateway_noise.py`` checks the sameness): a
one-circuit GHZ-3 run on fake_manila 28 -> 3 ms; GHZ-5 on fake_kolkata 97 -> 4 ms.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from qiskit import QuantumCircuit
from qiskit.circuit import ControlFlowOp, Instruction
from qiskit.quantum_info import Kraus
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel, QuantumError

# Distinct operation sets whose restricted models one noise model keeps (most recent).
RESTRICTED_MODELS_KEPT = 16
# A run that meets more than this share of the model's gate errors gets the whole model:
# building the restricted one (about 1.2 s for all of fake_kolkata's errors) would cost
# more than the errors left out save, and its copy would hold most of the model again.
RESTRICT_UP_TO_SHARE = 0.5

Operation = tuple[str, tuple[int, ...]]


class SerialisedOnceNoiseModel(NoiseModel):  # type: ignore[misc]
    """A ``NoiseModel`` nobody changes any more: ``to_dict(serializable=True)`` is made once
    and the same dict returned after (shared: do not change it), and the models restricted
    to what a batch uses (``for_circuits``) are kept. A copy or a pickle is a plain
    ``NoiseModel`` with the same errors, free to change: Aer deep-copies the model to add
    the errors a circuit carries, and that copy must serialise afresh."""

    def to_dict(self, serializable: bool = False) -> dict[str, Any]:
        if not serializable:
            return super().to_dict(serializable)  # type: ignore[no-any-return]
        cached: dict[str, Any] | None = self.__dict__.get("_serialised")
        if cached is None:
            cached = super().to_dict(True)
            self.__dict__["_serialised"] = cached
        return cached

    def for_circuits(self, circuits: Sequence[QuantumCircuit]) -> NoiseModel:
        """The model a run of ``circuits`` needs: this one's errors on the operations and
        qubits they use, each as one Kraus channel (the module's doc says why the
        simulation stays the same). This model itself where that cannot be told from
        the circuits (control flow, labelled or open-controlled gates, initialisation)
        or where they meet most of its errors anyway (``RESTRICT_UP_TO_SHARE``)."""
        used = operations_used(circuits)
        if used is None:
            return self
        whole = sum(len(errors) for errors in self._local_quantum_errors.values())
        if sum(1 for name, qubits in used if qubits in self._local_quantum_errors.get(name, ())) > (
            RESTRICT_UP_TO_SHARE * whole
        ):
            return self
        # Runs may come from several threads (the gateway's batches): one at a time here.
        with self.__dict__.setdefault("_lock", threading.Lock()):
            restricted: OrderedDict[frozenset[Operation], NoiseModel] = self.__dict__.setdefault(
                "_restricted", OrderedDict()
            )
            model = restricted.get(used)
            if model is None:
                model = self._restricted_to(used)
                restricted[used] = model
                if len(restricted) > RESTRICTED_MODELS_KEPT:
                    restricted.popitem(last=False)
            else:
                restricted.move_to_end(used)
            return model

    def _restricted_to(self, used: frozenset[Operation]) -> NoiseModel:
        kraus: dict[tuple[str, tuple[int, ...] | None], QuantumError] = self.__dict__.setdefault(
            "_kraus", {}
        )

        def as_kraus(error: QuantumError, key: tuple[str, tuple[int, ...] | None]) -> Any:
            if key not in kraus:
                kraus[key] = QuantumError(Kraus(error))
            return kraus[key]

        names = {name for name, _ in used}
        measured = {qubits for name, qubits in used if name == "measure"}
        model = SerialisedOnceNoiseModel(basis_gates=self.basis_gates)
        for name, error in self._default_quantum_errors.items():
            if name in names:
                model.add_all_qubit_quantum_error(as_kraus(error, (name, None)), name, False)
        for name, errors in self._local_quantum_errors.items():
            for qubits, error in errors.items():
                key = (name, tuple(qubits))
                if key in used:
                    model.add_quantum_error(as_kraus(error, key), name, qubits, False)
        if measured and self._default_readout_error is not None:
            model.add_all_qubit_readout_error(self._default_readout_error, False)
        for qubits, error in self._local_readout_errors.items():
            if tuple(qubits) in measured:
                model.add_readout_error(error, qubits, False)
        # Delays are noised by a pass (relaxation over the delay's length) that puts its
        # errors into the circuit; Aer adds those to its own copy of the model.
        model._custom_noise_passes = list(self._custom_noise_passes)
        return model

    def plain(self) -> NoiseModel:
        """A plain ``NoiseModel`` sharing this one's errors (nothing cached)."""
        clone = NoiseModel.__new__(NoiseModel)
        clone.__dict__.update({k: v for k, v in self.__dict__.items() if k not in _CACHES})
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> NoiseModel:
        clone = self.plain()
        memo[id(self)] = clone
        clone.__dict__ = copy.deepcopy(clone.__dict__, memo)
        return clone

    def __reduce__(self) -> Any:
        return self.plain().__reduce__()


_CACHES = frozenset({"_serialised", "_restricted", "_kraus", "_lock"})


def operations_used(circuits: Iterable[QuantumCircuit]) -> frozenset[Operation] | None:
    """Each (operation name, qubit indices) the circuits hold, as Aer will match them to
    the noise model's errors; None when Aer may run other operations than those written
    (control flow it inlines, ``initialize`` it expands, open-controlled gates it adds X
    gates to) or match errors by something else than the name (a labelled gate)."""
    used: set[Operation] = set()
    for circuit in circuits:
        index = {qubit: i for i, qubit in enumerate(circuit.qubits)}
        for item in circuit.data:
            operation: Instruction = item.operation
            name = operation.name
            if (
                isinstance(operation, ControlFlowOp)
                or name == "initialize"
                or "_o" in name
                or getattr(operation, "label", None)
            ):
                return None
            used.add((name, tuple(index[q] for q in item.qubits)))
    return frozenset(used)


class BatchNoiseSimulator(AerSimulator):  # type: ignore[misc]
    """The fake backend's Aer simulator, given for each run only the noise its circuits
    meet (``SerialisedOnceNoiseModel.for_circuits``); a run that names a noise model of
    its own keeps it."""

    def run(
        self,
        circuits: QuantumCircuit | list[QuantumCircuit],
        parameter_binds: Any = None,
        **run_options: Any,
    ) -> Any:
        noise = getattr(self.options, "noise_model", None)
        if "noise_model" not in run_options and isinstance(noise, SerialisedOnceNoiseModel):
            circuits = [circuits] if isinstance(circuits, QuantumCircuit) else list(circuits)
            run_options["noise_model"] = noise.for_circuits(circuits)
        return super().run(circuits, parameter_binds, **run_options)
