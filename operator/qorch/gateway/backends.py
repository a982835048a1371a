"""The quantum side of a gateway: one backend, its primitives, its calibration.

``ibm`` talks to IBM Quantum through ``QiskitRuntimeService``; ``fake`` is
qiskit-ibm-runtime's local testing mode on a fake backend (noise from a real device's
calibration); ``aer`` is the ideal Aer simulator. All three run through the same
SamplerV2 / EstimatorV2 code path.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import select
import statistics
import threading
import uuid
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from qiskit import QuantumCircuit, qpy
from qiskit.exceptions import QiskitError
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import PassManager, Target, generate_preset_pass_manager

from qorch.api.backend import CalibrationSummary, Provider


class BackendConfigError(ValueError):
    """The gateway was started with a backend it cannot build."""


@dataclass(frozen=True)
class PreparedCircuit:
    """A circuit transpiled for the backend, plus what the primitive needs with it."""

    isa: QuantumCircuit
    observables: tuple[SparsePauliOp, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled through QPY: it round-trips ISA circuits and their layout exactly, and is
        # far cheaper than pickle for big ones (300k instructions: 1.2 s against 5.9 s).
        buffer = io.BytesIO()
        qpy.dump(self.isa, buffer)
        return (_prepared_from_qpy, (buffer.getvalue(), self.observables))


def _prepared_from_qpy(data: bytes, observables: tuple[SparsePauliOp, ...]) -> PreparedCircuit:
    return PreparedCircuit(qpy.load(io.BytesIO(data))[0], observables)


class Transpiler:
    """Transpiles for one target. It pickles as its Target alone (the pass manager is built
    again on first use), so it can be shipped to a worker process once."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._pass_manager: PassManager | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"target": self.target, "_pass_manager": None}

    def prepare(self, circuit: QuantumCircuit, observables: tuple[str, ...]) -> PreparedCircuit:
        if self._pass_manager is None:
            self._pass_manager = generate_preset_pass_manager(
                optimization_level=1, target=self.target
            )
        isa = self._pass_manager.run(circuit)
        ops = tuple(SparsePauliOp(o).apply_layout(isa.layout) for o in observables)
        return PreparedCircuit(isa, ops)


# IBM Quantum error codes (https://quantum.cloud.ibm.com/docs/errors) that blame the job
# itself: validation, transpilation, basis gates not available, backend not found.
PERMANENT_IBM_ERROR_CODES = frozenset({1002, 1003, 1005, 1007})
_IBM_ERROR_CODE = re.compile(r"Error code (\d+)")


