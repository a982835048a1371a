"""The variational loop of ``qorch worker`` (VQE, QAOA): a classical optimizer that sends
one batch of circuits per evaluation to wherever Qorch currently routes the subtask.

The route is a file the pod reads before every batch: a downward-API volume of the pod's
``qorch.io/route`` annotation, which the operator patches when it moves the subtask.
Re-routing therefore costs no restart and no lost optimizer state; the kubelet refreshes
the file on its sync period (about a minute by default), so a move takes effect at the
next batch after that.

A route is JSON: ``{"kind": "pool", "name": "cpu"}`` simulates the batch here with Aer
(exact expectation values), ``{"kind": "backend", "name": "qb", "url": "http://...",
"backendName": "fake_manila"}`` sends it to that quantum gateway as an estimator job and
waits for its result. Job ids are ``<QORCH_JOB_PREFIX>.e<evaluation>``, so a batch that
a gateway already holds is not run twice.

Progress (evaluations, energy so far, where each batch ran) is served at ``/progress`` on
the worker's metrics port for the operator to copy into the status, and the final result
(energy, parameters, counts per resource) goes to the termination message.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from qorch.api.workflow import SPSA_CALIBRATION_EVALUATIONS
from qorch.worker.errors import BadInputError

if TYPE_CHECKING:  # imported where used: the worker starts without the gateway client
    from qorch.gateway.base import JobRequest
    from qorch.gateway.client import GatewayResponseError, HttpGatewayClient
    from qorch.orchestrator.snapshot import JobState

T = TypeVar("T")

ROUTE_ANNOTATION = "qorch.io/route"
DEFAULT_ROUTE_FILE = "/etc/qorch/route/route"
OPTIMIZERS = ("COBYLA", "SPSA")
MAX_REPORTED_PARAMETERS = 64  # the termination message holds 4 KiB
ENERGY_TAIL = 20


@dataclass(frozen=True)
class Route:
    kind: str  # "pool": simulate here; "backend": a quantum gateway
    name: str
    url: str | None = None
    backend_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> Route:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"route {text[:80]!r} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("kind") not in ("pool", "backend"):
            raise BadInputError(f"route {text[:80]!r}: kind must be pool or backend")
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise BadInputError(f"route {text[:80]!r}: name is missing")
        if doc["kind"] == "backend" and not (doc.get("url") and doc.get("backendName")):
            raise BadInputError(f"route {text[:80]!r}: a backend route needs url and backendName")
        return cls(doc["kind"], name, doc.get("url"), doc.get("backendName"))

    def to_json(self) -> str:
        doc: dict[str, str] = {"kind": self.kind, "name": self.name}
        if self.url:
            doc["url"] = self.url
        if self.backend_name:
            doc["backendName"] = self.backend_name
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class VariationalTask:
    ansatz_qasm: str
    terms: tuple[tuple[str, float], ...]  # (Pauli string, coefficient)
    optimizer: str
    max_iterations: int
    tolerance: float
    initial_point: tuple[float, ...] | None
    shots: int
    job_prefix: str
    route_file: str
    seed: int = 7

    @classmethod
    def from_env(cls, env: dict[str, str]) -> VariationalTask:
        qasm = env.get("QORCH_QASM", "")
        if not qasm.strip():
            raise BadInputError("QORCH_QASM is empty: no ansatz to optimise")
        try:
            spec = json.loads(env.get("QORCH_VARIATIONAL", ""))
        except json.JSONDecodeError as exc:
            raise BadInputError(f"QORCH_VARIATIONAL is not JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise BadInputError("QORCH_VARIATIONAL must be a JSON object")
        try:
            terms = tuple((str(t["pauli"]), float(t["coefficient"])) for t in spec["hamiltonian"])
            optimizer = str(spec.get("optimizer", "COBYLA"))
            max_iterations = int(spec.get("maxIterations", 100))
            tolerance = float(spec.get("tolerance", 1e-4))
            shots = int(spec.get("shots", 4096))
            initial = spec.get("initialPoint")
            point = tuple(float(x) for x in initial) if initial is not None else None
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"QORCH_VARIATIONAL: {type(exc).__name__}: {exc}") from None
        if not terms:
            raise BadInputError("QORCH_VARIATIONAL: the hamiltonian has no terms")
        if optimizer not in OPTIMIZERS:
            raise BadInputError(
                f"QORCH_VARIATIONAL: optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}"
            )
        return cls(
            ansatz_qasm=qasm,
            terms=terms,
            optimizer=optimizer,
            max_iterations=max_iterations,
            tolerance=tolerance,
            initial_point=point,
            shots=shots,
            job_prefix=env.get("QORCH_JOB_PREFIX", "variational"),
            route_file=env.get("QORCH_ROUTE_FILE", DEFAULT_ROUTE_FILE),
            seed=int(env.get("QORCH_SEED", "7") or 7),
        )


@dataclass
class Progress:
    """What the loop did so far; read by the /progress handler from another thread."""

    optimizer: str
    # Who reports (the pod's subtask and attempt): the operator drops a progress that
    # another pod serves from a reused address.
    subtask: str = ""
    attempt: int = 0
    iterations: int = 0
    evaluations: int = 0
    energy: float | None = None
    best_energy: float | None = None
    route: str | None = None
    batches: collections.Counter[str] = field(default_factory=collections.Counter)
    # QPU seconds the gateways reported (billed) per backend: the operator prices them.
    qpu_seconds: dict[str, float] = field(default_factory=dict)
    energies: list[float] = field(default_factory=list)
    updated_at: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(
        self, resource: str, energy: float, iteration: int, qpu_seconds: float = 0.0
    ) -> None:
        with self.lock:
            if qpu_seconds > 0:
                self.qpu_seconds[resource] = self.qpu_seconds.get(resource, 0.0) + qpu_seconds
            self.evaluations += 1
            self.iterations = max(self.iterations, iteration)
            self.energy = energy
            if self.best_energy is None or energy < self.best_energy:
                self.best_energy = energy
            self.route = resource
            self.batches[resource] += 1
            self.energies = [*self.energies, energy][-ENERGY_TAIL:]
            self.updated_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "subtask": self.subtask,
                "attempt": self.attempt,
                "optimizer": self.optimizer,
                "iterations": self.iterations,
                "evaluations": self.evaluations,
                "energy": _rounded(self.energy),
                "bestEnergy": _rounded(self.best_energy),
                "route": self.route,
                "batches": dict(self.batches),
                "qpuSeconds": {k: round(v, 6) for k, v in self.qpu_seconds.items()},
                "updatedAt": self.updated_at,
            }


QASM_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
INPUT_DECLARATION = re.compile(r"\binput\s+(?:float|angle)\s*(?:\[\s*\d+\s*\])?\s+(\w+)\s*;")


def declaration_order(qasm: str, parameters: list[Any]) -> list[Any]:
    """The ansatz's parameters in the order its ``input`` declarations give them (what a
    user writing ``initialPoint`` reads); any the declarations do not name follow, by name.
    (Qiskit lists them by name, so ``t10`` would come before ``t2``.)"""
    by_name = {p.name: p for p in parameters}
    code = QASM_COMMENT.sub(" ", qasm)  # a commented-out declaration declares nothing
    declared = [
        by_name.pop(n) for n in dict.fromkeys(INPUT_DECLARATION.findall(code)) if n in by_name
    ]
    return declared + sorted(by_name.values(), key=lambda p: p.name)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 8)


class Evaluator:
    """One batch: the ansatz bound to ``point``, every Hamiltonian term measured, on the
    route given. Local batches are exact (ideal Aer estimator); a gateway's are what its
    device returns for ``shots``."""

    def __init__(
        self, task: VariationalTask, poll_seconds: float = 0.2, wait_seconds: float = 10.0
    ) -> None:
        """``wait_seconds``: how long one request to a gateway may wait for the batch's job
        to finish (a long poll: the result arrives when it is ready, not at the next poll);
        0 polls every ``poll_seconds``."""
        from qiskit import QuantumCircuit

        from qorch.quantum.circuits import CircuitError, load_qasm

        try:
            circuit: QuantumCircuit = load_qasm(task.ansatz_qasm)
        except CircuitError as exc:
            raise BadInputError(f"QORCH_QASM: {exc}") from None
        self.circuit = circuit.remove_final_measurements(inplace=False)
        self.parameters = declaration_order(task.ansatz_qasm, list(self.circuit.parameters))
        if not self.parameters:
            raise BadInputError("QORCH_QASM: the ansatz has no parameters (input float ...)")
        for pauli, _ in task.terms:
            if len(pauli) != self.circuit.num_qubits or set(pauli) - set("IXYZ"):
                raise BadInputError(
                    f"hamiltonian term {pauli!r} must be {self.circuit.num_qubits} letters of IXYZ"
                )
        self.task = task
        self.poll_seconds = poll_seconds
        self.wait_seconds = wait_seconds
        self.token_file: str | None = None
        self._loop = asyncio.new_event_loop()
        # The gateway job of the batch in flight (route, job id): cancelled on SIGTERM.
        self._in_flight: tuple[Route, str] | None = None

    @property
    def dimension(self) -> int:
        return len(self.parameters)

    def energy(self, route: Route, point: np.ndarray, evaluation: int) -> tuple[float, float]:
        """The batch's energy, and the QPU seconds its backend billed for it (0 locally)."""
        values, qpu_seconds = self._expectations(route, point, evaluation)
        energy = float(sum(c * v for (_, c), v in zip(self.task.terms, values, strict=True)))
        if not math.isfinite(energy):  # JSON has no NaN: it would poison the status
            raise RuntimeError(f"batch {evaluation} on {route.name}: non-finite energy {energy}")
        return energy, qpu_seconds

    def _bound(self, point: np.ndarray) -> Any:
        return self.circuit.assign_parameters(dict(zip(self.parameters, point, strict=True)))

    def _expectations(
        self, route: Route, point: np.ndarray, evaluation: int
    ) -> tuple[list[float], float]:
        observables = tuple(p for p, _ in self.task.terms)
        if route.kind == "pool":
            return self._local(self._bound(point), observables), 0.0
        try:
            return self._loop.run_until_complete(
                self._remote(route, self._bound(point), observables, evaluation)
            )
        except Terminated:
            self._cancel_in_flight()
            raise

    def _cancel_in_flight(self) -> None:
        """The pod is being stopped (a relaunch, the workflow deleted) mid-batch: the
        batch's gateway job is cancelled rather than left to run, and be billed, for
        nobody. Best effort, within a few seconds of the grace period."""
        from qorch.gateway.base import GatewayError, GatewayTarget
        from qorch.gateway.client import HttpGatewayClient

        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        if self._in_flight is None:
            return
        route, job = self._in_flight
        self._in_flight = None
        assert route.url and route.backend_name
        client = HttpGatewayClient(
            {route.name: GatewayTarget(route.url, route.backend_name)}, token_file=self.token_file
        )

        async def cancel() -> None:
            try:
                await asyncio.wait_for(client.cancel(route.name, job), CANCEL_SECONDS)
            except (GatewayError, TimeoutError):
                pass
            finally:
                await client.close()

        self._loop.run_until_complete(cancel())

    @staticmethod
    def _local(bound: Any, observables: tuple[str, ...]) -> list[float]:
        from qiskit.quantum_info import SparsePauliOp
        from qiskit_aer import AerSimulator
        from qiskit_aer.primitives import EstimatorV2

        device = "GPU" if "GPU" in AerSimulator().available_devices() else "CPU"
        # Precision 0: exact expectation values of the ideal state (shots do not apply).
        estimator = EstimatorV2(
            options={"backend_options": {"device": device}, "default_precision": 0.0}
        )
        ops = [SparsePauliOp(o) for o in observables]
        return [float(v) for v in estimator.run([(bound, ops)]).result()[0].data.evs]

    async def _remote(
        self, route: Route, bound: Any, observables: tuple[str, ...], evaluation: int
    ) -> tuple[list[float], float]:
        from qiskit import qasm3

        from qorch.gateway.base import GatewayError, GatewayTarget, JobRequest
        from qorch.gateway.client import HttpGatewayClient
        from qorch.orchestrator.snapshot import JobPhase

        assert route.url and route.backend_name
        client = HttpGatewayClient(
            {route.name: GatewayTarget(route.url, route.backend_name)},
            token_file=self.token_file,
        )
        job = f"{self.task.job_prefix}.e{evaluation}"
        self._in_flight = (route, job)
        request = JobRequest(
            job_id=job,
            backend=route.name,
            qasm=qasm3.dumps(bound),
            primitive="estimator",
            shots=self.task.shots,
            observables=observables,
        )
        resubmits = 0
        try:
            state: JobState | None = await _patiently(lambda: self._submit(client, request))
            while True:
                if state is None:
                    # The gateway restarted without its state: submitting again is safe
                    # (idempotent by job id), a few times.
                    resubmits += 1
                    if resubmits > MAX_RESUBMITS:
                        raise GatewayError(
                            f"gateway of {route.name} keeps forgetting job {job}", retryable=False
                        )
                    state = await _patiently(lambda: self._submit(client, request))
                    continue
                if state.phase is JobPhase.DONE:
                    evs = (state.result or {}).get("expectationValues")
                    if not isinstance(evs, list) or len(evs) != len(observables):
                        raise GatewayError(f"job {job}: no expectation values", retryable=False)
                    used = state.qpu_seconds
                    self._in_flight = None
                    return [float(v) for v in evs], used if math.isfinite(used) else 0.0
                if state.phase in (JobPhase.ERROR, JobPhase.CANCELLED):
                    raise GatewayError(
                        f"job {job} on {route.name}: {state.phase}: {state.message}",
                        retryable=False,
                    )
                if not self.wait_seconds:
                    await asyncio.sleep(self.poll_seconds)
                states = await _patiently(lambda: self._status(client, route.name, job))
                state = states.get(job)
        finally:
            await client.close()

    async def _submit(self, client: HttpGatewayClient, request: JobRequest) -> JobState:
        """Submit; the gateway answers once the job is final or after ``wait_seconds``."""
        return await self._waiting(lambda wait: client.submit_and_wait(request, wait))

    async def _status(
        self, client: HttpGatewayClient, backend: str, job: str
    ) -> dict[str, JobState]:
        """The job's state: a long poll (``wait_seconds``), or at once."""
        return await self._waiting(lambda wait: client.status(backend, [job], wait_seconds=wait))

    async def _waiting(self, call: Callable[[float], Awaitable[T]]) -> T:
        """``call(wait_seconds)``; a gateway that refuses to wait is asked again without,
        and polled from then on."""
        from qorch.gateway.client import GatewayResponseError

        if self.wait_seconds:
            try:
                return await call(self.wait_seconds)
            except GatewayResponseError as exc:
                if not _refuses_waiting(exc):
                    raise
                self.wait_seconds = 0.0
        return await call(0.0)

    def close(self) -> None:
        self._loop.close()


