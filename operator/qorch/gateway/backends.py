"""The quantum side of a gateway: one backend, its primitives, its calibration.

``ibm`` talks to IBM Quantum through ``QiskitRuntimeService``; ``fake`` is
qiskit-ibm-runtime's local testing mode on a fake backend (noise from a real device's
calibration); ``aer`` is the ideal Aer simulator. All three run through the same
SamplerV2 / EstimatorV2 code path.

A ``fake`` backend can take its calibration from a file (``--calibration-file``): qiskit
``BackendProperties`` JSON as IBM serves it (a ``props_*.json`` of qiskit-ibm-runtime, one
day of a calibration trace, a ConfigMap a platform team updates). The file is read again
when it changes, and both what the gateway reports (``calibration``) and the noise its
simulations apply follow the new day: the fake backend, its target and its noise model are
built again from the new properties, and the simulator process is replaced.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import math
import multiprocessing
import os
import re
import select
import statistics
import threading
import uuid
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qiskit import QuantumCircuit, qpy
from qiskit.exceptions import QiskitError
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import PassManager, Target, generate_preset_pass_manager

from qorch.api.backend import CalibrationSummary, Provider


class BackendConfigError(ValueError):
    """The gateway was started with a backend it cannot build."""


class CalibrationFileError(BackendConfigError):
    """A calibration file that cannot be the device's calibration; the message names the
    file and what is wrong with it."""


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

    @property
    def ready(self) -> bool:
        """Whether the pass manager is built (``build``): a first use costs no more."""
        return self._pass_manager is not None

    def build(self) -> None:
        """Build the pass manager (tens of milliseconds; blocks: call it from a thread)."""
        if self._pass_manager is None:
            self._pass_manager = generate_preset_pass_manager(
                optimization_level=1, target=self.target
            )

    def prepare(self, circuit: QuantumCircuit, observables: tuple[str, ...]) -> PreparedCircuit:
        self.build()
        assert self._pass_manager is not None
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
        calibration_file: Path | None = None,
    ) -> None:
        self.provider = provider
        self._max_qubits = max_qubits
        self._context: Any = None  # the open Batch or Session, in those execution modes
        # fake / aer: (backend, sampler, estimator) built for that backend object.
        self._local_primitives: tuple[Any, Any, Any] | None = None
        self.name = name
        self.backend = backend
        self.execution_mode = execution_mode
        self.service = service
        self.transpiler = Transpiler(backend.target)
        # fake / aer: simulate in a child process (see ``LocalJob``); built on first use.
        # A small lone circuit runs in a thread here instead (``runs_here``).
        self.simulator_process = simulator_process
        self._simulator: ProcessPoolExecutor | None = None
        self._simulator_lock = threading.Lock()
        self._small_runs: ThreadPoolExecutor | None = None
        # fake: the calibration file, the raw properties in use (None: the fake backend's
        # own) and the file's stat key when it was last read.
        self.calibration_file = calibration_file
        self.properties: dict[str, Any] | None = None
        self._calibration_seen: tuple[int, int, int] | None = None
        self._calibration_lock = threading.Lock()

    @property
    def calibration_date(self) -> str | None:
        """The device's own ``last_update_date`` of the calibration read from the file."""
        if self.properties is None:
            return None
        value = self.properties.get("last_update_date")
        return str(value) if value is not None else None

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
        if runs_here(circuits, shots) and self._local_primitives is not None:
            if self._small_runs is None:
                self._small_runs = ThreadPoolExecutor(1, thread_name_prefix="small-runs")
            future = self._small_runs.submit(self._result_here, primitive, circuits, shots)
            return LocalJob(future, f"local-{uuid.uuid4()}")
        for _ in range(2):
            # Under the lock: a new calibration cannot retire the process in between.
            with self._simulator_lock:
                simulator = self._simulator_locked()
                try:
                    future = simulator.submit(_simulate, primitive, circuits, shots)
                    break
                except BrokenProcessPool:  # killed (out of memory?): start a new one
                    self._simulator = None
        else:
            raise BrokenProcessPool("the simulator process cannot be started")
        return LocalJob(future, f"local-{uuid.uuid4()}")

    def _result_here(self, primitive: str, circuits: list[PreparedCircuit], shots: int) -> Any:
        return self.run_here(primitive, circuits, shots).result()

    def start(self) -> None:
        """Start what ``run`` needs ahead of the first job (blocks: call it from a thread):
        the simulator process, and the primitives a small circuit runs on here."""
        if self.simulator_process:
            with self._simulator_lock:
                self._simulator_locked()
            if self.provider is not Provider.IBM and self.execution_mode == "job":
                # Aer's first run in a process takes most of a second: not a job's.
                _, sampler, _ = self._primitives()
                probe = QuantumCircuit(1, 1)
                probe.measure(0, 0)
                sampler.run([(probe,)], shots=1).result()

    def _simulator_locked(self) -> ProcessPoolExecutor:
        """The simulator process, started if there is none (hold ``_simulator_lock``)."""
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
                    self.properties,
                ),
            )
            # Start it now, in the caller's thread (seconds of imports).
            self._simulator.submit(int).result()
        return self._simulator

    def reload_calibration(self) -> bool:
        """Read the calibration file again when it changed since it was last read (another
        inode, modification time or size: a ConfigMap update swaps the file); True when
        the backend now follows a new calibration. A file that cannot be this device's
        calibration raises ``CalibrationFileError`` once per change, and the backend keeps
        the calibration it has. Blocks (file I/O, building the target): call it from a
        thread.

        What changes: the backend object (target, properties, noise model), the transpiler
        (layouts follow the new errors) and the simulator process, which is replaced; a
        simulation running in the old one finishes there. Circuits transpiled for the old
        target stay valid: the device (qubits, couplings, gates) is checked to be the same.
        """
        path = self.calibration_file
        if path is None:
            return False
        with self._calibration_lock:
            try:
                stat = os.stat(path)
                key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            except OSError as exc:
                if self._calibration_seen == _GONE:
                    return False
                self._calibration_seen = _GONE
                raise CalibrationFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
            if key == self._calibration_seen:
                return False
            self._calibration_seen = key
            raw = read_properties(path)
            backend = backend_with_properties(self.backend, raw, str(path))
            self.backend = backend
            self.transpiler = Transpiler(backend.target)
            self.properties = raw
            with self._simulator_lock:
                old, self._simulator = self._simulator, None
            if old is not None:
                old.shutdown(wait=False)  # what it runs finishes; the next run starts anew
            return True

    def run_here(self, primitive: str, circuits: list[PreparedCircuit], shots: int) -> Any:
        """``run`` in this process. A fake or Aer backend in ``job`` mode runs its
        primitives directly (``_run_local``); in ``batch`` or ``session`` mode it goes
        through qiskit-ibm-runtime's local mode inside a Batch or Session, as IBM would."""
        if self.provider is not Provider.IBM and self.execution_mode == "job":
            return self._run_local(primitive, circuits, shots)
        from qiskit_ibm_runtime import EstimatorV2, SamplerV2

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local-mode notices, once per call otherwise
            mode = self._mode()
            if primitive == "sampler":
                return SamplerV2(mode=mode).run([(c.isa,) for c in circuits], shots=shots)
            estimator = EstimatorV2(mode=mode)
            estimator.options.default_shots = shots
            return estimator.run([(c.isa, list(c.observables)) for c in circuits])

    def _primitives(self) -> tuple[Any, Any, Any]:
        """(backend, sampler, estimator) for the current backend object, built once."""
        from qiskit.primitives import BackendEstimatorV2, BackendSamplerV2

        backend = self.backend
        primitives = self._local_primitives
        if primitives is None or primitives[0] is not backend:
            prepare_noise_model(backend)
            primitives = (
                backend,
                BackendSamplerV2(backend=backend),
                BackendEstimatorV2(backend=backend),
            )
            self._local_primitives = primitives
        return primitives

    def _run_local(self, primitive: str, circuits: list[PreparedCircuit], shots: int) -> Any:
        """What qiskit-ibm-runtime's local mode runs for a fake or Aer backend
        (``BackendSamplerV2`` / ``BackendEstimatorV2`` on it, the estimator at precision
        1/sqrt(shots)), without what local mode adds to every call: a deep copy of its
        options, backend included, so a fake backend builds its noise model again each time
        (0.11 s of a 0.13 s one-circuit call on fake_manila, measured). The primitives are
        built once per backend object; a new calibration is a new backend."""
        _, sampler, estimator = self._primitives()
        if primitive == "sampler":
            return sampler.run([(c.isa,) for c in circuits], shots=shots)
        return estimator.run(
            [(c.isa, list(c.observables)) for c in circuits], precision=1 / math.sqrt(shots)
        )

    def close(self) -> None:
        with self._simulator_lock:
            if self._simulator is not None:
                self._simulator.shutdown(wait=False, cancel_futures=True)
                self._simulator = None
        if self._small_runs is not None:
            self._small_runs.shutdown(wait=False, cancel_futures=True)
            self._small_runs = None

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