def is_permanent_error(exc: BaseException) -> bool:
    """Whether running the same circuit on the same backend again would fail the same way.

    Permanent (retrying there is pointless): errors about the circuit or its fit to the
    target -- unbound parameters, instructions or sizes the target cannot take, qiskit and
    transpiler errors, IBM's validation error codes and other 4xx answers. Transient (worth
    a retry): timeouts, network and OS errors, provider outages, IBM runtime 5xx / 429 and
    job failures without a code that blames the job, and anything not recognised -- a retry
    costs less than giving up on a good circuit.
    """
    from qiskit.providers.exceptions import JobTimeoutError
    from qiskit_ibm_runtime.api.exceptions import RequestsApiError
    from qiskit_ibm_runtime.exceptions import (
        IBMBackendValueError,
        IBMError,
        IBMInputValueError,
        RuntimeJobFailureError,
        RuntimeJobMaxTimeoutError,
    )

    if isinstance(exc, TimeoutError | OSError | JobTimeoutError | RuntimeJobMaxTimeoutError):
        return False
    if isinstance(exc, RequestsApiError):
        return 400 <= exc.status_code < 500 and exc.status_code not in (408, 409, 429)
    if isinstance(exc, RuntimeJobFailureError):
        code = _IBM_ERROR_CODE.search(str(exc))
        return code is not None and int(code.group(1)) in PERMANENT_IBM_ERROR_CODES
    if isinstance(exc, IBMInputValueError | IBMBackendValueError):
        return True
    if isinstance(exc, IBMError):  # account, API and runtime service errors: the provider's
        return False
    return isinstance(exc, QiskitError | ValueError | TypeError)


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
        simulator_process: bool = False,
    ) -> None:
        self.provider = provider
        self._max_qubits = max_qubits
        self._context: Any = None  # the open Batch or Session, in those execution modes
        self.name = name
        self.backend = backend
        self.execution_mode = execution_mode
        self.service = service
        self.transpiler = Transpiler(backend.target)
        # fake / aer: simulate in a child process (see ``LocalJob``); built on first use.
        self.simulator_process = simulator_process
        self._simulator: ProcessPoolExecutor | None = None
        self._simulator_lock = threading.Lock()

    @property
    def num_qubits(self) -> int:
        return self._max_qubits or int(self.backend.num_qubits)

    def prepare(self, circuit: QuantumCircuit, observables: tuple[str, ...]) -> PreparedCircuit:
        """Transpile in this process (the gateway service does it in a worker process)."""
        return self.transpiler.prepare(circuit, observables)

    def run(self, primitive: str, circuits: list[PreparedCircuit], shots: int) -> Any:
        """Submit one batch (a job with one PUB per circuit); returns the primitive job.
        Blocks while a simulator process starts (call it from a thread)."""
        if not self.simulator_process:
            return self.run_here(primitive, circuits, shots)
        for _ in range(2):
            simulator = self._start_simulator()
            try:
                future = simulator.submit(_simulate, primitive, circuits, shots)
                break
            except BrokenProcessPool:  # killed (out of memory?): start a new one
                with self._simulator_lock:
                    if self._simulator is simulator:
                        self._simulator = None
        else:
            raise BrokenProcessPool("the simulator process cannot be started")
        return LocalJob(future, f"local-{uuid.uuid4()}")

    def start(self) -> None:
        """Start what ``run`` needs ahead of the first job (blocks: call it from a thread)."""
        if self.simulator_process:
            self._start_simulator()

    def _start_simulator(self) -> ProcessPoolExecutor:
        with self._simulator_lock:
            if self._simulator is None:
                self._simulator = ProcessPoolExecutor(
                    1,
                    mp_context=worker_context(),
                    initializer=_simulator_init,
                    initargs=(
                        self.provider,
                        self.name,
                        self.execution_mode,
                        self._max_qubits,
                        os.getpid(),
                    ),
                )
                # Start it now, in the caller's thread (seconds of imports).
                self._simulator.submit(int).result()
            return self._simulator

    def run_here(self, primitive: str, circuits: list[PreparedCircuit], shots: int) -> Any:
        """``run`` in this process."""
        from qiskit_ibm_runtime import EstimatorV2, SamplerV2

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local-mode notices, once per call otherwise
            mode = self._mode()
            if primitive == "sampler":
                return SamplerV2(mode=mode).run([(c.isa,) for c in circuits], shots=shots)
            estimator = EstimatorV2(mode=mode)
            estimator.options.default_shots = shots
            return estimator.run([(c.isa, list(c.observables)) for c in circuits])

    def close(self) -> None:
        with self._simulator_lock:
            if self._simulator is not None:
                self._simulator.shutdown(wait=False, cancel_futures=True)
                self._simulator = None

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

    def attach(self, remote_id: str) -> Any | None:
        """The provider's job ``remote_id`` (a primitive job: ``result()``, ``cancel()``), or
        None when this provider keeps no jobs to re-attach to (``fake`` and ``aer`` simulate
        in the gateway's own process tree; their jobs end with it). Raises when the provider
        cannot find it (IBM: ``RuntimeJobNotFound``) or cannot be reached."""
        if self.provider is not Provider.IBM or self.service is None:
            return None
        return self.service.job(remote_id)

    def pending_jobs(self) -> int | None:
        status = getattr(self.backend, "status", None)
        if self.provider is not Provider.IBM or status is None:
            return None
        return int(status().pending_jobs)

    def calibration(self) -> CalibrationSummary:
        target = self.backend.target
        two_q: list[float] = []
        one_q: list[float] = []
        for op_name in target.operation_names:
            if op_name in _NOT_GATES:
                continue
            for qargs, props in (target[op_name] or {}).items():
                if not qargs or props is None or props.error is None:
                    continue
                if len(qargs) == 2:
                    two_q.append(float(props.error))
                elif len(qargs) == 1 and props.error > 0:  # rz is virtual: error 0
                    one_q.append(float(props.error))
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
            medianSingleQubitError=med(one_q),
            medianReadoutError=med(readout),
            medianT1Seconds=med(t1),
            medianT2Seconds=med(t2),
        )


