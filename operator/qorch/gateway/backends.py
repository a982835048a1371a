"""The quantum side of a gateway: one backend, its primitives, its calibration.

``ibm`` talks to IBM Quantum through ``QiskitRuntimeService``; ``fake`` is
qiskit-ibm-runtime's local testing mode on a fake backend (noise from a real device's
calibration); ``aer`` is the ideal Aer simulator. All three run through the same
SamplerV2 / EstimatorV2 code path.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from typing import Any

from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager

from qorch.api.backend import CalibrationSummary, Provider


class BackendConfigError(ValueError):
    """The gateway was started with a backend it cannot build."""


@dataclass(frozen=True)
class PreparedCircuit:
    """A circuit transpiled for the backend, plus what the primitive needs with it."""

    isa: QuantumCircuit
    observables: tuple[SparsePauliOp, ...] = ()


class QuantumBackendAdapter:
    def __init__(
        self,
        provider: Provider,
        name: str,
        backend: Any,
        *,
        execution_mode: str = "job",
        service: Any = None,
        max_qubits: int | None = None,
    ) -> None:
        self.provider = provider
        self._max_qubits = max_qubits
        self._context: Any = None  # the open Batch or Session, in those execution modes
        self.name = name
        self.backend = backend
        self.execution_mode = execution_mode
        self.service = service
        self._pass_manager = generate_preset_pass_manager(optimization_level=1, backend=backend)

    @property
    def num_qubits(self) -> int:
        return self._max_qubits or int(self.backend.num_qubits)

    def prepare(self, circuit: QuantumCircuit, observables: tuple[str, ...]) -> PreparedCircuit:
        isa = self._pass_manager.run(circuit)
        ops = tuple(SparsePauliOp(o).apply_layout(isa.layout) for o in observables)
        return PreparedCircuit(isa, ops)

    def run(self, primitive: str, circuits: list[PreparedCircuit], shots: int) -> Any:
        """Submit one batch (a job with one PUB per circuit); returns the primitive job."""
        from qiskit_ibm_runtime import EstimatorV2, SamplerV2

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local-mode notices, once per call otherwise
            mode = self._mode()
            if primitive == "sampler":
                return SamplerV2(mode=mode).run([(c.isa,) for c in circuits], shots=shots)
            estimator = EstimatorV2(mode=mode)
            estimator.options.default_shots = shots
            return estimator.run([(c.isa, list(c.observables)) for c in circuits])

    def _mode(self) -> Any:
        """``job``: each batch is its own job. ``batch`` / ``session``: jobs share one
        long-lived Batch or Session (IBM schedules them together); a new one is opened
        when the previous one has closed or expired."""
        if self.execution_mode == "job":
            return self.backend
        from qiskit_ibm_runtime import Batch, Session

        current = self._context
        if current is None or not getattr(current, "_active", True):
            kind = Batch if self.execution_mode == "batch" else Session
            current = kind(backend=self.backend)
            self._context = current
        return current

    def pending_jobs(self) -> int | None:
        status = getattr(self.backend, "status", None)
        if self.provider is not Provider.IBM or status is None:
            return None
        return int(status().pending_jobs)

    def calibration(self) -> CalibrationSummary:
        target = self.backend.target
        two_q: list[float] = []
        for op_name in target.operation_names:
            for qargs, props in (target[op_name] or {}).items():
                if qargs and len(qargs) == 2 and props is not None and props.error is not None:
                    two_q.append(float(props.error))
        readout = [
            float(p.error)
            for q, p in (target["measure"].items() if "measure" in target else [])
            if p is not None and p.error is not None
        ]
        qprops = [p for p in (target.qubit_properties or []) if p is not None]
        t1 = [float(p.t1) for p in qprops if getattr(p, "t1", None)]
        t2 = [float(p.t2) for p in qprops if getattr(p, "t2", None)]

        def med(values: list[float]) -> float | None:
            return statistics.median(values) if values else None

        return CalibrationSummary(
            medianTwoQubitError=med(two_q),
            medianReadoutError=med(readout),
            medianT1Seconds=med(t1),
            medianT2Seconds=med(t2),
        )


def build_backend(
    provider: Provider,
    name: str | None,
    *,
    token: str | None = None,
    instance: str | None = None,
    execution_mode: str = "job",
    max_qubits: int | None = None,
) -> QuantumBackendAdapter:
    if provider is Provider.AER:
        from qiskit_aer import AerSimulator

        return QuantumBackendAdapter(
            provider,
            name or "aer_simulator",
            AerSimulator(),
            max_qubits=max_qubits or 30,
            execution_mode=execution_mode,
        )
    if not name:
        raise BackendConfigError(f"provider {provider.value!r} needs a backend name")
    if provider is Provider.FAKE:
        from qiskit_ibm_runtime.fake_provider import FakeProviderForBackendV2

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # some fakes warn when the provider loads
                fake = FakeProviderForBackendV2().backend(name)
        except Exception:  # QiskitBackendNotFoundError
            raise BackendConfigError(
                f"unknown fake backend {name!r}; known: fake_manila, fake_perth, fake_torino, "
                "fake_sherbrooke, ... (qiskit_ibm_runtime.fake_provider)"
            ) from None
        return QuantumBackendAdapter(provider, name, fake, execution_mode=execution_mode)
    if not token:
        raise BackendConfigError(
            "provider 'ibm' needs a token (mount the Secret and pass --token-file)"
        )
    from qiskit_ibm_runtime import QiskitRuntimeService

    service = QiskitRuntimeService(channel="ibm_quantum_platform", token=token, instance=instance)
    return QuantumBackendAdapter(
        provider, name, service.backend(name), execution_mode=execution_mode, service=service
    )
