"""Latency of one decision pass of the predictor: 10,000 (subtask, resource) pairs, feature
extraction included, median and p99 over repeated passes (goal: p99 < 25 ms).

    .venv/bin/python bench/predictor_latency.py [--quick] [--models DIR] [--passes N]
        [--threads N [N ...]] [--workers N] [--synthetic]

``bench/predictor.py`` prints the cold and steady rows of this benchmark (``latency_rows``)
in the predictor's results table and model card.

Workload: 625 distinct circuits (qiskit random circuits, 2-27 qubits; parsed and counted
BEFORE the timed passes, as the operator caches them by source hash) x 16 resources
(14 quantum backends + 2 classical pools by default) = 10,000 pairs.

Models: the ``.onnx`` files of ``--models`` (default ``models/`` when it holds a model of
every kind); otherwise, or with ``--synthetic``, SYNTHETIC stand-ins: LightGBM trained on
random data over the trainers' feature sets, converted with onnxmltools, cached under
``~/.cache/qorch/predictor-bench``, in two profiles: "trainers" (the trainers' tree counts
and leaves) and "1mb" (450 trees x 31 leaves, ~1 MB each, the size the toolchain notes
time). Their predictions are meaningless; their cost per row is that of a real model of
that shape.

Regimes, each timed over ``--passes`` passes (a model reruns only rows whose inputs changed
since the previous pass; see ``LoadedModel.run``):
- cold: every model runs every distinct row (first pass, or a new calibration day);
- churn-all ("steady"): every backend's queue history changes each pass (the queue-wait
  models rerun all their rows; circuits and calibrations stay, so the other models reuse
  theirs): what a decision pass meets between calibration days;
- churn-one: one backend's history changes each pass;
- same: nothing changed (features, lookup and assembly only);
- analytic: no models at all (the fallback's own cost).

``--threads 1 2`` times every regime once per onnxruntime intra-op thread count (the cold
pass is one big tree ensemble, which two threads split by rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

import numpy as np  # noqa: E402

from qorch.predictor.catalogue import (  # noqa: E402
    BACKEND_FEATURES,
    CIRCUIT_FEATURES,
    CLASSICAL_FEATURES,
    META_FEATURES,
    META_HELDOUT_ERROR,
    META_HELDOUT_METRIC,
    META_MODEL,
    META_OUTPUT,
    META_SOURCES,
    META_SPLIT,
    META_TARGET,
    MODELS,
)
from qorch.predictor.features import (  # noqa: E402
    BackendInput,
    CalibrationMedians,
    ParsedCircuit,
    PoolInput,
    PredictionContext,
    QueueHistory,
    SubtaskInput,
)
from qorch.predictor.models import ModelStore  # noqa: E402
from qorch.predictor.service import Predictor  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qorch/predictor-bench"
SYNTHETIC_VERSION = "v2"

# Synthetic stand-ins shaped like what the trainers fit (operator/qorch/predictor/training/
# at the time of writing): input columns, trees, leaves. Profile "1mb" gives every model
# 450 trees x 31 leaves (~1 MB, the size the toolchain notes time) as a worst case.
SYNTHETIC: dict[str, tuple[tuple[str, ...], int, int]] = {
    # qpu_runtime.py: the runtime trace's columns; l1-200, 63 leaves
    "qpu_runtime": (("depth_sum", "qubits_sum", "two_qubit_gates", "shots", "circuits"), 200, 63),
    # queue_wait.py: job size + recent waits + calendar; 200 trees, 15 leaves
    "queue_wait": (
        ("num_qubits", "depth", "shots", "circuits", "backend_qubits", "recent_wait_p50_s",
         "recent_wait_p90_s", "recent_wait_count", "hour_of_day_utc", "day_of_week"),
        200,
        15,
    ),
    # fidelity.py: CIRCUIT + BACKEND features; 300 trees, 15 leaves
    "fidelity": ((*CIRCUIT_FEATURES, *BACKEND_FEATURES), 300, 15),
    # classical.py: CIRCUIT + CLASSICAL features; 200 trees, 7 leaves
    "classical_time": ((*CIRCUIT_FEATURES, *CLASSICAL_FEATURES), 200, 7),
    "classical_memory": ((*CIRCUIT_FEATURES, *CLASSICAL_FEATURES), 200, 7),
}  # fmt: skip
PROFILES = ("trainers", "1mb")
REGIMES = ("cold", "churn-all", "churn-one", "same")
TARGET = {
    "qpu_runtime": "log",
    "queue_wait": "log",
    "fidelity": "logit",
    "classical_time": "log",
    "classical_memory": "log",
}


def synthetic_models(profile: str = "trainers") -> Path:
    """A complete set of LightGBM ONNX models on random data (built once, cached)."""
    out = CACHE / f"{SYNTHETIC_VERSION}-{profile}"
    expected = [f"{m}_{o}.onnx" for m, outs in MODELS.items() for o in outs]
    if all((out / name).exists() for name in expected):
        return out
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for model, outputs in MODELS.items():
        features, trees, leaves = SYNTHETIC[model]
        if profile == "1mb":
            trees, leaves = 450, 31
        x = rng.random((6000, len(features))).astype(np.float32) * 100.0
        signal = x @ rng.random(len(features)) / len(features)
        y = np.sin(signal / 7.0) + 0.01 * signal + 0.2 * rng.standard_normal(len(x))
        for output in outputs:
            params: dict[str, Any] = {"objective": "regression"}
            if output.startswith("p"):
                params = {"objective": "quantile", "alpha": int(output[1:]) / 100.0}
            est = lgb.LGBMRegressor(
                n_estimators=trees,
                num_leaves=leaves,
                min_child_samples=5,
                n_jobs=1,
                verbose=-1,
                **params,
            ).fit(x, y)
            onx = convert_lightgbm(
                est,
                initial_types=[("input", FloatTensorType([None, len(features)]))],
                zipmap=False,
            )
            meta = {
                META_MODEL: model,
                META_OUTPUT: output,
                META_FEATURES: json.dumps(list(features)),
                META_TARGET: TARGET[model],
                META_HELDOUT_METRIC: "synthetic",
                META_HELDOUT_ERROR: "1.0",
                META_SPLIT: "none (random data)",
                META_SOURCES: "bench/predictor_latency.py synthetic stand-in",
            }
            for key, value in meta.items():
                prop = onx.metadata_props.add()
                prop.key, prop.value = key, value
            (out / f"{model}_{output}.onnx").write_bytes(onx.SerializeToString())
    return out


def workload(
    circuits: int, backends: int, pools: int, seed: int = 0
) -> tuple[list[SubtaskInput], list[BackendInput], list[PoolInput], float]:
    """Subtasks (circuits parsed beforehand), backends, pools; and the one-time parse and
    count cost per circuit (ms), which a pass does not pay."""
    from qiskit.circuit.random import random_circuit

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    subtasks = []
    for i in range(circuits):
        n = int(rng.integers(2, 28))
        depth = int(rng.integers(2, 40))
        qc = random_circuit(n, depth, max_operands=2, measure=True, seed=seed * 100_000 + i)
        shots = int(rng.choice([1024, 2000, 4000, 8192]))
        subtasks.append(SubtaskInput(f"s{i}", ParsedCircuit.of(qc, key=f"c{i}"), shots))
    parse_ms = (time.perf_counter() - t0) / max(circuits, 1) * 1e3
    sizes = [27, 127, 133, 156]
    quantum = []
    for b in range(backends):
        e2 = float(rng.uniform(0.004, 0.02))
        quantum.append(
            BackendInput(
                name=f"qpu{b}",
                num_qubits=sizes[b % len(sizes)],
                price_per_qpu_second=1.6,  # illustrative: USD 96 per QPU minute
                calibration=CalibrationMedians(
                    two_qubit_error=e2,
                    readout_error=float(rng.uniform(0.01, 0.04)),
                    single_qubit_error=e2 / 30,
                    t1_us=float(rng.uniform(80, 250)),
                    t2_us=float(rng.uniform(50, 200)),
                    day="2026-01-01",
                ),
                history=history(rng),
            )
        )
    classical = [
        PoolInput(f"pool{p}", gpu=p % 2 == 1, max_qubits=32, cpu_cores=4.0,
                  price_per_hour_usd=2.5 if p % 2 else 0.2)
        for p in range(pools)
    ]  # fmt: skip
    return subtasks, quantum, classical, parse_ms


def history(rng: np.random.Generator) -> QueueHistory:
    now = float(rng.integers(0, 400))
    return QueueHistory(
        queue_length=now,
        queue_length_mean_1h=now * float(rng.uniform(0.7, 1.3)),
        queue_length_max_1h=now * 1.5,
        queue_length_1h_ago=float(rng.integers(0, 400)),
        recent_waits_s=tuple(float(w) for w in rng.exponential(600.0, size=20)),
    )


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_passes(
    predictor: Predictor,
    pairs: list[tuple[str, str]],
    context: PredictionContext,
    passes: int,
    regime: str,
    seed: int = 1,
) -> dict[str, float]:
    """Median and p99 (ms) of whole passes and their parts. Wall time, and the calling
    thread's CPU time (which leaves out time the thread waited for a core on a busy
    machine; onnxruntime runs on the calling thread with one intra-op thread)."""
    rng = np.random.default_rng(seed)
    store = predictor.models
    wall: list[float] = []
    cpu: list[float] = []
    feats: list[float] = []
    infer: list[float] = []
    assemble: list[float] = []
    rows_run: list[int] = []
    predictor.predict(pairs, context)  # warm-up (allocations, first-run paths)
    names = list(context.backends)
    current = dict(context.backends)
    for i in range(passes):
        ctx = context
        if regime in ("churn-all", "churn-one"):
            # Histories move forward: the backends that changed keep their new history.
            for name in names if regime == "churn-all" else [names[i % len(names)]]:
                b = current[name]
                current[name] = BackendInput(
                    b.name, b.num_qubits, b.price_per_qpu_second, b.calibration, history(rng)
                )
            ctx = PredictionContext(context.subtasks, dict(current), context.pools, context.now)
        if regime == "cold" and isinstance(store, ModelStore):
            for m, outs in MODELS.items():
                for o in outs:
                    loaded = store.model(m, o)
                    if loaded is not None:
                        loaded.forget()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        out = predictor.predict(pairs, ctx)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
        report = predictor.last_report
        assert report is not None and len(out) == len(pairs) and not report.error
        feats.append(report.features_seconds * 1e3)
        infer.append(report.inference_seconds * 1e3)
        assemble.append(report.assemble_seconds * 1e3)
        rows_run.append(sum(u.rows_run for u in report.outputs))
    return {
        "median_ms": statistics.median(wall),
        "p99_ms": _pct(wall, 99),
        "cpu_median_ms": statistics.median(cpu),
        "cpu_p99_ms": _pct(cpu, 99),
        "features_median_ms": statistics.median(feats),
        "features_p99_ms": _pct(feats, 99),
        "inference_median_ms": statistics.median(infer),
        "inference_p99_ms": _pct(infer, 99),
        "assemble_median_ms": statistics.median(assemble),
        "rows_run_median": float(statistics.median(rows_run)),
    }


def model_sets(models_dir: Path | None, synthetic: bool = False) -> list[tuple[str, Path]]:
    """(label, directory) of the model sets to time: the one given; else ``models/`` when
    it holds a model of every kind; else (or when asked) the synthetic profiles."""
    if models_dir is not None:
        return [(models_dir.name, models_dir)]
    trained = REPO / "models"
    if not synthetic and complete(trained):
        return [("trained (models/)", trained)]
    return [(f"synthetic {p}", synthetic_models(p)) for p in PROFILES]


def complete(directory: Path) -> bool:
    """The directory holds a file for every model of the catalogue."""
    return all(any(directory.glob(f"{m}*.onnx")) for m in MODELS)


def run(
    quick: bool = False,
    models_dir: Path | None = None,
    passes: int | None = None,
    backends: int = 14,
    pools: int = 2,
    circuits: int = 625,
    threads: Sequence[int] = (1,),
    synthetic: bool = False,
    workers: int = 1,
    regimes: Sequence[str] = REGIMES,
) -> dict[str, Any]:
    """Every regime for every model set and intra-op thread count, and the analytic pass."""
    passes = passes or (20 if quick else 100)
    subtasks, quantum, classical, parse_ms = workload(circuits, backends, pools)
    now = datetime(2026, 1, 5, 14, tzinfo=UTC)
    context = PredictionContext.of(subtasks, quantum, classical, now)
    pairs = [(s.name, r) for s in subtasks for r in [*context.backends, *context.pools]]
    results: dict[str, Any] = {
        "pairs": len(pairs),
        "resources": f"{circuits} circuits x ({backends} backends + {pools} pools)",
        "parse_ms_per_circuit": parse_ms,
        "threads": list(threads),
        "workers": workers,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "passes": passes,
        "regimes": list(regimes),
        "analytic": time_passes(Predictor(None), pairs, context, passes, "churn-all"),
        "sets": [],
    }
    for label, directory in model_sets(models_dir, synthetic):
        for n_threads in threads:
            store = ModelStore(directory, threads=n_threads)
            store.refresh()
            state = store.state()
            predictor = Predictor(store, workers=workers)
            entry: dict[str, Any] = {
                "label": label,
                "threads": n_threads,
                "models_dir": str(directory),
                "models_loaded": len(state.loaded),
                "model_bytes": sum(Path(i.path).stat().st_size for i in state.loaded),
                "missing": list(state.missing),
                "rejected": [f"{Path(r.path).name}: {r.reason}" for r in state.rejected],
            }
            for regime in regimes:
                entry[regime] = time_passes(predictor, pairs, context, passes, regime)
            predictor.close()
            report = predictor.last_report
            assert report is not None
            entry["distinct_rows"] = {u.key: u.rows for u in report.outputs}
            results["sets"].append(entry)
    results["load_average_end"] = os.getloadavg()[0]
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['pairs']} pairs ({results['resources']}), {results['passes']} passes per "
        f"row; sessions {results['workers']} at a time; {results['cpus']} CPUs, "
        f"load average {results['load_average']:.1f} at start, "
        f"{results['load_average_end']:.1f} at the end",
        f"one-time parse + count per circuit (cached, not in a pass): "
        f"{results['parse_ms_per_circuit']:.1f} ms",
        "",
        f"{'models':<26} {'regime':<9} {'features ms':>13} {'inference ms':>15} "
        f"{'assemble':>8} {'total wall ms':>15} {'thread CPU ms':>15} {'rows run':>8}",
        f"{'':<26} {'':<9} {'median / p99':>13} {'median / p99':>15} {'median':>8} "
        f"{'median / p99':>15} {'median / p99':>15} {'median':>8}",
    ]

    def line(label: str, regime: str, r: dict[str, float]) -> str:
        return (
            f"{label:<26} {regime:<9} "
            f"{r['features_median_ms']:>5.1f} / {r['features_p99_ms']:<5.1f} "
            f"{r['inference_median_ms']:>6.1f} / {r['inference_p99_ms']:<6.1f} "
            f"{r['assemble_median_ms']:>8.1f} {r['median_ms']:>6.1f} / {r['p99_ms']:<6.1f} "
            f"{r['cpu_median_ms']:>6.1f} / {r['cpu_p99_ms']:<6.1f} {r['rows_run_median']:>8.0f}"
        )

    for entry in results["sets"]:
        label = set_label(entry)
        for regime in results["regimes"]:
            lines.append(line(label, regime, entry[regime]))
            label = ""
    lines.append(line("none (analytic)", "-", results["analytic"]))
    lines.append("")
    for entry in results["sets"]:
        lines.append(
            f"distinct rows per pass, {entry['label']}: "
            + ", ".join(f"{k} {v}" for k, v in entry["distinct_rows"].items())
        )
        if entry["missing"] or entry["rejected"]:
            lines.append(f"  missing: {entry['missing']}; rejected: {entry['rejected']}")
    lines.append(
        "cold: every distinct row runs (first pass, a new calibration day); churn-all: every "
        "backend's queue history changes each pass (the queue models rerun everything); "
        "churn-one: one backend's does; same: nothing changed since the last pass. "
        "Thread CPU counts the calling thread only (onnxruntime's own intra-op threads and, "
        "with --workers > 1, the pool threads are not in it). Goal: p99 < 25 ms."
    )
    return "\n".join(lines)


def set_label(entry: dict[str, Any]) -> str:
    threads = entry["threads"]
    return (
        f"{entry['label']} ({entry['model_bytes'] / 1e6:.1f} MB), "
        f"{threads} thread{'s' if threads > 1 else ''}"
    )


# What bench/predictor.py reports: the regimes a decision pass meets, at these thread counts.
CARD_REGIMES: Final = {"cold": "cold", "churn-all": "steady"}
CARD_THREADS: Final = (1, 2)


def latency_rows(models_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """Rows of the predictor's results table (``qorch.predictor.training.common.row``
    shape): median and p99 of a whole pass over 10,000 pairs, features included, cold (1 and
    2 onnxruntime intra-op threads) and steady (1 thread), with the models of ``models_dir``;
    the analytic fallback's pass (no models) beside each. None when ``models_dir`` lacks a
    model of some kind (the pass would then be partly analytic and say little)."""
    if not complete(models_dir):
        missing = [m for m in MODELS if not any(models_dir.glob(f"{m}*.onnx"))]
        raise FileNotFoundError(f"{models_dir} has no model file for {missing}")
    r = run(quick=quick, models_dir=models_dir, threads=CARD_THREADS, regimes=tuple(CARD_REGIMES))
    rows = []
    for entry in r["sets"]:
        where = Path(entry["models_dir"])
        shown = where.relative_to(REPO) if where.is_relative_to(REPO) else where
        split = (
            f"{r['pairs']:,} pairs ({r['resources']}), {r['passes']} passes; {shown}/ "
            f"({entry['models_loaded']} files, {entry['model_bytes'] / 1e6:.1f} MB); "
            f"{r['cpus']} CPUs, load average {r['load_average']:.1f} -> "
            f"{r['load_average_end']:.1f}"
        )
        threads = entry["threads"]
        method = (
            f"Predictor.predict, features + onnxruntime ({threads} intra-op "
            f"thread{'s' if threads > 1 else ''}) + Prediction objects"
        )
        for regime, name in CARD_REGIMES.items():
            if name == "steady" and threads != 1:
                continue  # 2 threads change nothing there: the steady pass runs ~40 rows
            t = entry[regime]
            for stat, goal in (("median_ms", ""), ("p99_ms", "< 25 ms")):
                rows.append(
                    {
                        "model": "predictor (serving)",
                        "metric": f"pass latency ms, {name}, {stat.removesuffix('_ms')}",
                        "split": split,
                        "method": method,
                        "value": t[stat],
                        "baselines": {"analytic fallback (no models)": r["analytic"][stat]},
                        "goal": goal,
                        "note": _note(regime, t, entry) if stat == "p99_ms" else "",
                    }
                )
    return rows


def _note(regime: str, t: dict[str, float], entry: dict[str, Any]) -> str:
    what = {
        "cold": "every distinct row runs (first pass, or every model's remembered rows dropped)",
        "churn-all": "every backend's queue history changed since the last pass, circuits "
        "and calibrations did not",
    }[regime]
    rows = ", ".join(f"{k} {v}" for k, v in entry["distinct_rows"].items())
    return (
        f"{what}; median ms: features {t['features_median_ms']:.1f}, inference "
        f"{t['inference_median_ms']:.1f}, assembly {t['assemble_median_ms']:.1f}; calling "
        f"thread CPU median / p99 {t['cpu_median_ms']:.1f} / {t['cpu_p99_ms']:.1f} ms; rows "
        f"run (median) {t['rows_run_median']:.0f}; distinct rows: {rows}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer passes")
    parser.add_argument("--models", type=Path, default=None, help="model directory")
    parser.add_argument("--passes", type=int, default=None)
    parser.add_argument("--backends", type=int, default=14)
    parser.add_argument("--pools", type=int, default=2)
    parser.add_argument("--circuits", type=int, default=625)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="onnxruntime intra-op threads"
    )
    parser.add_argument("--workers", type=int, default=1, help="sessions run at once")
    parser.add_argument("--synthetic", action="store_true", help="synthetic models only")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    results = run(
        args.quick,
        args.models,
        args.passes,
        args.backends,
        args.pools,
        args.circuits,
        args.threads,
        args.synthetic,
        args.workers,
    )
    print(table(results))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
