"""The catalogue's feature vectors for every (subtask, resource) pair of a decision pass.

What costs is done once and cached: a circuit is parsed and counted once per source
(:class:`CircuitCache`, keyed by the source's hash); the exact success probability of a
transpiled circuit once per (circuit, backend, calibration day) (:class:`SuccessCache`).
A pass then only gathers rows from small tables with numpy:

- a subtask table (one row per subtask: circuit counts, shots, the simulation method),
- a resource table per kind (one row per backend: calibration medians and queue history;
  one row per pool: its cores),
- pair columns (``estimated_success`` for a QPU, ``device_gpu`` for a pool).

:meth:`KindBlock.matrix` builds one model's float32 input in that model's feature order,
with the pairs that give identical rows folded into one (a queue-wait model that reads only
backend and history features runs on one row per backend, not one per pair). Absent values
(no history yet, no calibration) are NaN: the trees' "missing" branch.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from qorch.api.backend import CalibrationSummary, QuantumBackend
from qorch.api.workflow import ClassicalPool
from qorch.orchestrator.simulation import STATEVECTOR_MAX_QUBITS
from qorch.predictor.catalogue import (
    ALL_FEATURES,
    BACKEND_FEATURES,
    CIRCUIT_FEATURES,
    HISTORY_FEATURES,
)

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.transpiler import Target

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
Float32Array = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.intp]]

# ---- where each catalogue feature comes from ---------------------------------------------
# Per subtask (the circuit and its shots; the method follows from the width).
SUBTASK_FEATURES: Final = (*CIRCUIT_FEATURES, "method_mps")
# Per resource: a backend's calibration and queue history, a pool's cores.
RESOURCE_FEATURES: Final = (
    *(f for f in BACKEND_FEATURES if f != "estimated_success"),
    *HISTORY_FEATURES,
    "cpu_cores",
)
# Per pair: the circuit's success on that backend, whether that pool runs it on a GPU.
PAIR_FEATURES: Final = ("estimated_success", "device_gpu")
assert sorted((*SUBTASK_FEATURES, *RESOURCE_FEATURES, *PAIR_FEATURES)) == sorted(ALL_FEATURES)

_S_COL: Final = {f: i for i, f in enumerate(SUBTASK_FEATURES)}
_R_COL: Final = {f: i for i, f in enumerate(RESOURCE_FEATURES)}
_P_COL: Final = {f: i for i, f in enumerate(PAIR_FEATURES)}

# Medians of ibm_perth over its 120 calibration days (shared/data/ibm-calibrations,
# 2023-01-01..04-30): what a backend without a calibration summary is assumed to have,
# and the single-qubit error a summary lacks (the QuantumBackend status carries no
# single-qubit median): 0.0295 of the two-qubit median, the ratio of the same days.
DEFAULT_TWO_QUBIT_ERROR: Final = 0.0109
DEFAULT_READOUT_ERROR: Final = 0.0175
SINGLE_TO_TWO_QUBIT_ERROR: Final = 0.0295

RECENT_JOBS: Final = 20  # started jobs the recent-wait features look at

_NON_GATES: Final = frozenset({"barrier", "measure", "reset", "delay", "save_probabilities"})


# ---- circuits -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitCounts:
    """What the features need of one logical circuit (flattened to standard gates on one
    or two qubits, before transpiling for any backend)."""

    num_qubits: int
    depth: int  # barriers and delays do not count
    two_qubit_gates: int
    one_qubit_gates: int
    measurements: int


def circuit_counts(circuit: QuantumCircuit) -> CircuitCounts:
    """Count a circuit; training counts with this too (``training/classical.py``): composite
    instructions and gates on 3+ qubits are decomposed first, so a Toffoli counts as the
    two-qubit gates it becomes."""
    flat = _flatten(circuit)
    one = two = meas = 0
    for inst in flat.data:
        name = inst.operation.name
        if name == "measure":
            meas += 1
        elif name in _NON_GATES:
            continue
        elif inst.operation.num_qubits >= 2:
            two += 1
        else:
            one += 1
    depth = flat.depth(lambda inst: inst.operation.name not in ("barrier", "delay"))
    return CircuitCounts(circuit.num_qubits, depth, two, one, meas)


def _flatten(circuit: QuantumCircuit) -> QuantumCircuit:
    from qiskit.circuit.library import get_standard_gate_name_mapping

    standard = get_standard_gate_name_mapping()
    flat = circuit
    for _ in range(8):
        composite = {
            inst.operation.name
            for inst in flat.data
            if inst.operation.name not in _NON_GATES
            and (inst.operation.num_qubits > 2 or inst.operation.name not in standard)
        }
        if not composite:
            break
        flat = flat.decompose(gates_to_decompose=sorted(composite))
    return flat


def source_key(source: str) -> str:
    """The cache key of a circuit source (its SHA-256, hex)."""
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass(frozen=True)
class ParsedCircuit:
    """One circuit, parsed and counted once. ``counts`` is None when it does not parse
    (``error`` says why); ``circuit`` is kept for the exact success estimate."""

    key: str
    counts: CircuitCounts | None
    error: str | None = None
    circuit: QuantumCircuit | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, circuit: QuantumCircuit, key: str | None = None) -> ParsedCircuit:
        """From a circuit already in hand (``key``: its source hash; default: a hash of
        its OpenQASM 2 text, or of its name and counts when it has no such text)."""
        counts = circuit_counts(circuit)
        if key is None:
            try:
                from qiskit import qasm2

                key = source_key(qasm2.dumps(circuit))
            except Exception:  # not expressible in OpenQASM 2 (e.g. classical control)
                key = source_key(f"{circuit.name}:{counts}")
        return cls(key, counts, None, circuit)


class CircuitCache:
    """Parsed circuits by source hash, least recently used dropped beyond ``max_entries``."""

    def __init__(self, max_entries: int = 4096, *, keep_circuits: bool = True) -> None:
        self._max = max_entries
        self._keep = keep_circuits  # False: counts only (no exact success estimate)
        self._entries: OrderedDict[str, ParsedCircuit] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, source: str) -> ParsedCircuit:
        """The parsed circuit of an OpenQASM 2/3 source; never raises (a source that does
        not parse gives ``counts`` None and the parser's message)."""
        key = source_key(source)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        from qorch.quantum.circuits import CircuitError, load_qasm

        try:
            circuit = load_qasm(source)
            parsed = ParsedCircuit(
                key, circuit_counts(circuit), None, circuit if self._keep else None
            )
        except CircuitError as exc:
            parsed = ParsedCircuit(key, None, str(exc))
        except Exception as exc:  # counting a parsed circuit failed: say so, do not crash
            parsed = ParsedCircuit(key, None, f"cannot count the circuit: {exc}")
        self._entries[key] = parsed
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return parsed


# ---- what the operator hands in, per pass -------------------------------------------------


@dataclass(frozen=True)
class SubtaskInput:
    """A circuit subtask to place: its parsed circuit and how it is run."""

    name: str
    circuit: ParsedCircuit
    shots: int
    circuits: int = 1  # circuits in the job (one subtask is one circuit today)
    # Its SUBTASK_FEATURES, computed once here so that a pass only stacks rows.
    row: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "row", _subtask_row(self))