def _refuses_waiting(exc: GatewayResponseError) -> bool:
    """A gateway from before ``wait_seconds`` (a rolling upgrade): it refuses the field,
    and the evaluator polls instead."""
    return exc.status == 400 and "unknown field 'wait_seconds'" in str(exc)


class Terminated(SystemExit):
    """SIGTERM arrived (``qorch worker`` raises it from its handler): the loop stops. A
    ``SystemExit``: no retry or error path swallows it, and asyncio re-raises it from a
    callback it interrupts (any other ``BaseException`` there is logged and dropped)."""


# How long a stopping worker waits on the gateway to cancel its batch in flight.
CANCEL_SECONDS = 5.0
# How long a batch waits out a gateway that fails or does not answer (5xx, 429, no
# connection) before the loop fails; and how often a forgotten job is submitted again.
GATEWAY_PATIENCE_SECONDS = 180.0
MAX_RESUBMITS = 3


async def _patiently(call: Callable[[], Any], patience: float | None = None) -> Any:
    """A gateway that answers 5xx / 429 or not at all is tried again, with backoff, for
    ``patience`` seconds (default ``GATEWAY_PATIENCE_SECONDS``: long enough for a gateway
    pod to be rescheduled and restart, as losing the loop's progress costs more)."""
    from qorch.gateway.base import GatewayError

    limit = GATEWAY_PATIENCE_SECONDS if patience is None else patience
    deadline = time.monotonic() + limit
    attempt = 0
    while True:
        try:
            return await call()
        except GatewayError as exc:
            pause = min(0.5 * 2**attempt, 10.0)
            if not exc.retryable or time.monotonic() + pause > deadline:
                raise
            attempt += 1
            await asyncio.sleep(pause)


