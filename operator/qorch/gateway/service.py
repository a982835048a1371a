"""The gateway's job store and dispatcher: validate at the door, queue, batch, execute.

Bad input is refused at submission with a specific message and never enters the queue,
so it cannot disturb other jobs. Queued jobs with the same primitive and shots run
together as one primitive job (one PUB each), which is how IBM bills and schedules
work best. Queued jobs can be cancelled (the orchestrator moves work that way).

Nothing slow runs on the event loop: submissions are parsed and transpiled in a worker
process, provider calls run in threads; only a small circuit submitted to an idle local
simulator is transpiled on the loop (``small_source``), in milliseconds. The queue is
bounded (429 when full). With a state directory, jobs are journaled in SQLite, so a
restarted gateway still knows finished jobs and their results, queues the queued ones again
and re-attaches to (or re-runs) the ones that were running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qiskit import QuantumCircuit

from qorch.api.backend import CalibrationSummary, Provider
from qorch.gateway.backends import (
    SMALL_RUN_OPERATIONS,
    SMALL_RUN_QUBITS,
    CalibrationFileError,
    LocalJob,
    LocalJobCancelledError,
    PreparedCircuit,
    QuantumBackendAdapter,
    Transpiler,
    exit_with,
    is_permanent_error,
    worker_context,
)
from qorch.metrics.exporters import GatewayMetrics
from qorch.orchestrator.snapshot import JobPhase
from qorch.quantum.circuits import CircuitError, load_qasm
from qorch.quantum.results import estimator_result, sampler_result

log = logging.getLogger(__name__)
MAX_FINISHED_JOBS = 10_000
DEFAULT_MAX_QUEUED = 1000
MAX_MESSAGE_CHARS = 1024  # of any job message or error detail the gateway writes
MAX_RETRY_AFTER_SECONDS = 60
DEFAULT_BATCH_SIZE = 64
# How long a batch about to run waits for submissions still being transpiled.
COALESCE_SECONDS = 0.1
# Event-loop turns a batch smaller than the batch size waits before it runs: enough for a
# request already in a socket to reach ``submit`` (aiohttp reads it, starts its handler).
ARRIVAL_LOOP_TURNS = 3
# A submission's source up to this long may be a small circuit, transpiled on the event loop
# when the gateway is idle (``_Preparer.prepare``, ``small_source``).
SMALL_QASM_CHARS = 4096
SMALL_OBSERVABLES = 16
# What a small source may not hold: gate and subroutine definitions (one line can expand to
# millions of operations), loops and branches (one operation, any number of iterations).
_NOT_SMALL = re.compile(r"\b(gate|def|defcal|for|while|if|box|extern|opaque)\b")
_REGISTER = re.compile(r"\b(?:qubit|qreg)\s*(?:\[\s*(\d+)\s*\])?\s*\w+\s*(?:\[\s*(\d+)\s*\])?")
# A batch of at most this many shots in all has its results converted on the event loop
# (0.05 ms per 1,000 shots of few outcomes, about 1 ms with every shot distinct); a larger
# one in a thread.
INLINE_CONVERT_SHOTS = 4096


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, saying so when it was cut: provider
    errors can quote whole circuits or tracebacks."""
    if len(text) <= limit:
        return text
    marker = f" ... [truncated, {len(text)} characters in all]"
    return text[: max(0, limit - len(marker))] + marker


