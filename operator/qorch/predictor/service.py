"""The predictor the operator calls once per decision pass.

``Predictor.predict(pairs, context)`` scores every (subtask, resource) pair at once: one
feature build, at most one session run per model (on the DISTINCT input rows only), the
analytic model for every output whose model is missing, rejected or failing. Each
prediction says where it came from (``source`` and ``notes``); :attr:`Predictor.last_report`
says per output which models ran, on how many rows, and why any fell back. It never raises
on the input it is given.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from typing import Any, Final, Literal

import numpy as np

from qorch.orchestrator.prediction import ANALYTIC, MODEL, POOL, QPU, Prediction
from qorch.predictor.analytic import (
    AnalyticConfig,
    qpu_run_seconds,
    queue_wait_seconds,
    simulation_memory_bytes,
    simulation_seconds,
)
from qorch.predictor.features import FeatureBuilder, KindBlock, PassFeatures, PredictionContext
from qorch.predictor.models import ModelSource, ServingModel

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]

# One bit per model: set on a pair when that model's figure for it is analytic.
_BITS: Final = {
    "qpu_runtime": 1,
    "queue_wait": 2,
    "fidelity": 4,
    "classical_time": 8,
    "classical_memory": 16,
}
_QPU_OUTPUTS: Final = (
    ("qpu_runtime", "value"),
    ("queue_wait", "p10"),
    ("queue_wait", "p50"),
    ("queue_wait", "p90"),
    ("fidelity", "value"),
)
_POOL_OUTPUTS: Final = (("classical_time", "value"), ("classical_memory", "value"))
_KINDS: Final = np.array([QPU, POOL], dtype=object)  # by is_pool


@dataclass(frozen=True)
class OutputUse:
    """How one model output was answered in a pass."""

    model: str
    output: str
    source: Literal["model", "analytic"]
    pairs: int  # pairs that needed it
    rows: int  # distinct input rows (0 when analytic)
    rows_run: int  # rows the session ran (the rest repeated the previous pass)
    reason: str = ""  # why analytic (whole pass) or which rows fell back

    @property
    def key(self) -> str:
        return f"{self.model}/{self.output}"


@dataclass(frozen=True)
class PassReport:
    """What one ``predict`` call did, for logs, metrics and the benchmark."""

    pairs: int
    qpu_pairs: int
    pool_pairs: int
    infeasible: int
    outputs: tuple[OutputUse, ...]
    features_seconds: float  # building the pass's tables and each model's input rows
    inference_seconds: float  # session runs (and the lookup of remembered rows)
    assemble_seconds: float  # the rest: analytic model, quantile sort, Prediction objects
    error: str = ""  # the pass itself failed (a bug): every pair is infeasible

    @property
    def fallbacks(self) -> tuple[OutputUse, ...]:
        return tuple(u for u in self.outputs if u.source == ANALYTIC or u.reason)

    @property
    def total_seconds(self) -> float:
        return self.features_seconds + self.inference_seconds + self.assemble_seconds


class Predictor:
    """Predictions for a decision pass. ``models`` None: analytic only. ``workers``: model
    sessions run at once (1: in turn, on the calling thread; more: on a thread pool, for
    an operator pod with as many cores). One pass at a time: ``predict`` is not meant to be
    called from two threads at once (models remember their previous rows)."""

    def __init__(
        self,
        models: ModelSource | None = None,
        *,
        analytic: AnalyticConfig | None = None,
        features: FeatureBuilder | None = None,
        workers: int = 1,
    ) -> None:
        self.models = models
        self.analytic = analytic or AnalyticConfig()
        self.features = features or FeatureBuilder()
        self.workers = max(1, workers)
        self.last_report: PassReport | None = None
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the session threads (``workers`` > 1); a later pass starts them again."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _infer(self, jobs: list[_Job]) -> None:
        """Run the pass's sessions: in turn, or ``workers`` at a time (onnxruntime releases
        the GIL while it runs, so sessions on different cores overlap)."""
        if self.workers == 1 or len(jobs) < 2:
            for job in jobs:
                job.run()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="qorch-predictor")
        biggest_first = sorted(jobs, key=lambda j: -len(j.x))
        for _ in self._pool.map(_Job.run, biggest_first):
            pass

    def predict(
        self, pairs: Sequence[tuple[str, str]], context: PredictionContext
    ) -> list[Prediction]:
        """One prediction per pair, in the order given."""
        collecting = gc.isenabled()
        # A pass allocates ~10^5 objects that are not garbage; left on, the collector
        # would walk the operator's whole heap (parsed circuits) during it, now and then.
        gc.disable()
        try:
            return _Pass(self, pairs, context).run()
        except Exception as exc:  # a bug, not bad input: say so on every pair, do not crash
            message = f"predictor failed: {type(exc).__name__}: {exc}"[:500]
            try:
                failed = [_failed(p, message) for p in pairs]
            except Exception:  # not even iterable
                failed = []
            self.last_report = PassReport(
                len(failed), 0, 0, len(failed), (), 0.0, 0.0, 0.0, message
            )
            return failed
        finally:
            if collecting:
                gc.enable()


def _failed(pair: Any, message: str) -> Prediction:
    try:
        subtask, resource = str(pair[0]), str(pair[1])
    except Exception:
        subtask, resource = str(pair), ""
    inf = math.inf
    return Prediction(
        subtask, resource, QPU, False, inf, inf, inf, inf, inf, inf, inf, 0.0, inf, 0,
        ANALYTIC, (message,),
    )  # fmt: skip


def _flag(mask: np.ndarray[Any, np.dtype[np.int64]], rows: Any, fell: BoolArray, bit: int) -> None:
    """Set ``bit`` on the pairs (of ``rows``) whose figure fell back."""
    if fell.any():
        mask[rows[fell]] |= bit


_NO_ROWS: Final = np.zeros((0, 0), dtype=np.float32)


@dataclass
class _Job:
    """One model output of a pass: the session to run on which rows, then its result."""

    name: str
    output: str
    model: ServingModel | None
    reason: str = ""  # why there is no model
    x: np.ndarray[Any, np.dtype[np.float32]] = field(default_factory=lambda: _NO_ROWS)
    inverse: np.ndarray[Any, np.dtype[np.intp]] = field(
        default_factory=lambda: np.zeros(0, dtype=np.intp)
    )
    raw: FloatArray | None = None  # the model's output per row of x; None: it failed
    error: str = ""
    rows_run: int = 0

    def run(self) -> None:
        """Never raises: a failure is recorded for the pass to fall back on."""
        assert self.model is not None
        try:
            raw = np.asarray(self.model.run(self.x), dtype=np.float64).reshape(len(self.x))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.raw = raw
        self.rows_run = int(getattr(self.model, "last_rows_run", len(self.x)))


class _Pass:
    """One call of ``Predictor.predict``."""

    def __init__(
        self, owner: Predictor, pairs: Sequence[tuple[str, str]], context: PredictionContext
    ) -> None:
        self.owner = owner
        self.pairs = pairs
        self.context = context
        self.cfg = owner.analytic
        self.uses: list[OutputUse] = []
        self.reasons: dict[str, list[str]] = {}  # model -> why it fell back (for notes)
        self.jobs: dict[tuple[str, str], _Job] = {}
        self.t_features = 0.0
        self.t_inference = 0.0

    def run(self) -> list[Prediction]:
        t0 = time.perf_counter()
        feats = self.owner.features.build(self.pairs, self.context)
        for block, outputs in ((feats.qpu, _QPU_OUTPUTS), (feats.pool, _POOL_OUTPUTS)):
            if len(block):
                for name, output in outputs:
                    self.jobs[name, output] = self._prepare(block, name, output)
        t1 = time.perf_counter()
        self.t_features = t1 - t0
        self.owner._infer([j for j in self.jobs.values() if j.model is not None])
        self.t_inference = time.perf_counter() - t1
        n = feats.size
        inf = math.inf
        cols = {
            name: np.full(n, inf)
            for name in ("q10", "q50", "q90", "run", "usd", "s10", "s50", "s90")
        }
        fidelity = np.zeros(n)
        memory = np.zeros(n)
        mask = np.zeros(n, dtype=np.int64)
        self._qpu(feats, cols, fidelity, mask)
        self._pool(feats, cols, fidelity, memory, mask)

        feasible = feats.infeasible == 0
        infeasible = ~feasible
        any_infeasible = bool(infeasible.any())
        if any_infeasible:
            for name in cols:
                cols[name][infeasible] = inf
            fidelity[infeasible] = 0.0
            memory[infeasible] = 0.0
        # Notes: one shared tuple per combination of fallbacks; infeasible pairs say why.
        # Codes: a fallback mask (0..31) or minus an infeasibility reason; shifted to >= 0,
        # they index tables of the notes and sources of the codes present.
        code = np.where(feasible, mask, -feats.infeasible) if any_infeasible else mask
        low = min(int(code.min()), 0) if n else 0
        shifted = code - low
        span = int(shifted.max()) + 1 if n else 1
        note_of = np.empty(span, dtype=object)
        source_of = np.empty(span, dtype=object)
        for slot in np.flatnonzero(np.bincount(shifted, minlength=span)).tolist():
            c = slot + low
            source_of[slot] = MODEL if c == 0 else ANALYTIC
            if c < 0:
                note_of[slot] = (feats.reasons[-c],)
            else:
                note_of[slot] = tuple(
                    f"{model}: analytic ({'; '.join(self.reasons.get(model, ['fallback']))})"
                    for model, bit in _BITS.items()
                    if c & bit
                )
        notes = note_of[shifted].tolist()
        source = source_of[shifted].tolist()
        kinds = _KINDS[feats.is_pool.view(np.uint8)].tolist()
        subtasks, resources = feats.names[0], feats.names[1]
        rows = zip(
            subtasks,
            resources,
            kinds,
            feasible.tolist(),
            cols["s10"].tolist(),
            cols["s50"].tolist(),
            cols["s90"].tolist(),
            cols["q10"].tolist(),
            cols["q50"].tolist(),
            cols["q90"].tolist(),
            cols["run"].tolist(),
            fidelity.tolist(),
            cols["usd"].tolist(),
            memory.astype(np.int64).tolist(),
            source,
            notes,
            strict=True,
        )
        # tuple.__new__(Prediction, row): a NamedTuple without its Python-level __new__.
        predictions: list[Prediction] = list(map(tuple.__new__, repeat(Prediction), rows))
        rest = time.perf_counter() - t0 - self.t_features - self.t_inference
        self.owner.last_report = PassReport(
            pairs=n,
            qpu_pairs=len(feats.qpu),
            pool_pairs=len(feats.pool),
            infeasible=int(infeasible.sum()),
            outputs=tuple(self.uses),
            features_seconds=self.t_features,
            inference_seconds=self.t_inference,
            assemble_seconds=rest,
        )
        return predictions

    # -- per kind ------------------------------------------------------------------------
    def _qpu(
        self,
        feats: PassFeatures,
        cols: dict[str, FloatArray],
        fidelity: FloatArray,
        mask: np.ndarray[Any, np.dtype[np.int64]],
    ) -> None:
        block = feats.qpu
        if not len(block):
            return
        rows = block.rows
        cfg = self.cfg
        run, fell = self._output(
            block,
            "qpu_runtime",
            "value",
            lambda: qpu_run_seconds(cfg, block.column("shots"), block.column("circuits")),
        )
        _flag(mask, rows, fell, _BITS["qpu_runtime"])
        # The seconds a job ahead holds each row's backend: its measured or learned service
        # time (``BackendInput.service_seconds``), else the analytic figure.
        service = np.array(
            [
                b_.service_seconds if b_.service_seconds is not None
                else self.cfg.service_seconds_per_job
                for b_ in feats.backends
            ],
            dtype=np.float64,
        )[block.res]  # fmt: skip
        queue: list[FloatArray] = []  # the analytic quantiles, computed when first needed

        def analytic_queue(i: int) -> FloatArray:
            if not queue:
                known = np.where(service > 0, service, cfg.service_seconds_per_job)
                queue.extend(queue_wait_seconds(cfg, block.column("queue_length"), known))
            return queue[i]

        quantiles = []
        queue_fell = np.zeros(len(block), dtype=bool)
        for i, output in enumerate(("p10", "p50", "p90")):
            values, fell = self._output(block, "queue_wait", output, partial(analytic_queue, i))
            quantiles.append(values)
            queue_fell |= fell
        # Separate quantile models cross on many rows: sort each row so they never do (a
        # sorting network of three: the values are finite here, so it equals np.sort).
        a, b, c = quantiles
        a, b = np.minimum(a, b), np.maximum(a, b)
        b, c = np.minimum(b, c), np.maximum(b, c)
        a, b = np.minimum(a, b), np.maximum(a, b)
        # The jobs ahead hold the device first. The trained model reads recent waits only,
        # which lag the queue: a queue that has just spiked would not show until its waits
        # are seen, and one that has drained still looks long for 20 jobs. So the median is
        # the live queue length times the seconds a job holds that backend wherever that is
        # known (learned from our own jobs' waits, or a gateway's measured execution;
        # Qonductor estimates a wait the same way), and at least that (with the analytic
        # service time) elsewhere. The model's spread is kept: shifted, not widened.
        length = block.column("queue_length")
        ahead = np.nan_to_num(length, nan=0.0).clip(min=0.0)
        live = ahead * service
        measured = np.array(
            [(b_.service_seconds or 0.0) > 0.0 for b_ in feats.backends], dtype=bool
        )[block.res] & np.isfinite(length)
        shift = np.where(measured, live - b, np.maximum(live - b, 0.0))
        if shift.any():
            a, b, c = np.maximum(a + shift, 0.0), b + shift, c + shift
        _flag(mask, rows, queue_fell, _BITS["queue_wait"])
        fid, fell = self._output(
            block, "fidelity", "value", lambda: block.column("estimated_success"), upper=1.0
        )
        _flag(mask, rows, fell, _BITS["fidelity"])
        ideal = np.array([backend.ideal for backend in feats.backends], dtype=bool)
        if ideal.any():
            fid = np.where(ideal[block.res], 1.0, fid)
        price = np.array([b.price_per_qpu_second for b in feats.backends], dtype=np.float64)
        cols["run"][rows] = run
        cols["q10"][rows], cols["q50"][rows], cols["q90"][rows] = a, b, c
        cols["s10"][rows] = a + run
        cols["s50"][rows] = b + run
        cols["s90"][rows] = c + run
        cols["usd"][rows] = run * price[block.res]
        fidelity[rows] = fid

    def _pool(
        self,
        feats: PassFeatures,
        cols: dict[str, FloatArray],
        fidelity: FloatArray,
        memory: FloatArray,
        mask: np.ndarray[Any, np.dtype[np.int64]],
    ) -> None:
        block = feats.pool
        if not len(block):
            return
        rows = block.rows
        cfg = self.cfg

        def analytic_time(gpu: bool = True) -> FloatArray:
            device = block.column("device_gpu")
            return simulation_seconds(
                cfg,
                block.column("num_qubits"),
                block.column("one_qubit_gates") + block.column("two_qubit_gates"),
                block.column("method_mps"),
                device if gpu else np.zeros_like(device),
                block.column("cpu_cores"),
            )

        run, fell = self._output(block, "classical_time", "value", analytic_time)
        _flag(mask, rows, fell, _BITS["classical_time"])
        gpu = block.column("device_gpu") > 0
        if gpu.any() and not self._reads("classical_time", "value", "device_gpu"):
            # A time model that does not read device_gpu (the shipped one was fitted on CPU
            # runs: the card) cannot tell a GPU pool. There its CPU figure is scaled by the
            # analytic GPU-to-CPU ratio (the card's assumption, 50x one core for the state
            # update; shots and start-up unchanged) until GPU runs are measured.
            ratio = analytic_time() / np.maximum(analytic_time(gpu=False), 1e-12)
            run = np.where(gpu & ~fell, run * np.minimum(ratio, 1.0), run)
        mem, fell = self._output(
            block,
            "classical_memory",
            "value",
            lambda: simulation_memory_bytes(block.column("num_qubits")),
        )
        _flag(mask, rows, fell, _BITS["classical_memory"])
        price = np.array([p.price_per_hour_usd for p in feats.pools], dtype=np.float64)
        cols["run"][rows] = run
        for name in ("s10", "s50", "s90"):
            cols[name][rows] = run
        for name in ("q10", "q50", "q90"):
            cols[name][rows] = 0.0
        cols["usd"][rows] = run * price[block.res] / 3600.0
        fidelity[rows] = 1.0  # Aer simulates exactly (MPS without truncation)
        memory[rows] = np.minimum(mem, 2.0**62)

    def _reads(self, name: str, output: str, feature: str) -> bool:
        """Whether the model serving ``name/output`` in this pass reads ``feature`` (no
        model, or reads not known: False only when known not to)."""
        job = self.jobs.get((name, output))
        if job is None or job.model is None:
            return True  # the analytic fallback serves: it reads everything
        reads = job.model.info.reads
        return reads is None or feature in reads

    # -- one output ------------------------------------------------------------------------
    def _prepare(self, block: KindBlock, name: str, output: str) -> _Job:
        """The model to run for an output and its distinct input rows (no model: why)."""
        source = self.owner.models
        model = source.model(name, output) if source is not None else None
        if model is None:
            reason = "no model source" if source is None else source.why_missing(name, output)
            return _Job(name, output, None, reason)
        x, inverse = block.matrix(model.info.features, model.info.reads)
        return _Job(name, output, model, "", x, inverse)

    def _output(
        self,
        block: KindBlock,
        name: str,
        output: str,
        analytic: Callable[[], FloatArray],
        upper: float = math.inf,
    ) -> tuple[FloatArray, BoolArray]:
        """The model's values for every pair of ``block`` (its target inverted, clipped to
        [0, upper]), the analytic value (``analytic()``, computed only then) where it has
        none; and which pairs fell back."""

        def fallback_values() -> FloatArray:
            return np.clip(np.nan_to_num(analytic(), nan=0.0), 0.0, upper)

        everyone = np.ones(len(block), dtype=bool)
        job = self.jobs[name, output]
        if job.model is None:
            return self._fallback(name, output, len(block), job.reason, fallback_values(), everyone)
        info = job.model.info
        if job.raw is None:
            reason = f"{info.key} failed this pass: {job.error}"[:300]
            return self._fallback(name, output, len(block), reason, fallback_values(), everyone)
        # Per distinct row first (fewer than pairs), then spread to the pairs.
        per_row = _inverse_target(info.target, job.raw)
        reason = ""
        if np.isfinite(per_row).all():
            values = np.clip(per_row, 0.0, upper)[job.inverse]
            bad = np.zeros(len(block), dtype=bool)
        else:
            values = per_row[job.inverse]
            bad = ~np.isfinite(values)
            values = np.where(bad, fallback_values(), np.clip(values, 0.0, upper))
            reason = f"{info.key} gave non-finite values for {int(bad.sum())} pair(s)"
            self.reasons.setdefault(name, []).append(reason)
        use = OutputUse(name, output, MODEL, len(block), len(job.x), job.rows_run, reason)
        self.uses.append(use)
        return values, bad

    def _fallback(
        self,
        name: str,
        output: str,
        pairs: int,
        reason: str,
        analytic: FloatArray,
        fell: BoolArray,
    ) -> tuple[FloatArray, BoolArray]:
        self.uses.append(OutputUse(name, output, ANALYTIC, pairs, 0, 0, reason))
        known = self.reasons.setdefault(name, [])
        if reason not in known:
            known.append(reason)
        return analytic, fell


def _inverse_target(target: str, raw: FloatArray) -> FloatArray:
    with np.errstate(over="ignore", invalid="ignore"):
        if target == "log":
            return np.exp(raw)
        if target == "logit":
            return 1.0 / (1.0 + np.exp(-raw))
    return raw