def read_route(path: str, last: Route | None) -> Route:
    """The route in the downward-API file; an unreadable or empty file (mid-update, or
    not yet written) keeps the last route."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        if last is None:
            raise BadInputError(f"route file {path}: {exc}") from None
        return last
    if not text:
        if last is None:
            raise BadInputError(f"route file {path} is empty")
        return last
    return Route.parse(text)


def optimise(
    task: VariationalTask,
    evaluator: Evaluator,
    progress: Progress,
    route_of: Callable[[], Route] | None = None,
) -> dict[str, Any]:
    """Run the optimizer; every evaluation reads the route first. Returns the result."""
    last: list[Route | None] = [None]

    def current_route() -> Route:
        route = route_of() if route_of else read_route(task.route_file, last[0])
        last[0] = route
        return route

    iteration = [0]

    def objective(point: np.ndarray) -> float:
        route = current_route()
        value, qpu_seconds = evaluator.energy(route, point, progress.evaluations + 1)
        progress.record(route.name, value, iteration[0], qpu_seconds)
        return value

    start = np.array(
        task.initial_point if task.initial_point is not None else np.full(evaluator.dimension, 0.1),
        dtype=float,
    )
    if start.shape != (evaluator.dimension,):
        raise BadInputError(
            f"initialPoint has {start.shape[0]} values; the ansatz has "
            f"{evaluator.dimension} parameters"
        )
    started = time.perf_counter()
    if task.optimizer == "COBYLA":
        point, converged = _cobyla(objective, start, task, iteration)
    else:
        point, converged = _spsa(objective, start, task, iteration)
    final = progress.snapshot()
    names = [p.name for p in evaluator.parameters]
    result: dict[str, Any] = {
        "energy": final["bestEnergy"],
        "lastEnergy": final["energy"],
        "optimizer": task.optimizer,
        "iterations": final["iterations"],
        "evaluations": final["evaluations"],
        "converged": converged,
        "batches": final["batches"],
        "qpuSeconds": final["qpuSeconds"],
        "parameters": {
            n: round(float(v), 8)
            for n, v in list(zip(names, point, strict=True))[:MAX_REPORTED_PARAMETERS]
        },
        "energies": [round(e, 6) for e in progress.energies],
        "seconds": round(time.perf_counter() - started, 3),
    }
    if len(names) > MAX_REPORTED_PARAMETERS:
        result["parametersTruncated"] = len(names)
    return result


def _cobyla(
    objective: Callable[[np.ndarray], float],
    start: np.ndarray,
    task: VariationalTask,
    iteration: list[int],
) -> tuple[np.ndarray, bool]:
    from scipy.optimize import minimize  # type: ignore[import-untyped]

    best: list[tuple[float, np.ndarray]] = []

    def counted(point: np.ndarray) -> float:
        iteration[0] += 1  # COBYLA: one iteration per function evaluation
        value = objective(point)
        if not best or value < best[0][0]:
            best[:] = [(value, np.array(point))]
        return value

    res = minimize(
        counted,
        start,
        method="COBYLA",
        tol=task.tolerance,
        options={"maxiter": task.max_iterations, "rhobeg": 0.5},
    )
    point = best[0][1] if best else np.asarray(res.x)
    return point, bool(res.success)


def _spsa(
    objective: Callable[[np.ndarray], float],
    start: np.ndarray,
    task: VariationalTask,
    iteration: list[int],
) -> tuple[np.ndarray, bool]:
    """SPSA (Spall) with his standard exponents (alpha 0.602, gamma 0.101) and the
    learning rate calibrated as Qiskit's SPSA does: a first step of about 2π/10 given the
    gradient magnitude measured at the start (5 samples, 10 evaluations). Two evaluations
    per iteration whatever the dimension, robust to shot noise. Stops when the mean energy
    of the last 10 iterations differs from the 10 before by less than ``tolerance``."""
    rng = np.random.default_rng(task.seed)
    c, alpha, gamma, target = 0.2, 0.602, 0.101, 2 * np.pi / 10
    point = start.copy()
    samples = []
    iteration[0] = 0
    for _ in range(SPSA_CALIBRATION_EVALUATIONS // 2):  # two evaluations per sample
        delta = rng.choice((-1.0, 1.0), size=point.shape)
        samples.append(abs(objective(point + c * delta) - objective(point - c * delta)) / (2 * c))
    magnitude = float(np.mean(samples)) or 1.0
    a = target / magnitude
    best_point, best_value = point.copy(), float("inf")
    means: list[float] = []
    for k in range(task.max_iterations):
        iteration[0] = k + 1
        ak, ck = a / (k + 1) ** alpha, c / (k + 1) ** gamma
        delta = rng.choice((-1.0, 1.0), size=point.shape)
        plus, minus = objective(point + ck * delta), objective(point - ck * delta)
        mean = (plus + minus) / 2  # the energy about ``point``, before this step
        if mean < best_value:
            best_value, best_point = mean, point.copy()
        point = point - ak * (plus - minus) / (2 * ck) * delta
        means.append(mean)
        if (
            len(means) >= 20
            and abs(np.mean(means[-10:]) - np.mean(means[-20:-10])) < task.tolerance
        ):
            return best_point, True
    return best_point, False