@dataclass(frozen=True)
class CalibrationMedians:
    """A backend's calibration of the day, as medians over its qubits and gates (None:
    not known). ``day`` names the calibration (the date of ``updatedAt``): exact success
    estimates are cached per day."""

    two_qubit_error: float | None = None
    readout_error: float | None = None
    single_qubit_error: float | None = None
    t1_us: float | None = None
    t2_us: float | None = None
    day: str = ""

    @classmethod
    def from_summary(cls, summary: CalibrationSummary | None) -> CalibrationMedians:
        """From a QuantumBackend's ``status.calibration`` (times there are seconds)."""
        if summary is None:
            return cls()
        return cls(
            two_qubit_error=summary.medianTwoQubitError,
            readout_error=summary.medianReadoutError,
            single_qubit_error=summary.medianSingleQubitError,
            t1_us=None if summary.medianT1Seconds is None else summary.medianT1Seconds * 1e6,
            t2_us=None if summary.medianT2Seconds is None else summary.medianT2Seconds * 1e6,
            day=(summary.updatedAt or "")[:10],
        )

    @classmethod
    def from_features(cls, features: Mapping[str, float], day: str) -> CalibrationMedians:
        """From ``qorch.predictor.calibration.Calibration.features()`` (the full
        per-qubit calibration a gateway or a trace file gives)."""

        def get(name: str) -> float | None:
            value = features.get(name)
            return None if value is None or math.isnan(value) else float(value)

        return cls(
            two_qubit_error=get("median_two_qubit_error"),
            readout_error=get("median_readout_error"),
            single_qubit_error=get("median_single_qubit_error"),
            t1_us=get("median_t1_us"),
            t2_us=get("median_t2_us"),
            day=day,
        )