# Target operations that are not gates: their errors are not gate errors.
_NOT_GATES = frozenset({"measure", "reset", "delay", "barrier"})


class LocalJob:
    """A ``fake`` / ``aer`` job running in the gateway's simulator process. Aer holds the GIL
    for a whole simulation (4 s of a 4 s run, measured), so in a thread of the gateway it
    would freeze the event loop: no health checks, no status answers until it ends. The id
    is the gateway's own: local runs leave nothing to re-attach to."""

    def __init__(self, future: Future[Any], job_id: str) -> None:
        self._future = future
        self._job_id = job_id

    def job_id(self) -> str:
        return self._job_id

    def result(self) -> Any:
        try:
            return self._future.result()
        except BrokenProcessPool:
            raise MemoryError("the simulator process died (out of memory?)") from None

    def cancel(self) -> bool:
        return self._future.cancel()  # False once it runs: a simulation cannot be stopped

    def usage(self) -> float:
        return 0.0


# Set once in the simulator process by its initializer; never in the gateway process.
_simulator_adapter: QuantumBackendAdapter | None = None


def _simulator_init(
    provider: Provider, name: str, execution_mode: str, max_qubits: int | None, gateway_pid: int
) -> None:
    global _simulator_adapter
    exit_with(gateway_pid)
    _simulator_adapter = build_backend(
        provider, name, execution_mode=execution_mode, max_qubits=max_qubits, isolate=False
    )


def _simulate(primitive: str, circuits: list[PreparedCircuit], shots: int) -> Any:
    assert _simulator_adapter is not None, "runs in the simulator process only"
    return _simulator_adapter.run_here(primitive, circuits, shots).result()


def worker_context() -> multiprocessing.context.BaseContext:
    """How the gateway starts its worker processes (transpiler, simulator): forked from a
    fork server that imported qiskit once, so a worker starts in milliseconds, from a
    process without threads. Workers end with the gateway (``exit_with``); the fork
    server ends with its last client."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qorch.gateway.service"])
    return context


def exit_with(gateway_pid: int) -> None:
    """End this worker process when the gateway ends, even by SIGKILL: a pool worker would
    otherwise wait on its task queue forever (it holds the queue's other end itself)."""

    def watch() -> None:
        try:
            pidfd = os.pidfd_open(gateway_pid)
        except OSError:  # gone already
            os._exit(0)
        select.select([pidfd], [], [])  # readable once the process has exited
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-gateway", daemon=True).start()


def build_backend(
    provider: Provider,
    name: str | None,
    *,
    token: str | None = None,
    instance: str | None = None,
    execution_mode: str = "job",
    max_qubits: int | None = None,
    isolate: bool = True,
) -> QuantumBackendAdapter:
    """``isolate``: simulate ``fake`` / ``aer`` jobs in a child process (``LocalJob``)."""
    if provider is Provider.AER:
        from qiskit_aer import AerSimulator

        return QuantumBackendAdapter(
            provider,
            name or "aer_simulator",
            AerSimulator(),
            max_qubits=max_qubits or 30,
            execution_mode=execution_mode,
            simulator_process=isolate,
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
        return QuantumBackendAdapter(
            provider,
            name,
            fake,
            execution_mode=execution_mode,
            simulator_process=isolate,
        )
    if not token:
        raise BackendConfigError(
            "provider 'ibm' needs a token (mount the Secret and pass --token-file)"
        )
    from qiskit_ibm_runtime import QiskitRuntimeService

    service = QiskitRuntimeService(channel="ibm_quantum_platform", token=token, instance=instance)
    return QuantumBackendAdapter(
        provider, name, service.backend(name), execution_mode=execution_mode, service=service
    )