# The stat key of a calibration file that could not be read (reported once).
_GONE = (-1, -1, -1)
# Target operations that are not gates: their errors are not gate errors.
_NOT_GATES = frozenset({"measure", "reset", "delay", "barrier"})


# A lone circuit this small simulates in the gateway's own process, in a thread: the hop to
# the simulator process costs more than the simulation (a GHZ-3 at 1,000 shots: 2-4 ms
# either way, plus ~2 ms for the hop, measured). Aer holds the GIL while it simulates, so
# the work is bounded: shots x operations x 2^qubits touched (Aer simulates only those)
# under SMALL_RUN_WORK, no loops or branches (one operation, any number of iterations), no
# measurement or reset before the end (each shot its own trajectory), few observables.
SMALL_RUN_QUBITS = 6
SMALL_RUN_OPERATIONS = 200
SMALL_RUN_SHOTS = 10_000
SMALL_RUN_WORK = 10_000_000
SMALL_RUN_OBSERVABLE_TERMS = 16


def runs_here(circuits: list[PreparedCircuit], shots: int) -> bool:
    """Whether a run is one circuit small enough to simulate in the gateway's process."""
    if len(circuits) != 1 or shots > SMALL_RUN_SHOTS:
        return False
    prepared = circuits[0]
    isa = prepared.isa
    if len(isa.data) > SMALL_RUN_OPERATIONS:
        return False
    if sum(len(o) for o in prepared.observables) > SMALL_RUN_OBSERVABLE_TERMS:
        return False
    touched: set[Any] = set()
    measured: set[Any] = set()
    for instruction in isa.data:
        operation = instruction.operation
        if operation.name == "reset" or getattr(operation, "blocks", ()):
            return False
        if measured.intersection(instruction.qubits):
            return False  # an operation after a measurement of its qubit
        if operation.name == "measure":
            measured.update(instruction.qubits)
        touched.update(instruction.qubits)
    width = len(touched)
    return width <= SMALL_RUN_QUBITS and shots * len(isa.data) * 2**width <= SMALL_RUN_WORK


