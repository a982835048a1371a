"""Latency of one cluster-wide decision pass, predictions included: 1,000 unfinished subtasks
(100 workflows of 10, small random DAGs) x (16 quantum backends + a GPU and a CPU pool),
median and p99 of the whole pass and of each part (goal: p99 < 1 s).

    nice .venv/bin/python bench/decision_pass.py [--quick] [--passes N] [--models DIR]
        [--workflows N] [--subtasks N] [--backends N] [--seed N]

A pass is what the operator's leader would run on each timer tick:
- predict: the real ``qorch.predictor.Predictor`` over every (subtask, resource) pair with
  the models of ``--models`` (default ``models/``; the analytic fallback where a model is
  missing), features included; each pass every backend's queue history moves on, so the
  queue-wait models rerun all their rows ("steady" in ``bench/predictor_latency.py``);
- snapshot: grouping the predictions per workflow, Qorch's queued load per backend, and
  the ``ClusterSnapshot`` (the wiring's share);
- decide: ``qorch.orchestrator.cluster.decide``.

Circuits (qiskit random circuits, 2-27 qubits, built by ``predictor_latency.workload``) are
parsed and counted once before the timed passes, as the operator caches them. Sources of
each DAG are ready, queued, gated, released or running; the rest wait on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
from predictor_latency import complete, history, workload  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from qorch.api.backend import Provider  # noqa: E402
from qorch.api.workflow import (  # noqa: E402
    BudgetSpec,
    CircuitSpec,
    ClassicalPool,
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ObjectivePreset,
    ObjectiveSpec,
    ResourcesSpec,
    SubtaskSpec,
)
from qorch.orchestrator.capacity import NodeInfo, PodUsage, Taint, pool_capacity  # noqa: E402
from qorch.orchestrator.cluster import (  # noqa: E402
    BackendLoad,
    ClusterDecision,
    ClusterSnapshot,
    Stage,
    SubtaskEntry,
    WorkflowEntry,
    decide,
)
from qorch.orchestrator.prediction import Prediction  # noqa: E402
from qorch.orchestrator.snapshot import BackendInfo  # noqa: E402
from qorch.predictor.features import (  # noqa: E402
    PoolInput,
    PredictionContext,
    SubtaskInput,
)
from qorch.predictor.models import ModelStore  # noqa: E402
from qorch.predictor.service import Predictor  # noqa: E402

NOW = dt.datetime(2026, 1, 5, 14, tzinfo=dt.UTC)
QASM = "OPENQASM 3.0; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"
GIB = float(1 << 30)
POOLS = (
    ClassicalPool(name="cpu", nodeSelector={"qorch.io/pool": "cpu"}, maxQubits=28),
    ClassicalPool(name="gpu", nodeSelector={"qorch.io/pool": "gpu"}, gpu=True, maxQubits=32),
)
POOL_INPUTS = (
    PoolInput("cpu", gpu=False, max_qubits=28, cpu_cores=1.0, price_per_hour_usd=0.0408),
    PoolInput("gpu", gpu=True, max_qubits=32, cpu_cores=4.0, price_per_hour_usd=1.006),
)
# The nodes the pools' free capacity is read from (as the operator reads it, every pass):
# 64 CPU nodes (8 cores, 32 GiB) and 8 GPU nodes (16 cores, 128 GiB, 2 GPUs), with 600
# running pods' requests on them.
NODES = [
    NodeInfo(f"cpu-{i}", {"qorch.io/pool": "cpu"}, 8.0, 32 * GIB) for i in range(64)
] + [
    NodeInfo(f"gpu-{i}", {"qorch.io/pool": "gpu"}, 16.0, 128 * GIB, gpus=2.0,
             taints=(Taint("nvidia.com/gpu", "present"),))
    for i in range(8)
]  # fmt: skip
BOUND = [
    PodUsage(NODES[i % len(NODES)].name, 0.5, 2 * GIB, 1.0 if i % 50 == 0 else 0.0)
    for i in range(600)
]
# Where a DAG's sources stand: ready, queued at a backend, a gated or released pod, running.
SOURCE_STAGES = (Stage.READY, Stage.QUEUED, Stage.GATED, Stage.RELEASED, Stage.RUNNING)
SOURCE_WEIGHTS = (0.35, 0.35, 0.1, 0.1, 0.1)


@dataclasses.dataclass
class Workload:
    """The cluster: workflows (spec and subtask states), the predictor's inputs, the pairs."""

    specs: dict[str, HybridWorkflowSpec]
    states: dict[str, list[SubtaskEntry]]
    context: PredictionContext
    pairs: list[tuple[str, str]]
    parse_ms: float