class GatewayRequestError(Exception):
    """A request the gateway refuses; ``status`` is the HTTP status to answer with,
    ``retry_after`` the seconds to wait before trying again (429)."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        message = bounded(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self) -> Any:  # raised in the transpiler process, re-raised here
        return (_request_error, (self.status, self.message, self.retry_after))


def _request_error(status: int, message: str, retry_after: int | None) -> GatewayRequestError:
    return GatewayRequestError(status, message, retry_after=retry_after)


@dataclass(frozen=True)
class Submission:
    job_id: str
    backend: str
    qasm: str
    primitive: str
    shots: int
    observables: tuple[str, ...]
    # The provider's job this one already ran as (a gateway that lost it re-attaches).
    remote_job_id: str | None = None

    def same_payload(self, other: Submission) -> bool:
        """Whether ``other`` asks for the same computation (a hint about where it already
        ran does not make it another job)."""
        return dataclasses.replace(self, remote_job_id=None) == dataclasses.replace(
            other, remote_job_id=None
        )


@dataclass
class JobRecord:
    submission: Submission
    # None for a job restored from the journal until it is transpiled again.
    prepared: PreparedCircuit | None
    phase: JobPhase = JobPhase.QUEUED
    # Wall-clock seconds, so that a restarted gateway can still report them.
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    message: str = ""
    permanent: bool = False
    qpu_seconds: float = 0.0
    remote: Any = None
    # The provider's job id; ``<id>#<n>`` when several jobs ran as PUBs of one provider job.
    remote_job_id: str | None = None
    # What the gateway did unusually (re-run, re-attached): kept in the message to the end.
    note: str = ""
    attaching: bool = False

    @property
    def final(self) -> bool:
        """Done, failed or cancelled: it will not change again."""
        return self.phase in (JobPhase.DONE, JobPhase.ERROR, JobPhase.CANCELLED)

    def to_json(self, queue_position: int | None = None) -> dict[str, Any]:
        """``queue_position``: jobs ahead of this queued one in the gateway's own queue
        (None: not known, e.g. a provider that queues jobs itself)."""
        now = time.time()
        started = self.started_at or (now if self.phase is JobPhase.QUEUED else None)
        return {
            "job_id": self.submission.job_id,
            "backend": self.submission.backend,
            "phase": self.phase.value,
            "message": self.message,
            "result": self.result,
            "permanent": self.permanent,
            "remote_job_id": self.remote_job_id,
            "qpu_seconds": self.qpu_seconds,
            "queue_seconds": round(max(0.0, (started or now) - self.submitted_at), 6),
            "execution_seconds": (
                round(max(0.0, self.finished_at - self.started_at), 6)
                if self.finished_at and self.started_at
                else None
            ),
            "queue_position": queue_position if self.phase is JobPhase.QUEUED else None,
        }


# ---- parsing and transpiling, in a worker process -------------------------------------


def check_submission(sub: Submission, backend_name: str, num_qubits: int) -> QuantumCircuit:
    """The circuit of ``sub``, or a ``GatewayRequestError`` naming what to change."""
    if sub.primitive not in ("sampler", "estimator"):
        raise GatewayRequestError(
            422, f"primitive must be sampler or estimator, not {sub.primitive!r}"
        )
    if not 1 <= sub.shots <= 1_000_000:
        raise GatewayRequestError(422, f"shots must be 1..1000000, not {sub.shots}")
    try:
        circuit = load_qasm(sub.qasm)
    except CircuitError as exc:
        raise GatewayRequestError(422, str(exc)) from exc
    if circuit.parameters:
        names = ", ".join(sorted(p.name for p in circuit.parameters))
        raise GatewayRequestError(
            422, f"circuit has unbound parameters: {names}; bind them before submitting"
        )
    if circuit.num_qubits > num_qubits:
        raise GatewayRequestError(
            422,
            f"circuit has {circuit.num_qubits} qubits but {backend_name} has {num_qubits}",
        )
    if sub.primitive == "sampler":
        if circuit.num_clbits == 0:
            raise GatewayRequestError(
                422, "a sampler circuit needs measurements (e.g. `c = measure q;`)"
            )
        if sub.observables:
            raise GatewayRequestError(422, "observables apply to the estimator only")
    else:
        if not sub.observables:
            raise GatewayRequestError(422, "the estimator needs at least one observable")
        for obs in sub.observables:
            if len(obs) != circuit.num_qubits or set(obs) - set("IXYZ"):
                raise GatewayRequestError(
                    422, f"observable {obs!r} must be {circuit.num_qubits} letters of IXYZ"
                )
        circuit = circuit.remove_final_measurements(inplace=False)
    return circuit


def small_source(sub: Submission) -> bool:
    """Whether ``sub`` may be a small circuit, read from its text before parsing it: short,
    standard gates only, no loops or branches, at most ``SMALL_RUN_QUBITS`` qubits declared
    and a few observables. Parsing a source that passes takes milliseconds."""
    if len(sub.qasm) > SMALL_QASM_CHARS or len(sub.observables) > SMALL_OBSERVABLES:
        return False
    if _NOT_SMALL.search(sub.qasm):
        return False
    declared = 0
    for register in _REGISTER.finditer(sub.qasm):
        size = register.group(1) or register.group(2)
        declared += int(size) if size else 1
        if declared > SMALL_RUN_QUBITS:
            return False
    return declared > 0


# Set once in each worker process by its initializer; never in the gateway process.
_worker_transpiler: Transpiler | None = None


def _worker_init(transpiler: Transpiler, gateway_pid: int) -> None:
    global _worker_transpiler
    _worker_transpiler = transpiler
    exit_with(gateway_pid)
    transpiler.prepare(QuantumCircuit(1), ())  # build the pass manager before the first job


def _worker_prepare(sub: Submission, backend_name: str, num_qubits: int) -> PreparedCircuit:
    assert _worker_transpiler is not None, "runs in the transpiler process only"
    circuit = check_submission(sub, backend_name, num_qubits)
    return _transpiled(_worker_transpiler, circuit, sub.observables, backend_name)


def _transpiled(
    transpiler: Transpiler, circuit: QuantumCircuit, observables: tuple[str, ...], name: str
) -> PreparedCircuit:
    try:
        return transpiler.prepare(circuit, observables)
    except Exception as exc:  # transpiler errors for circuits the target cannot run
        raise GatewayRequestError(
            422, f"circuit cannot run on {name}: {exc}"
        ) from None  # the cause may not pickle


class _Preparer:
    """Parses, checks and transpiles submissions in worker processes. qiskit's Rust passes
    hold the GIL for up to a second on large circuits (SabreLayout: 0.7 s for 100 qubits and
    3000 CX on a 127-qubit device, measured), so in a thread they would still stall every
    other request; in a process they cannot. ``workers`` processes (``--transpile-workers``)
    transpile side by side, beside the event loop and the simulator: a client's batch of
    submissions is ready for the next run sooner (``bench/gateway.py``, fake_manila, 16 in
    flight: each batch waited on 16 transpiles done one after another). The transpiled
    circuit comes back as QPY; decoding it is the part left here (0.15 s for 300k
    instructions, measured). A small circuit on an idle gateway is the exception (``prepare``,
    ``small_here``)."""

    def __init__(self, adapter: QuantumBackendAdapter, workers: int = 1) -> None:
        self._transpiler = adapter.transpiler
        self._name = adapter.name
        self._num_qubits = adapter.num_qubits
        self._workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None
        self._starting = asyncio.Lock()

    def _start(self, transpiler: Transpiler) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            self._workers,
            mp_context=worker_context(),
            initializer=_worker_init,
            initargs=(transpiler, os.getpid()),
        )
        # Start the processes now, not on the first submissions (a pool starts one for a
        # task no idle process takes; a quick one may take two of these).
        for started in [pool.submit(time.sleep, 0.05) for _ in range(self._workers)]:
            started.result()
        return pool

    async def start(self) -> ProcessPoolExecutor:
        async with self._starting:
            while self._pool is None:
                transpiler = self._transpiler
                # Starting a process blocks for seconds (imports): never on the event loop.
                pool = await asyncio.to_thread(self._start, transpiler)
                if transpiler is self._transpiler:
                    self._pool = pool
                else:  # a new calibration came meanwhile: start for that one
                    pool.shutdown(wait=False)
            return self._pool

    def retarget(self, transpiler: Transpiler) -> None:
        """Transpile for ``transpiler``'s target from now on (a new calibration of the same
        device). Submissions already handed to the old processes finish there: what they get
        is valid on the device all the same."""
        self._transpiler = transpiler
        old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False)

    async def prepare(self, sub: Submission, *, small_here: bool = False) -> PreparedCircuit:
        """``small_here``: a small circuit (``small_source``; at most ``SMALL_RUN_QUBITS``
        qubits and ``SMALL_RUN_OPERATIONS`` operations once parsed) is parsed and
        transpiled on the event loop, in 1-3 ms: less than the hop to a worker process adds
        to a lone job (1.3 ms, measured). For an idle gateway of a local simulator: under
        load, the workers transpile beside the loop."""
        if small_here and self._transpiler.ready and small_source(sub):
            circuit = check_submission(sub, self._name, self._num_qubits)
            if circuit.num_qubits <= SMALL_RUN_QUBITS and circuit.size() <= SMALL_RUN_OPERATIONS:
                return _transpiled(self._transpiler, circuit, sub.observables, self._name)
        pool = await self.start()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                pool, _worker_prepare, sub, self._name, self._num_qubits
            )
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise GatewayRequestError(
                422,
                f"transpiling this circuit for {self._name} killed the transpiler process "
                "(out of memory?); make it smaller",
            ) from None

    def build_here(self) -> None:
        """Build the pass manager small circuits are transpiled with here (blocks: call it
        from a thread)."""
        self._transpiler.build()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# ---- the journal ----------------------------------------------------------------------


class Journal:
    """Jobs on disk (SQLite), one row per job, written on every change. WAL with
    ``synchronous=NORMAL``: a committed write survives the process being killed (SIGKILL,
    OOM); only a power cut can lose the last few."""

    COLUMNS = (
        "job_id, submission, phase, message, note, permanent, result, qpu_seconds, "
        "remote_job_id, submitted_at, started_at, finished_at"
    )

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, submission TEXT NOT "
            "NULL, phase TEXT NOT NULL, message TEXT NOT NULL, note TEXT NOT NULL, permanent "
            "INTEGER NOT NULL, result TEXT, qpu_seconds REAL NOT NULL, remote_job_id TEXT, "
            "submitted_at REAL NOT NULL, started_at REAL, finished_at REAL)"
        )

    def load(self) -> list[JobRecord]:
        rows = self._db.execute(f"SELECT {self.COLUMNS} FROM jobs ORDER BY rowid").fetchall()
        records = []
        for row in rows:
            sub = json.loads(row[1])
            sub["observables"] = tuple(sub["observables"])
            records.append(
                JobRecord(
                    Submission(**sub),
                    None,
                    phase=JobPhase(row[2]),
                    message=row[3],
                    note=row[4],
                    permanent=bool(row[5]),
                    result=json.loads(row[6]) if row[6] is not None else None,
                    qpu_seconds=row[7],
                    remote_job_id=row[8],
                    submitted_at=row[9],
                    started_at=row[10],
                    finished_at=row[11],
                )
            )
        return records

    def save(self, r: JobRecord) -> None:
        self._db.execute(
            f"INSERT INTO jobs ({self.COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(job_id) DO UPDATE SET phase=excluded.phase, message=excluded.message,"
            " note=excluded.note, permanent=excluded.permanent, result=excluded.result, "
            "qpu_seconds=excluded.qpu_seconds, remote_job_id=excluded.remote_job_id, "
            "started_at=excluded.started_at, finished_at=excluded.finished_at",
            (
                r.submission.job_id,
                json.dumps(dataclasses.asdict(r.submission)),
                r.phase.value,
                r.message,
                r.note,
                int(r.permanent),
                json.dumps(r.result) if r.result is not None else None,
                r.qpu_seconds,
                r.remote_job_id,
                r.submitted_at,
                r.started_at,
                r.finished_at,
            ),
        )

    def forget(self, job_ids: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM jobs WHERE job_id = ?", [(j,) for j in job_ids])

    def close(self) -> None:
        self._db.close()


def _remote_ref(provider_id: str, index: int, pubs: int) -> str:
    return provider_id if pubs == 1 else f"{provider_id}#{index}"


def _split_remote_ref(ref: str) -> tuple[str, int]:
    provider_id, _, index = ref.rpartition("#")
    if provider_id and index.isdigit():
        return provider_id, int(index)
    return ref, 0


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# ---- the service ----------------------------------------------------------------------


class GatewayService:
    def __init__(
        self,
        adapter: QuantumBackendAdapter,
        metrics: GatewayMetrics,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        price_per_qpu_second: float = 0.0,
        max_queued: int = DEFAULT_MAX_QUEUED,
        state_dir: Path | None = None,
        min_job_seconds: float = 0.0,
        bill_held_seconds: bool = False,
        transpile_workers: int = 1,
    ) -> None:
        """``min_job_seconds``: every job holds the device at least this long (a batch of
        n jobs n times as long) -- a test and digital-twin aid, so that a local simulator's
        queue holds jobs as a real device's does; 0 for a real provider.
        ``bill_held_seconds``: a local device reports the seconds a batch held it as its
        jobs' QPU seconds (a provider's own usage figure always wins).
        ``transpile_workers``: processes that parse and transpile submissions (``_Preparer``)."""
        self.bill_held_seconds = bill_held_seconds
        self.adapter = adapter
        self.metrics = metrics
        self.batch_size = batch_size
        self.min_job_seconds = max(0.0, min_job_seconds)
        self.max_queued = max_queued
        self.price = price_per_qpu_second
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()
        # The jobs not final yet (queued or running), in submission order, and the final
        # ones' ids, oldest first: what the queue, the gauges and forgetting read, so that
        # the up to ``MAX_FINISHED_JOBS`` kept for status requests cost nothing per job.
        self._open: dict[str, JobRecord] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._wakeup = asyncio.Event()
        # Set (and replaced) whenever a job reaches a final phase: what a status request
        # that waits (``wait_for_final``) wakes on.
        self._finished = asyncio.Event()
        self._stopping = False  # shutting down: status requests no longer wait
        self._label = metrics.labels_for(adapter.name)
        # A provider that queues jobs itself (IBM): the hand-off is not the start.
        self._remote = adapter.provider is Provider.IBM
        self._preparer = _Preparer(adapter, transpile_workers)
        self._preparing = 0
        self._batch_seconds = 1.0  # running mean of one batch's wall time (Retry-After)
        self._tasks: set[asyncio.Task[None]] = set()
        self._calibration = CalibrationSummary()  # as last exported
        self._journal = Journal(state_dir / "jobs.sqlite3") if state_dir is not None else None
        metrics.price.labels(**self._label).set(price_per_qpu_second)
        metrics.num_qubits.labels(**self._label).set(adapter.num_qubits)
        metrics.healthy.labels(**self._label).set(1)
        self._restore()
        self._update_queue_gauge()  # exported from the start: an idle gateway's queue is 0
        self._apply_calibration(adapter.calibration(), adapter.pending_jobs())

    # ---- requests -------------------------------------------------------------------

    async def submit(self, sub: Submission) -> JobRecord:
        existing = self._existing(sub)
        if existing is not None:
            return existing  # a resubmission after a crash: the same job, not a second one
        if sub.backend != self.adapter.name:
            raise GatewayRequestError(
                404, f"unknown backend {sub.backend!r}: this gateway serves {self.adapter.name!r}"
            )
        self._check_room()
        # No job to overtake, none to wait on; a provider's job takes seconds anyway.
        idle = not self._open and not self._preparing and not self._remote
        self._preparing += 1
        try:
            prepared = await self._preparer.prepare(sub, small_here=idle)
        finally:
            self._preparing -= 1
            self._wakeup.set()  # a batch waiting for it (``_await_preparing``) goes on
        existing = self._existing(sub)  # the same job, submitted again while transpiling
        if existing is not None:
            return existing
        self._check_room()
        record = JobRecord(sub, prepared)
        self.jobs[sub.job_id] = record
        self._open[sub.job_id] = record
        if sub.remote_job_id:
            record.remote_job_id = sub.remote_job_id
            record.attaching = True  # not for the dispatcher until re-attached or re-queued
        self._save(record)
        self._update_queue_gauge()
        if sub.remote_job_id:
            await self._reattach(_split_remote_ref(sub.remote_job_id)[0], [record])
        self._wakeup.set()
        return record

    def _existing(self, sub: Submission) -> JobRecord | None:
        existing = self.jobs.get(sub.job_id)
        if existing is not None and not existing.submission.same_payload(sub):
            raise GatewayRequestError(409, f"job {sub.job_id!r} exists with another payload")
        return existing

    def _check_room(self) -> None:
        waiting = len(self.queued()) + self._preparing
        if waiting >= self.max_queued:
            retry = min(MAX_RETRY_AFTER_SECONDS, max(1, math.ceil(self._batch_seconds)))
            raise GatewayRequestError(
                429,
                f"queue is full: {waiting} jobs queued (the gateway's --max-queued is "
                f"{self.max_queued}); retry after {retry} s",
                retry_after=retry,
            )

    def status(self, job_ids: list[str]) -> list[JobRecord]:
        return [self.jobs[j] for j in job_ids if j in self.jobs]

    async def wait_for_final(self, job_ids: list[str], seconds: float) -> list[JobRecord]:
        """``status(job_ids)`` once one of them is final (done, error, cancelled), or after
        ``seconds``, whichever comes first; at once when one of them is final
        already, unknown, or none is asked for (nothing to wait for). A client that waits
        here learns that a job finished when it finishes, not at its next poll."""
        deadline = time.monotonic() + max(seconds, 0.0)
        while True:
            records = self.status(job_ids)
            if (
                self._stopping
                or len(records) < len(job_ids)
                or not records
                or any(r.final for r in records)
            ):
                return records
            left = deadline - time.monotonic()
            if left <= 0:
                return records
            finished = self._finished
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), left)

    def stop_waiting(self) -> None:
        """The gateway is shutting down: every waiting status request answers now, and
        none waits from here on."""
        self._stopping = True
        self._finished.set()

    def queue_positions(self) -> dict[str, int]:
        """How many jobs are ahead of each queued one (submission order). A local device
        runs them in that order, batched, so the position is the job's remaining wait in
        jobs; a provider that queues jobs itself (IBM) has its own queue after the hand-off,
        which the gateway does not see: empty then, so nobody reads a partial position."""
        if self._remote:
            return {}
        return {r.submission.job_id: i for i, r in enumerate(self.queued())}

    async def cancel(self, job_id: str) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            raise GatewayRequestError(404, f"unknown job {job_id!r}")
        if record.phase is JobPhase.QUEUED:
            self._finish(record, JobPhase.CANCELLED, "cancelled while queued")
        elif record.phase is JobPhase.RUNNING:
            remote = record.remote
            if remote is None or not hasattr(remote, "cancel"):
                raise GatewayRequestError(
                    409, f"job {job_id!r} is already executing and cannot be cancelled"
                )
            try:
                cancelled = await asyncio.to_thread(remote.cancel)
            except Exception as exc:  # IBM: the job reached a final state meanwhile, ...
                raise GatewayRequestError(
                    409, f"job {job_id!r} could not be cancelled: {_describe(exc)}"
                ) from exc
            if cancelled is False:  # a local job that has started cannot be stopped
                raise GatewayRequestError(
                    409, f"job {job_id!r} is already executing and cannot be cancelled"
                )
            if record.phase is JobPhase.RUNNING:
                self._finish(record, JobPhase.CANCELLED, "cancelled while running")
        return record

    # ---- execution ------------------------------------------------------------------

    def queued(self) -> list[JobRecord]:
        return [j for j in self._open.values() if j.phase is JobPhase.QUEUED]

    def next_batch(self) -> list[JobRecord]:
        queued = [j for j in self.queued() if not j.attaching]
        if not queued:
            return []
        key = (queued[0].submission.primitive, queued[0].submission.shots)
        same = [j for j in queued if (j.submission.primitive, j.submission.shots) == key]
        return same[: self.batch_size]

    async def run_forever(self) -> None:
        await self._warm_up()
        await self._resume_running()
        while True:
            batch = self.next_batch()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(batch) < self.batch_size:
                # Submissions that arrived with this one (a client's burst, read from the
                # sockets after it) are let in first, so that they count as preparing: a
                # small one is transpiled here at once, before the rest are even read.
                for _ in range(ARRIVAL_LOOP_TURNS):
                    await asyncio.sleep(0)
                if self._preparing:
                    await self._await_preparing()
                batch = self.next_batch()
            try:
                await self.execute(batch)
            except Exception as exc:  # a bug here must not stop the dispatcher
                log.exception("batch of %d jobs failed unexpectedly", len(batch))
                for record in batch:
                    if record.phase in (JobPhase.QUEUED, JobPhase.RUNNING):
                        self._finish(record, JobPhase.ERROR, f"internal error: {_describe(exc)}")

    async def _await_preparing(self) -> None:
        """Let submissions still being transpiled join the batch about to run rather than
        the next one: every run pays a fixed cost (a simulator call, a provider job), and
        clients that submit together (an operator's subtasks in flight) otherwise see a
        batch of one, then one of the rest. Waits until none is being transpiled or the
        batch is full, at most ``COALESCE_SECONDS``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COALESCE_SECONDS
        while self._preparing and len(self.next_batch()) < self.batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _warm_up(self) -> None:
        """Start the transpiler and simulator processes before the first job needs them; a
        failure here is logged, and the first job tries again."""
        results = await asyncio.gather(
            self._preparer.start(),
            asyncio.to_thread(self.adapter.start),
            asyncio.to_thread(self._preparer.build_here),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.error("warm-up failed: %s", _describe(result), exc_info=result)

    async def execute(self, batch: list[JobRecord]) -> None:
        # A calibration file that changed applies to this batch already (a stat at most).
        await self.reload_calibration()
        for record in batch:
            if record.prepared is None:  # restored from the journal
                await self._prepare_again(record)
        batch = [r for r in batch if r.phase is JobPhase.QUEUED and r.prepared is not None]
        if not batch:
            return
        now = time.time()
        for record in batch:
            record.phase = JobPhase.RUNNING
            # Handed to the backend. A local simulator starts now; a provider (IBM) queues
            # the job first: its start is read from the provider once the job is done.
            record.started_at = now
            if not self._remote:
                self.metrics.queue_wait.labels(**self._label).observe(now - record.submitted_at)
            self._save(record)
        self._update_queue_gauge()
        primitive, shots = batch[0].submission.primitive, batch[0].submission.shots
        prepared = [r.prepared for r in batch if r.prepared is not None]
        try:
            remote = await asyncio.to_thread(self.adapter.run, primitive, prepared, shots)
        except Exception as exc:
            self._fail(batch, exc)
            return
        provider_id = _provider_job_id(remote)
        for i, record in enumerate(batch):
            record.remote = remote
            if provider_id is not None:
                record.remote_job_id = _remote_ref(provider_id, i, len(batch))
            self._save(record)
        await self._collect(
            [(r, i) for i, r in enumerate(batch)],
            remote,
            primitive,
            not_before=now + self.min_job_seconds * len(batch),
        )
        elapsed = time.time() - now
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed

    async def _prepare_again(self, record: JobRecord) -> None:
        try:
            record.prepared = await self._preparer.prepare(record.submission)
        except GatewayRequestError as exc:
            if record.phase is JobPhase.QUEUED:
                self._finish(record, JobPhase.ERROR, exc.message, permanent=exc.status == 422)

    async def _collect(
        self,
        entries: list[tuple[JobRecord, int]],
        remote: Any,
        primitive: str,
        *,
        not_before: float = 0.0,
    ) -> None:
        """Wait for ``remote`` and hand each record its PUB's result, not before the
        wall-clock time ``not_before`` (``min_job_seconds``)."""
        try:
            if isinstance(remote, LocalJob):  # no thread to block on it, no usage to ask
                result, usage = await remote.wait(), 0.0
            else:
                result = await asyncio.to_thread(remote.result)
                usage = await asyncio.to_thread(_usage_seconds, remote)
        except LocalJobCancelledError:
            return  # cancelled before it started: its jobs say so already
        except Exception as exc:
            self._fail([r for r, _ in entries], exc)
            return
        if (hold := not_before - time.time()) > 0:
            await asyncio.sleep(hold)
        if self._remote:
            running_at = await asyncio.to_thread(_provider_running_at, remote)
            for record, _ in entries:
                # The queue wait is the gateway's own plus the provider's queue: up to when
                # the provider says the job started running (hand-off time if it does not).
                if record.started_at and running_at and record.started_at <= running_at:
                    record.started_at = min(running_at, time.time())
                self.metrics.queue_wait.labels(**self._label).observe(
                    max(0.0, (record.started_at or time.time()) - record.submitted_at)
                )
        pubs = max(1, len(result))
        if not usage and not self._remote and self.bill_held_seconds:
            # A local device billing what it was held for: a price set on a fake or Aer
            # backend then charges, as a real provider's would.
            began = [r.started_at for r, _ in entries if r.started_at is not None]
            usage = max(time.time() - min(began), 0.0) if began else 0.0
        # A large batch's results take milliseconds to convert: in a thread, so that status
        # answers do not wait on them; a few thousand shots take less than the hop.
        if sum(r.submission.shots for r, _ in entries) <= INLINE_CONVERT_SHOTS:  # ~1 ms
            converted = _convert_results(entries, result, primitive)
        else:
            converted = await asyncio.to_thread(_convert_results, entries, result, primitive)
        for (record, _), outcome in zip(entries, converted, strict=True):
            if record.phase is not JobPhase.RUNNING:
                continue  # cancelled meanwhile
            if isinstance(outcome, Exception):  # e.g. a remote job that is not the one submitted
                self._finish(
                    record,
                    JobPhase.ERROR,
                    f"result unreadable: {_describe(outcome)}",
                    permanent=True,
                )
                continue
            record.result = outcome
            record.qpu_seconds = usage / pubs
            self._finish(record, JobPhase.DONE, "")

    def _fail(self, records: list[JobRecord], exc: BaseException) -> None:
        permanent = is_permanent_error(exc)
        log.warning(
            "%d job(s) failed (%s): %s",
            len(records),
            "permanent" if permanent else "transient",
            bounded(_describe(exc)),
        )
        for record in records:
            if record.phase is JobPhase.RUNNING:
                self._finish(
                    record,
                    JobPhase.ERROR,
                    f"execution failed: {_describe(exc)}",
                    permanent=permanent,
                )

    # ---- restarts and re-attaching --------------------------------------------------

    def _restore(self) -> None:
        if self._journal is None:
            return
        records = self._journal.load()
        # The final ones in the order they ended: the first to end are forgotten first.
        records.sort(key=lambda r: (r.final, r.finished_at or 0.0))
        for record in records:
            self.jobs[record.submission.job_id] = record
            if record.final:
                self._closed[record.submission.job_id] = None
            else:
                self._open[record.submission.job_id] = record
            if record.submission.backend != self.adapter.name and record.phase in (
                JobPhase.QUEUED,
                JobPhase.RUNNING,
            ):
                self._finish(
                    record,
                    JobPhase.ERROR,
                    f"the gateway restarted serving {self.adapter.name!r}, not "
                    f"{record.submission.backend!r}",
                    permanent=True,
                )
        if records:
            log.info("restored %d jobs from the journal", len(records))
        self._update_queue_gauge()

    async def _resume_running(self) -> None:
        """Jobs the journal says were running when the gateway stopped: re-attach to their
        remote jobs where the provider keeps them, otherwise run them again."""
        groups: dict[str, list[JobRecord]] = {}
        for record in self.jobs.values():
            if record.phase is not JobPhase.RUNNING or record.remote is not None:
                continue
            if record.remote_job_id:
                groups.setdefault(_split_remote_ref(record.remote_job_id)[0], []).append(record)
            else:
                self._requeue(
                    record, "re-run: the gateway restarted before the provider took the job"
                )
        for provider_id, records in groups.items():
            await self._reattach(provider_id, records)
        self._wakeup.set()

    async def _reattach(self, provider_id: str, records: list[JobRecord]) -> None:
        """Follow the provider's job ``provider_id`` for ``records`` (each names its PUB in
        its ``remote_job_id``), or queue them to run again, saying why."""
        why: str | None = None
        try:
            remote = await asyncio.to_thread(self.adapter.attach, provider_id)
        except Exception as exc:  # e.g. the provider no longer has it
            remote, why = None, _describe(exc)
        records = [r for r in records if r.phase in (JobPhase.QUEUED, JobPhase.RUNNING)]
        for record in records:
            record.attaching = False
            if remote is None:
                ref = record.remote_job_id
                self._requeue(
                    record,
                    f"re-run: the provider cannot re-attach to {ref}"
                    if why is None
                    else f"re-run: could not re-attach to {ref}: {why}",
                )
        if remote is None or not records:
            self._wakeup.set()
            return
        now = time.time()
        entries = []
        for record in records:
            record.phase, record.remote = JobPhase.RUNNING, remote
            record.started_at = record.started_at or now
            record.note = record.message = f"re-attached to {record.remote_job_id}"
            self._save(record)
            entries.append((record, _split_remote_ref(record.remote_job_id or "")[1]))
        self._update_queue_gauge()
        self._spawn(self._collect(entries, remote, records[0].submission.primitive))

    def _requeue(self, record: JobRecord, note: str) -> None:
        record.phase, record.remote, record.started_at = JobPhase.QUEUED, None, None
        record.note = record.message = bounded(note)
        self._save(record)
        self._update_queue_gauge()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._preparer.close()
        await asyncio.to_thread(self.adapter.close)
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # ---- bookkeeping ----------------------------------------------------------------

    def _finish(
        self, record: JobRecord, phase: JobPhase, message: str, *, permanent: bool = False
    ) -> None:
        record.phase = phase
        record.message = bounded("; ".join(m for m in (record.note, message) if m))
        record.permanent = permanent and phase is JobPhase.ERROR
        record.finished_at = time.time()
        record.remote = None
        record.prepared = None  # its circuit: thousands of objects, of no use from here on
        job_id = record.submission.job_id
        self._open.pop(job_id, None)
        self._closed[job_id] = None
        self._closed.move_to_end(job_id)
        outcome = {JobPhase.DONE: "done", JobPhase.ERROR: "error", JobPhase.CANCELLED: "cancelled"}[
            phase
        ]
        self.metrics.jobs.labels(**self._label, outcome=outcome).inc()
        if record.started_at is not None and phase is JobPhase.DONE:
            self.metrics.execution.labels(
                **self._label, primitive=record.submission.primitive
            ).observe(record.finished_at - record.started_at)
        if record.qpu_seconds:
            self.metrics.qpu_seconds.labels(**self._label).inc(record.qpu_seconds)
            self.metrics.cost.labels(**self._label).inc(record.qpu_seconds * self.price)
        self._save(record)
        self._update_queue_gauge()
        self._forget_old()
        self._finished.set()  # wakes every waiting status request; the next ones wait anew
        self._finished = asyncio.Event()

    def _save(self, record: JobRecord) -> None:
        if self._journal is not None:
            self._journal.save(record)

    def _update_queue_gauge(self) -> None:
        waiting = len(self.queued())
        self.metrics.queue_length.labels(**self._label).set(waiting)
        if not self._remote:
            # A local simulator has no queue of its own: what waits for it is this queue.
            # Kept current here, not only at the calibration refresh: the operator takes the
            # larger of the two, and a stale figure would keep a drained spike alive.
            self.metrics.backend_pending_jobs.labels(**self._label).set(waiting)

    def _forget_old(self) -> None:
        """Past ``MAX_FINISHED_JOBS`` final jobs, the ones that ended first are forgotten."""
        old = [
            self._closed.popitem(last=False)[0]
            for _ in range(len(self._closed) - MAX_FINISHED_JOBS)
        ]
        for key in old:
            self.jobs.pop(key, None)
        if old and self._journal is not None:
            self._journal.forget(old)

    async def reload_calibration(self) -> bool:
        """Follow the calibration file when it changed (``fake`` with ``--calibration-file``):
        the backend and its noise (``QuantumBackendAdapter.reload_calibration``), the
        transpiler process and the exported calibration metrics. True when it changed; a
        file that cannot be used is logged and the calibration in use stays."""
        if self.adapter.calibration_file is None:
            return False
        before = self._calibration
        try:
            changed = await asyncio.to_thread(self.adapter.reload_calibration)
        except CalibrationFileError as exc:
            log.error("%s; the calibration of %s stays", exc, self.adapter.calibration_date)
            return False
        if not changed:
            return False
        self._preparer.retarget(self.adapter.transpiler)
        await asyncio.to_thread(self._preparer.build_here)
        await self.refresh_calibration()
        after = self._calibration
        log.info(
            "calibration of %s from %s (last update %s): median 2q error %s -> %s, "
            "readout error %s -> %s",
            self.adapter.name,
            self.adapter.calibration_file,
            self.adapter.calibration_date,
            _figure(before.medianTwoQubitError),
            _figure(after.medianTwoQubitError),
            _figure(before.medianReadoutError),
            _figure(after.medianReadoutError),
        )
        return True

    async def refresh_calibration(self) -> None:
        """Calibration and the provider's queue, read in threads (IBM: network calls)."""
        calibration = await asyncio.to_thread(self.adapter.calibration)
        pending = await asyncio.to_thread(self.adapter.pending_jobs)
        self._apply_calibration(calibration, pending)

    def _apply_calibration(self, cal: CalibrationSummary, pending: int | None) -> None:
        self._calibration = cal
        for gauge, value in (
            (self.metrics.two_qubit_error, cal.medianTwoQubitError),
            (self.metrics.readout_error, cal.medianReadoutError),
            (self.metrics.t1, cal.medianT1Seconds),
            (self.metrics.t2, cal.medianT2Seconds),
        ):
            if value is not None:
                gauge.labels(**self._label).set(value)
        self.metrics.backend_pending_jobs.labels(**self._label).set(
            pending if pending is not None else len(self.queued())
        )


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _provider_job_id(remote: Any) -> str | None:
    job_id = getattr(remote, "job_id", None)
    try:
        value = job_id() if callable(job_id) else job_id
    except Exception:  # a job object without an id is still a job
        return None
    return str(value) if value else None


def _provider_running_at(remote: Any) -> float | None:
    """When the provider started running ``remote`` (epoch seconds), from qiskit-ibm-runtime's
    ``job.metrics()["timestamps"]["running"]`` (ISO 8601); None when it does not say."""
    metrics = getattr(remote, "metrics", None)
    if not callable(metrics):
        return None
    try:
        stamp = (metrics() or {}).get("timestamps", {}).get("running")
        if not stamp:
            return None
        parsed = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except Exception:  # an older runtime, a local job: the hand-off time stands
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _convert_results(
    entries: list[tuple[JobRecord, int]], result: Any, primitive: str
) -> list[dict[str, Any] | Exception]:
    """Each entry's PUB result as the job's JSON result, or the error reading it."""
    out: list[dict[str, Any] | Exception] = []
    for record, index in entries:
        try:
            out.append(
                sampler_result(result[index])
                if primitive == "sampler"
                else estimator_result(result[index], record.submission.observables)
            )
        except Exception as exc:
            out.append(exc)
    return out


def _usage_seconds(remote: Any) -> float:
    usage = getattr(remote, "usage", None)
    if usage is None:
        return 0.0
    try:
        return float(usage() or 0.0)
    except Exception:  # local jobs and some runtimes do not report usage
        return 0.0