SIMULATOR_DIED = "the simulator process died (out of memory?)"


class LocalJobCancelledError(Exception):
    """A local job was cancelled before it started (``LocalJob.wait``)."""


class LocalJob:
    """A ``fake`` / ``aer`` job running in the gateway's simulator process. Aer holds the GIL
    for a whole simulation (4 s of a 4 s run, measured), so in a thread of the gateway it
    would freeze the event loop: no health checks, no status answers until it ends; only a
    lone small circuit (``runs_here``) runs in a thread here. The id is the gateway's own:
    local runs leave nothing to re-attach to."""

    def __init__(self, future: Future[Any], job_id: str) -> None:
        self._future = future
        self._job_id = job_id

    def job_id(self) -> str:
        return self._job_id

    def result(self) -> Any:
        try:
            return self._future.result()
        except BrokenProcessPool:
            raise MemoryError(SIMULATOR_DIED) from None

    async def wait(self) -> Any:
        """``result()`` awaited on the event loop, without a thread blocked on it. A job
        cancelled before it started raises ``LocalJobCancelledError``: an ``Exception``, not the
        ``CancelledError`` that would end the awaiting task (the gateway's dispatcher)."""
        try:
            return await asyncio.wrap_future(self._future)
        except BrokenProcessPool:
            raise MemoryError(SIMULATOR_DIED) from None
        except asyncio.CancelledError:
            if self._future.cancelled():
                raise LocalJobCancelledError(f"{self._job_id} was cancelled") from None
            raise

    def cancel(self) -> bool:
        return self._future.cancel()  # False once it runs: a simulation cannot be stopped

    def done(self) -> bool:
        """Whether the simulation has ended (with a result or an error)."""
        return self._future.done()

    def usage(self) -> float:
        return 0.0


# Set once in the simulator process by its initializer; never in the gateway process.
_simulator_adapter: QuantumBackendAdapter | None = None


def _simulator_init(
    provider: Provider,
    name: str,
    execution_mode: str,
    max_qubits: int | None,
    gateway_pid: int,
    properties: Mapping[str, Any] | None = None,
) -> None:
    global _simulator_adapter
    exit_with(gateway_pid)
    _simulator_adapter = build_backend(
        provider,
        name,
        execution_mode=execution_mode,
        max_qubits=max_qubits,
        isolate=False,
        properties=properties,
    )