def build(workflows: int, subtasks: int, backends: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    circuits, quantum, _, parse_ms = workload(workflows * subtasks, backends, 0, seed)
    names = [b.name for b in quantum]
    inputs: list[SubtaskInput] = []
    specs: dict[str, HybridWorkflowSpec] = {}
    states: dict[str, list[SubtaskEntry]] = {}
    for w in range(workflows):
        key = f"bench/w{w:03d}"
        subs: list[SubtaskSpec] = []
        entries: list[SubtaskEntry] = []
        for j in range(subtasks):
            earlier = [f"s{i}" for i in range(j) if rng.random() < 0.15][:3]
            subs.append(
                SubtaskSpec(name=f"s{j}", dependsOn=earlier, circuit=CircuitSpec(qasm=QASM))
            )
            source = circuits[w * subtasks + j]
            inputs.append(dataclasses.replace(source, name=f"{key}/s{j}"))
            counts = source.circuit.counts
            qubits = counts.num_qubits if counts is not None else None
            stage = Stage.BLOCKED
            where: str | None = None
            if not earlier:
                stage = SOURCE_STAGES[int(rng.choice(len(SOURCE_STAGES), p=SOURCE_WEIGHTS))]
                if stage in (Stage.GATED, Stage.RELEASED):
                    where = str(rng.choice(["cpu", "gpu"]))
                elif stage in (Stage.QUEUED, Stage.RUNNING):
                    where = str(rng.choice(names))
            since = NOW - dt.timedelta(seconds=float(rng.uniform(0, 1800)))
            entries.append(SubtaskEntry(f"s{j}", stage, where, since=since, num_qubits=qubits))
        deadline = int(rng.integers(1800, 14400)) if rng.random() < 0.2 else None
        specs[key] = HybridWorkflowSpec(
            subtasks=subs,
            resources=ResourcesSpec(quantumBackends=names, classicalPools=list(POOLS)),
            objective=ObjectiveSpec(preset=rng.choice(list(ObjectivePreset))),
            budget=BudgetSpec(deadlineSeconds=deadline),
        )
        states[key] = entries
    context = PredictionContext.of(inputs, quantum, POOL_INPUTS, NOW)
    resources = [*context.backends, *context.pools]
    pairs = [(s.name, r) for s in inputs for r in resources]
    return Workload(specs, states, context, pairs, parse_ms)


def snapshot(work: Workload, predictions: Sequence[Prediction]) -> ClusterSnapshot:
    """What the wiring would assemble: predictions per workflow, Qorch's load per backend."""
    per: dict[str, dict[tuple[str, str], Prediction]] = {k: {} for k in work.specs}
    for (name, resource), p in zip(work.pairs, predictions, strict=True):
        key, sub = name.rsplit("/", 1)
        per[key][(sub, resource)] = p
    jobs: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for key, states in work.states.items():
        for s in states:
            if s.stage is Stage.QUEUED and s.resource is not None:
                there = per[key].get((s.name, s.resource))
                run = there.run_seconds if there is not None else 0.0
                jobs[s.resource] = jobs.get(s.resource, 0) + 1
                seconds[s.resource] = seconds.get(s.resource, 0.0) + run
    loads = {
        b.name: BackendLoad(
            BackendInfo(
                b.name,
                Provider.FAKE,
                b.num_qubits,
                queue_length=int(b.history.queue_length or 0),
                price_per_qpu_second=b.price_per_qpu_second,
            ),
            jobs.get(b.name, 0),
            seconds.get(b.name, 0.0),
        )
        for b in work.context.backends.values()
    }
    entries = [
        WorkflowEntry(
            key,
            spec,
            HybridWorkflowStatus(),
            {s.name: s for s in work.states[key]},
            per[key],
            started=NOW - dt.timedelta(minutes=30),
        )
        for key, spec in work.specs.items()
    ]
    return ClusterSnapshot(NOW, entries, loads, pool_capacity(POOLS, NODES, BOUND))


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(
    *,
    quick: bool,
    passes: int | None,
    models_dir: Path | None,
    workflows: int,
    subtasks: int,
    backends: int,
    seed: int,
) -> dict[str, Any]:
    passes = passes or (10 if quick else 100)
    load_start = os.getloadavg()
    work = build(workflows, subtasks, backends, seed)
    directory = models_dir or REPO / "models"
    store = ModelStore(directory, threads=1) if complete(directory) else None
    if store is not None:
        store.refresh()
    predictor = Predictor(store)
    rng = np.random.default_rng(seed + 1)
    timings: dict[str, list[float]] = {"predict": [], "snapshot": [], "decide": [], "total": []}
    cpu: list[float] = []
    decision = ClusterDecision()
    context = work.context
    for i in range(passes + 1):  # the first is a warm-up (cold models), not counted
        context = PredictionContext(
            context.subtasks,
            {n: dataclasses.replace(b, history=history(rng)) for n, b in context.backends.items()},
            context.pools,
            context.now,
        )
        c0 = time.thread_time()
        t0 = time.perf_counter()
        predictions = predictor.predict(work.pairs, context)
        t1 = time.perf_counter()
        snap = snapshot(work, predictions)
        t2 = time.perf_counter()
        decision = decide(snap)
        t3 = time.perf_counter()
        if i == 0:
            continue
        cpu.append((time.thread_time() - c0) * 1e3)
        for part, seconds in (
            ("predict", t1 - t0),
            ("snapshot", t2 - t1),
            ("decide", t3 - t2),
            ("total", t3 - t0),
        ):
            timings[part].append(seconds * 1e3)
    report = predictor.last_report
    decided = sum(1 for e in work.states.values() for s in e if s.stage is not Stage.BLOCKED)
    spread = {p.placement.name for p in decision.places}
    return {
        "passes": passes,
        "workflows": workflows,
        "subtasks": workflows * subtasks,
        "decided": decided,
        "pairs": len(work.pairs),
        "backends": backends,
        "models": f"{directory} ({'loaded' if store is not None else 'incomplete: analytic'})",
        "fallbacks": [u.key for u in report.fallbacks] if report else [],
        "parse_ms": work.parse_ms,
        "timings": timings,
        "cpu": cpu,
        "decision": {
            "places": len(decision.places),
            "moves": len(decision.moves),
            "waits": len(decision.waits),
            "resources_used": len(spread),
        },
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }


def show(r: dict[str, Any]) -> None:
    console = Console()
    table = Table(
        title=(
            f"Decision pass: {r['subtasks']:,} unfinished subtasks ({r['decided']} placeable or "
            f"movable) in {r['workflows']} workflows x ({r['backends']} backends + 2 pools) = "
            f"{r['pairs']:,} pairs; {r['passes']} passes"
        )
    )
    table.add_column("part")
    table.add_column("median ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("max ms", justify="right")
    for part, values in r["timings"].items():
        style = "bold" if part == "total" else None
        table.add_row(
            part,
            f"{statistics.median(values):.1f}",
            f"{_pct(values, 99):.1f}",
            f"{max(values):.1f}",
            style=style,
        )
    cpu = r["cpu"]
    table.add_row(
        "total, thread CPU", f"{statistics.median(cpu):.1f}", f"{_pct(cpu, 99):.1f}",
        f"{max(cpu):.1f}", style="dim",
    )  # fmt: skip
    console.print(table)
    d = r["decision"]
    total_p99 = _pct(r["timings"]["total"], 99)
    console.print(
        f"last pass: {d['places']} placed, {d['moves']} moved, {d['waits']} waiting; "
        f"placements on {d['resources_used']} distinct resources\n"
        f"models: {r['models']}; analytic fallbacks: {', '.join(r['fallbacks']) or 'none'}\n"
        f"machine: {r['machine']}, {r['cpus']} CPUs, Python {r['python']}; load average "
        f"{r['load_start'][0]:.2f} / {r['load_start'][1]:.2f} (1 / 5 min) at start, "
        f"{r['load_end'][0]:.2f} / {r['load_end'][1]:.2f} at the end\n"
        f"one-time circuit parse + count (not in a pass): {r['parse_ms']:.1f} ms per circuit\n"
        f"goal p99 < 1000 ms: {'met' if total_p99 < 1000 else 'NOT met'} ({total_p99:.0f} ms)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 passes instead of 100")
    parser.add_argument("--passes", type=int, default=None)
    parser.add_argument("--models", type=Path, default=None, help="model directory")
    parser.add_argument("--workflows", type=int, default=100)
    parser.add_argument("--subtasks", type=int, default=10, help="per workflow")
    parser.add_argument("--backends", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    show(
        run(
            quick=args.quick,
            passes=args.passes,
            models_dir=args.models,
            workflows=args.workflows,
            subtasks=args.subtasks,
            backends=args.backends,
            seed=args.seed,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