@dataclass(frozen=True)
class QueueHistory:
    """Recent history of one backend's queue. The operator fills it from Prometheus range
    queries over the gateways' metrics (PMA); None or empty: not known (the feature is NaN).

    - ``queue_length``: pending jobs now (instant query; falls back to the QuantumBackend's
      ``status.queueLength``).
    - ``queue_length_mean_1h`` / ``queue_length_max_1h``: ``avg_over_time`` /
      ``max_over_time`` of the pending-jobs gauge over the last hour.
    - ``queue_length_1h_ago``: the gauge one hour ago (``... offset 1h``); the trend
      feature is ``queue_length`` minus this.
    - ``recent_waits_s``: queue waits (seconds from submission to start) of the backend's
      jobs that had already STARTED, oldest start first; the last 20 are used (as
      ``training/history.py`` does: p50 is the median, p90 numpy's linear percentile, and
      with no job at all p50 = p90 = count = 0). Jobs still queued are left out: their wait
      is not known yet (counting them would leak the future in training).
    """

    queue_length: float | None = None
    queue_length_mean_1h: float | None = None
    queue_length_max_1h: float | None = None
    queue_length_1h_ago: float | None = None
    recent_waits_s: tuple[float, ...] = ()

    def features(self) -> tuple[float, float, float, float, float, float, float]:
        """queue_length, mean, max, trend (NaN where not known), recent_wait_p50_s,
        recent_wait_p90_s, recent_wait_count."""
        nan = math.nan
        now = nan if self.queue_length is None else float(self.queue_length)
        ago = nan if self.queue_length_1h_ago is None else float(self.queue_length_1h_ago)
        waits = sorted(w for w in self.recent_waits_s[-RECENT_JOBS:] if math.isfinite(w))
        return (
            now,
            nan if self.queue_length_mean_1h is None else float(self.queue_length_mean_1h),
            nan if self.queue_length_max_1h is None else float(self.queue_length_max_1h),
            now - ago,
            _quantile(waits, 0.5) if waits else 0.0,
            _quantile(waits, 0.9) if waits else 0.0,
            float(len(waits)),
        )


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of a sorted list (numpy's default); NaN if empty."""
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class BackendInput:
    """A quantum backend a subtask may run on."""

    name: str
    num_qubits: int
    price_per_qpu_second: float = 0.0  # USD, the QuantumBackend's pricePerQpuSecondUSD
    calibration: CalibrationMedians = field(default_factory=CalibrationMedians)
    history: QueueHistory = field(default_factory=QueueHistory)
    healthy: bool = True
    # An ideal (noise-free) simulator behind a gateway (provider aer): its results are
    # exact, so its expected fidelity is 1 whatever the model says of a missing calibration.
    ideal: bool = False
    # Seconds a job holds this backend (learned from our jobs' waits, or a gateway's measured
    # median execution); None: the analytic service time. The queue length times this is the
    # median wait where it is known, a floor under the model's median where it is not.
    service_seconds: float | None = None

    @classmethod
    def from_resource(
        cls, backend: QuantumBackend, history: QueueHistory | None = None
    ) -> BackendInput:
        status = backend.status
        history = history or QueueHistory()
        if history.queue_length is None and status is not None and status.queueLength is not None:
            history = QueueHistory(
                float(status.queueLength),
                history.queue_length_mean_1h,
                history.queue_length_max_1h,
                history.queue_length_1h_ago,
                history.recent_waits_s,
            )
        return cls(
            name=str(backend.metadata.get("name", backend.spec.backendName or "")),
            num_qubits=backend.spec.numQubits,
            price_per_qpu_second=backend.spec.pricePerQpuSecondUSD,
            calibration=CalibrationMedians.from_summary(status.calibration if status else None),
            history=history,
            healthy=status is None or status.healthy is not False,
        )


@dataclass(frozen=True)
class PoolInput:
    """A classical node pool a circuit may be simulated on."""

    name: str
    gpu: bool
    max_qubits: int
    cpu_cores: float  # cores a worker pod gets there
    # USD per hour of a worker pod there (a node's hourly price / pods per node). No field
    # of ClassicalPool carries a price yet; the operator's configuration gives it.
    price_per_hour_usd: float = 0.0

    @classmethod
    def from_pool(
        cls, pool: ClassicalPool, *, cpu_cores: float, price_per_hour_usd: float
    ) -> PoolInput:
        return cls(pool.name, pool.gpu, pool.maxQubits, cpu_cores, price_per_hour_usd)


@dataclass(frozen=True)
class PredictionContext:
    """Everything one decision pass predicts from; names are the pairs' names."""

    subtasks: Mapping[str, SubtaskInput]
    backends: Mapping[str, BackendInput]
    pools: Mapping[str, PoolInput]
    now: datetime

    @classmethod
    def of(
        cls,
        subtasks: Sequence[SubtaskInput],
        backends: Sequence[BackendInput] = (),
        pools: Sequence[PoolInput] = (),
        now: datetime | None = None,
    ) -> PredictionContext:
        return cls(
            {s.name: s for s in subtasks},
            {b.name: b for b in backends},
            {p.name: p for p in pools},
            now or datetime.now(UTC),
        )


# ---- estimated_success ------------------------------------------------------------------


class SuccessCache:
    """Exact ``estimated_success`` per (circuit, backend, calibration day): the circuit
    transpiled for the backend (``calibration.transpile_for``) and the product of its
    gates' and readouts' calibrated errors (``calibration.estimated_success``). Costly
    (a transpile), so computed once, off the decision pass, by :meth:`compute`; a pass
    reads what is there and uses the medians' approximation for the rest. Only the latest
    day of each backend is kept."""

    def __init__(self) -> None:
        self._days: dict[str, str] = {}
        self._values: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._values.values())

    def get(self, circuit_key: str, backend: str, day: str) -> float | None:
        if self._days.get(backend) != day:
            return None
        return self._values[backend].get(circuit_key)

    def put(self, circuit_key: str, backend: str, day: str, value: float) -> None:
        if self._days.get(backend) != day:
            self._days[backend] = day
            self._values[backend] = {}
        self._values[backend][circuit_key] = value

    def compute(
        self, parsed: ParsedCircuit, backend: str, day: str, target: Target
    ) -> float | None:
        """Transpile and estimate once; None when the circuit cannot be transpiled for
        ``target`` (the pass keeps the approximation). Never raises."""
        cached = self.get(parsed.key, backend, day)
        if cached is not None or parsed.circuit is None:
            return cached
        from qorch.predictor.calibration import estimated_success, transpile_for

        try:
            value = float(estimated_success(transpile_for(parsed.circuit, target), target))
        except Exception:
            return None
        self.put(parsed.key, backend, day, value)
        return value

    def column(self, backend: str, day: str, circuit_keys: Sequence[str]) -> FloatArray | None:
        """Cached values for these circuits on ``backend`` (NaN where none); None when
        the backend has none for ``day`` at all."""
        values = self._values.get(backend)
        if not values or self._days.get(backend) != day:
            return None
        return np.array([values.get(k, math.nan) for k in circuit_keys], dtype=np.float64)