def _simulate(primitive: str, circuits: list[PreparedCircuit], shots: int) -> Any:
    assert _simulator_adapter is not None, "runs in the simulator process only"
    return _simulator_adapter._result_here(primitive, circuits, shots)


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
    calibration_file: Path | None = None,
    properties: Mapping[str, Any] | None = None,
) -> QuantumBackendAdapter:
    """``isolate``: simulate ``fake`` / ``aer`` jobs in a child process (``LocalJob``).
    ``calibration_file`` (fake only): the device's calibration, read now and again when it
    changes (``QuantumBackendAdapter.reload_calibration``); ``properties``: a calibration
    already read (the simulator process gets the gateway's this way)."""
    if (calibration_file is not None or properties is not None) and provider is not Provider.FAKE:
        raise BackendConfigError(
            f"a calibration file applies to provider 'fake' only, not {provider.value!r} "
            "(aer is ideal; ibm reports the device's own calibration)"
        )
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
        if properties is not None:
            fake = backend_with_properties(fake, properties, "the gateway's calibration")
        adapter = QuantumBackendAdapter(
            provider,
            name,
            fake,
            execution_mode=execution_mode,
            simulator_process=isolate,
            calibration_file=calibration_file,
        )
        if properties is not None:
            adapter.properties = dict(properties)
        adapter.reload_calibration()  # a file that cannot be used stops the start, here
        return adapter
    if not token:
        raise BackendConfigError(
            "provider 'ibm' needs a token (mount the Secret and pass --token-file)"
        )
    from qiskit_ibm_runtime import QiskitRuntimeService

    service = QiskitRuntimeService(channel="ibm_quantum_platform", token=token, instance=instance)
    return QuantumBackendAdapter(
        provider, name, service.backend(name), execution_mode=execution_mode, service=service
    )


# ---- calibration files ---------------------------------------------------------------------


def read_properties(path: Path) -> dict[str, Any]:
    """The ``BackendProperties`` JSON in ``path`` (as IBM serves it: ``qubits``, ``gates``,
    ``last_update_date``, ...), checked for shape; ``CalibrationFileError`` names the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CalibrationFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CalibrationFileError(f"{path}: not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise CalibrationFileError(
            f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    if not isinstance(raw, dict):
        raise CalibrationFileError(f"{path}: expected a JSON object (BackendProperties)")
    for key in ("qubits", "gates"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise CalibrationFileError(
                f"{path}: no {key!r} list: not BackendProperties JSON (qubits, gates, "
                "last_update_date, ... as IBM serves a device's calibration)"
            )
    return raw


def backend_with_properties(fake: Any, raw: Mapping[str, Any], source: str) -> Any:
    """A new fake backend of the same device as ``fake`` with the calibration ``raw``
    (BackendProperties JSON): its target, ``properties()`` and noise model follow ``raw``.
    ``CalibrationFileError`` (naming ``source``) when ``raw`` does not load, or describes
    another device (other qubits, couplings or gates: circuits transpiled for ``fake``
    would not run)."""
    from qiskit_ibm_runtime.fake_provider.fake_backend import properties_from_server_data

    qubits = raw.get("qubits")
    if not isinstance(qubits, list) or len(qubits) != fake.num_qubits:
        count = len(qubits) if isinstance(qubits, list) else 0
        raise CalibrationFileError(
            f"{source}: describes {count} qubits, {fake.name} has {fake.num_qubits}"
        )
    fresh = type(fake)()
    props = copy.deepcopy(dict(raw))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            properties_from_server_data(props)
            fresh._props_dict = props
            fresh._target = None
            fresh.sim = None  # the noise model is built from the properties on first run
            target = fresh.target
    except Exception as exc:
        raise CalibrationFileError(
            f"{source}: not usable as the calibration of {fake.name}: {exc}"
        ) from None
    missing = _device_operations(fake.target) - _device_operations(target)
    if missing:
        shown = ", ".join(f"{name}{list(qargs)}" for name, qargs in sorted(missing)[:5])
        raise CalibrationFileError(
            f"{source}: not a calibration of {fake.name}: it lacks {len(missing)} of the "
            f"device's operations ({shown}{', ...' if len(missing) > 5 else ''})"
        )
    return fresh


def _device_operations(target: Target) -> set[tuple[str, tuple[int, ...]]]:
    """(operation, qubits) pairs the device offers: what a transpiled circuit may use."""
    return {
        (name, tuple(qargs))
        for name in target.operation_names
        for qargs in (target[name] or {})
        if qargs is not None
    }


def prepare_noise_model(backend: Any) -> None:
    """Make what a fake device's simulator does with its noise model on every run cheap
    (``qorch.gateway.noise``): the model serialises once, and each run gets only the
    errors its circuits meet, as Kraus channels. A backend without a noise model (Aer's
    ideal simulator, IBM) is left as it is."""
    from qiskit_aer import AerSimulator
    from qiskit_aer.noise import NoiseModel

    from qorch.gateway.noise import BatchNoiseSimulator, SerialisedOnceNoiseModel

    setup = getattr(backend, "_setup_sim", None)
    if getattr(backend, "sim", True) is None and callable(setup):
        setup()  # what the fake backend's first run() would do: build its simulator
    options = getattr(backend, "options", None)
    noise = getattr(options, "noise_model", None) if options is not None else None
    if type(noise) is NoiseModel:  # none, or already prepared: nothing to do
        noise.__class__ = SerialisedOnceNoiseModel
    if type(getattr(backend, "sim", None)) is AerSimulator:
        backend.sim.__class__ = BatchNoiseSimulator