def approximate_success(
    two_qubit_gates: FloatArray,
    one_qubit_gates: FloatArray,
    measurements: FloatArray,
    two_qubit_error: FloatArray,
    single_qubit_error: FloatArray,
    readout_error: FloatArray,
) -> FloatArray:
    """(1-e2)^(2q gates) * (1-e1)^(1q gates) * (1-ero)^measurements from the backend's
    MEDIAN errors and the LOGICAL circuit's counts: the stand-in for the transpiled
    estimate while none is cached (it ignores routing's extra gates and idle decay, so it
    is optimistic for wide, poorly connected circuits)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = (
            two_qubit_gates * np.log1p(-np.clip(two_qubit_error, 0.0, 1.0))
            + one_qubit_gates * np.log1p(-np.clip(single_qubit_error, 0.0, 1.0))
            + measurements * np.log1p(-np.clip(readout_error, 0.0, 1.0))
        )
    return np.exp(log_p)


# ---- the pass's tables --------------------------------------------------------------------


@dataclass
class KindBlock:
    """The pairs of one kind (QPU or pool) of a pass."""

    rows: IntArray  # positions of these pairs in the pass's pair list
    sub: IntArray  # each pair's row in the subtask table
    res: IntArray  # each pair's row in ``r_table``
    s_table: FloatArray  # [subtasks, SUBTASK_FEATURES], shared by both kinds
    r_table: FloatArray  # [resources of this kind, RESOURCE_FEATURES]
    p_table: FloatArray  # [pairs of this kind, PAIR_FEATURES]
    _cache: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[Float32Array, IntArray]] = field(
        default_factory=dict, repr=False
    )

    def __len__(self) -> int:
        return len(self.rows)

    def matrix(
        self, features: Sequence[str], reads: Sequence[str] | None = None
    ) -> tuple[Float32Array, IntArray]:
        """``(x, inverse)``: the distinct input rows for a model reading ``features`` (in
        that order), float32, and for each pair of the block the row of ``x`` it has.
        Pairs whose features are equal share a row, so a model runs once per distinct
        input: ``model(x)[inverse]`` is its output per pair. ``reads``: the features the
        model's graph actually reads (None: all); pairs equal on those share a row, and
        the other columns of ``x`` are NaN (the graph never looks at them)."""
        key = tuple(features)
        used = key if reads is None else tuple(f for f in key if f in set(reads))
        hit = self._cache.get((key, used))
        if hit is not None:
            return hit
        n = len(self.rows)
        s_cols = [_S_COL[f] for f in used if f in _S_COL]
        r_cols = [_R_COL[f] for f in used if f in _R_COL]
        p_success = "estimated_success" in used
        p_gpu = "device_gpu" in used
        r_count = max(self.r_table.shape[0], 1)
        # Codes rank subtasks and resources by their features (the model's order, first
        # column first), so the rows of x come out sorted: a tree ensemble runs rows that
        # follow similar paths one after the other (fewer mispredicted branches: the shipped
        # fidelity model ran 12% faster than in pair order, twice as fast as in random order).
        r_rank = _sorted_rank(self.r_table[:, r_cols], dense=False)
        if p_success:  # the success is per (circuit, backend): the pair is the key
            code = _sorted_rank(self.s_table[:, s_cols], dense=False)[self.sub] * r_count
            code = code + r_rank[self.res]
        else:
            code = np.zeros(n, dtype=np.int64)
            if s_cols:  # subtasks with equal features share a code
                code = _sorted_rank(self.s_table[:, s_cols], dense=True)[self.sub]
            if r_cols:
                code = code * r_count + r_rank[self.res]
        if p_gpu:
            gpu = self.p_table[:, _P_COL["device_gpu"]]
            code = code * 3 + np.where(np.isnan(gpu), 2, gpu).astype(np.int64)
        first, inverse = _distinct(code)
        x = np.full((len(first), len(key)), np.nan, dtype=np.float32)
        # One gather per table: the columns of x that come from it, in x's order. A name
        # in none of them (validation rejects such models) stays NaN.
        for table, index, cols in (
            (self.s_table, self.sub, _S_COL),
            (self.r_table, self.res, _R_COL),
            (self.p_table, None, _P_COL),
        ):
            at = [j for j, f in enumerate(key) if f in cols and f in used]
            if at:
                pick = first if index is None else index[first]
                values = np.take(table[:, [cols[key[j]] for j in at]], pick, axis=0)
                if at == list(range(at[0], at[-1] + 1)):  # adjacent columns: a slice
                    x[:, at[0] : at[-1] + 1] = values
                else:
                    x[:, at] = values
        result = (x, inverse)
        self._cache[key, used] = result
        return result

    def column(self, name: str) -> FloatArray:
        """One feature for every pair of the block (float64, NaN where absent)."""
        values: FloatArray
        if name in _S_COL:
            values = self.s_table[self.sub, _S_COL[name]]
        elif name in _R_COL:
            values = self.r_table[self.res, _R_COL[name]]
        else:
            values = self.p_table[:, _P_COL[name]]
        return values


def _sorted_rank(table: FloatArray, *, dense: bool) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Per row of ``table``, its rank in the rows' lexicographic order (first column first;
    values compared by their float64 bits, which orders non-negative values as numbers).
    ``dense``: bitwise-equal rows share a rank (0, 1, ... over the distinct rows); else every
    row has its own (a permutation)."""
    n = len(table)
    if table.shape[1] == 0:
        return np.zeros(n, dtype=np.int64) if dense else np.arange(n, dtype=np.int64)
    bits = np.ascontiguousarray(table, dtype=np.float64).view(np.uint64)
    order = np.lexsort(bits.T[::-1])
    rank = np.empty(n, dtype=np.int64)
    if dense and n:
        ordered = bits[order]
        new = np.ones(n, dtype=bool)
        new[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
        rank[order] = np.cumsum(new) - 1
    else:
        rank[order] = np.arange(n, dtype=np.int64)
    return rank


def _distinct(code: np.ndarray[Any, np.dtype[np.int64]]) -> tuple[IntArray, IntArray]:
    """``(first, inverse)`` of non-negative codes: one position per distinct code (in
    ascending code order) and, per position, its code's rank. A dense table when the codes
    span little more than their count (the usual case: no sort), ``np.unique`` otherwise."""
    n = len(code)
    if n == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    span = int(code.max()) + 1
    if span > 4 * n + 4096:
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        return first.astype(np.intp), inverse.reshape(-1).astype(np.intp)
    present = np.zeros(span, dtype=bool)
    present[code] = True
    rank = np.cumsum(present, dtype=np.intp) - 1
    inverse = rank[code]
    first = np.empty(int(rank[-1]) + 1, dtype=np.intp)
    first[inverse] = np.arange(n, dtype=np.intp)  # any member will do: their rows are equal
    return first, inverse


@dataclass
class PassFeatures:
    """The features of one pass: a block per kind and why pairs are infeasible."""

    size: int
    qpu: KindBlock
    pool: KindBlock
    backends: tuple[BackendInput, ...]  # rows of qpu.r_table
    pools: tuple[PoolInput, ...]  # rows of pool.r_table
    # Per pair: 0 feasible; otherwise an index into ``reasons``.
    infeasible: IntArray
    reasons: list[str]
    is_pool: np.ndarray[Any, np.dtype[np.bool_]]  # per pair: the resource is a pool
    names: tuple[tuple[str, ...], tuple[str, ...]]  # the pairs' subtask and resource names


_UNKNOWN_SUBTASK: Final = 1
_UNKNOWN_RESOURCE: Final = 2
_NO_CIRCUIT: Final = 3
_UNHEALTHY: Final = 4
_TOO_WIDE: Final = 5
_BASE_REASONS: Final = [
    "",
    "unknown subtask (not in the prediction context)",
    "unknown resource (not in the prediction context)",
    "the subtask's circuit did not parse",
    "the backend is not healthy",
    "the circuit is wider than the resource",
]


class FeatureBuilder:
    """Builds a pass's :class:`PassFeatures`; holds the success cache between passes."""

    def __init__(self, success: SuccessCache | None = None) -> None:
        self.success = success or SuccessCache()

    def build(self, pairs: Sequence[tuple[str, str]], context: PredictionContext) -> PassFeatures:
        subtasks = list(context.subtasks.values())
        backends = tuple(context.backends.values())
        pools = tuple(context.pools.values())
        n_sub, n_back, n_pool = len(subtasks), len(backends), len(pools)
        # Unknown names map to a dummy row past the end (index n_sub / n_back + n_pool).
        sub_index: defaultdict[str, int] = defaultdict(lambda: n_sub)
        sub_index.update((s.name, i) for i, s in enumerate(subtasks))
        # Resources: backends 0..B-1, pools B..B+P-1 (a name in both is taken as a backend).
        res_index: defaultdict[str, int] = defaultdict(lambda: n_back + n_pool)
        res_index.update((p.name, n_back + i) for i, p in enumerate(pools))
        res_index.update((b.name, i) for i, b in enumerate(backends))
        n = len(pairs)
        names: tuple[tuple[str, ...], tuple[str, ...]] = (
            tuple(zip(*pairs, strict=True)) if n else ((), ())  # type: ignore[assignment]
        )
        sub = np.fromiter(map(sub_index.__getitem__, names[0]), dtype=np.intp, count=n)
        res = np.fromiter(map(res_index.__getitem__, names[1]), dtype=np.intp, count=n)

        s_table, s_ok = _subtask_table(subtasks)  # n_sub + 1 rows, the last a dummy
        reason = np.zeros(n, dtype=np.intp)
        reason[res == n_back + n_pool] = _UNKNOWN_RESOURCE
        reason[sub == n_sub] = _UNKNOWN_SUBTASK
        reason[(reason == 0) & ~s_ok[sub]] = _NO_CIRCUIT
        is_pool = (res >= n_back) & (res < n_back + n_pool)
        capacity = np.array(
            [b.num_qubits for b in backends] + [p.max_qubits for p in pools] + [math.inf],
            dtype=np.float64,
        )
        healthy = np.array([b.healthy for b in backends] + [True] * (n_pool + 1), dtype=bool)
        reason[(reason == 0) & ~healthy[res]] = _UNHEALTHY
        width = s_table[sub, _S_COL["num_qubits"]]
        reason[(reason == 0) & (width > capacity[res])] = _TOO_WIDE

        known_sub = sub < n_sub
        qpu_rows = np.flatnonzero(known_sub & (res < n_back))
        pool_rows = np.flatnonzero(known_sub & is_pool)
        qpu = self._qpu_block(qpu_rows, sub, res, s_table, subtasks, backends, context.now)
        pool = _pool_block(pool_rows, sub, res - n_back, s_table, pools)
        return PassFeatures(
            n, qpu, pool, backends, pools, reason, list(_BASE_REASONS), is_pool, names
        )

    def _qpu_block(
        self,
        rows: IntArray,
        sub_all: IntArray,
        res_all: IntArray,
        s_table: FloatArray,
        subtasks: Sequence[SubtaskInput],
        backends: Sequence[BackendInput],
        now: datetime,
    ) -> KindBlock:
        sub = sub_all[rows]
        res = res_all[rows]
        r_table = np.full((len(backends), len(RESOURCE_FEATURES)), np.nan)
        # As training/history.py's calendar(): the UTC hour 0..23 and weekday, 0 = Monday.
        utc = now.astimezone(UTC)
        hour, weekday = float(utc.hour), float(utc.weekday())
        for i, b in enumerate(backends):
            cal = b.calibration
            r_table[i, : len(RESOURCE_FEATURES) - 1] = (
                float(b.num_qubits),
                _nan(cal.two_qubit_error),
                _nan(cal.readout_error),
                _nan(cal.single_qubit_error),
                _nan(cal.t1_us),
                _nan(cal.t2_us),
                *b.history.features(),
                hour,
                weekday,
            )
        # estimated_success: the medians' approximation, replaced by exact cached values.
        e2 = r_table[:, _R_COL["median_two_qubit_error"]]
        e1 = r_table[:, _R_COL["median_single_qubit_error"]]
        ero = r_table[:, _R_COL["median_readout_error"]]
        e2_known = np.where(np.isnan(e2), DEFAULT_TWO_QUBIT_ERROR, e2)
        e1 = np.where(np.isnan(e1), e2_known * SINGLE_TO_TWO_QUBIT_ERROR, e1)
        ero = np.where(np.isnan(ero), DEFAULT_READOUT_ERROR, ero)
        per_circuit = 1.0 / np.maximum(s_table[sub, _S_COL["circuits"]], 1.0)
        success = approximate_success(
            s_table[sub, _S_COL["two_qubit_gates"]] * per_circuit,
            s_table[sub, _S_COL["one_qubit_gates"]] * per_circuit,
            s_table[sub, _S_COL["measurements"]] * per_circuit,
            e2_known[res],
            e1[res],
            ero[res],
        )
        if len(rows) and len(self.success):
            keys = [s.circuit.key for s in subtasks]
            for i, b in enumerate(backends):
                exact = self.success.column(b.name, b.calibration.day, keys)
                if exact is None:
                    continue
                exact = np.append(exact, math.nan)  # the dummy row
                mine = res == i
                values = exact[sub[mine]]
                success[mine] = np.where(np.isnan(values), success[mine], values)
        p_table = np.full((len(rows), len(PAIR_FEATURES)), np.nan)
        p_table[:, _P_COL["estimated_success"]] = success
        return KindBlock(rows, sub, res, s_table, r_table, p_table)


def _pool_block(
    rows: IntArray,
    sub_all: IntArray,
    res_all: IntArray,
    s_table: FloatArray,
    pools: Sequence[PoolInput],
) -> KindBlock:
    sub = sub_all[rows]
    res = res_all[rows]
    r_table = np.full((len(pools), len(RESOURCE_FEATURES)), np.nan)
    r_table[:, _R_COL["cpu_cores"]] = [p.cpu_cores for p in pools]
    gpu_pool = np.array([p.gpu for p in pools], dtype=bool)
    p_table = np.full((len(rows), len(PAIR_FEATURES)), np.nan)
    mps = s_table[sub, _S_COL["method_mps"]] > 0
    # Aer runs statevectors on a GPU, matrix product states on the CPU only
    # (orchestrator.simulation.runs_on_gpu).
    p_table[:, _P_COL["device_gpu"]] = (gpu_pool[res] & ~mps).astype(np.float64)
    return KindBlock(rows, sub, res, s_table, r_table, p_table)


def _subtask_table(
    subtasks: Sequence[SubtaskInput],
) -> tuple[FloatArray, np.ndarray[Any, np.dtype[np.bool_]]]:
    """[subtasks + 1, SUBTASK_FEATURES] (the last row a dummy for unknown names) and
    whether each row's circuit parsed."""
    rows = [s.row for s in subtasks]
    rows.append(_ZERO_ROW)
    table = np.array(rows, dtype=np.float64).reshape(len(rows), len(SUBTASK_FEATURES))
    ok = np.array([s.circuit.counts is not None for s in subtasks] + [False], dtype=bool)
    return table, ok


_ZERO_ROW: Final = (0.0,) * len(SUBTASK_FEATURES)


def _subtask_row(s: SubtaskInput) -> tuple[float, ...]:
    c = s.circuit.counts
    if c is None:
        return _ZERO_ROW
    k = float(s.circuits)
    return (
        float(c.num_qubits),
        float(c.depth),
        c.depth * k,
        c.num_qubits * k,
        c.two_qubit_gates * k,
        c.one_qubit_gates * k,
        c.measurements * k,
        float(s.shots),
        k,
        1.0 if c.num_qubits > STATEVECTOR_MAX_QUBITS else 0.0,
    )


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
