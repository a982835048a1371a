"""Scenarios for the twin: the world replayed from the real traces and the workflows that
arrive in it, built from a small description (a YAML file for ``qorch simulate``).

The world (``../shared/data``, read through ``qorch.sim.exogenous``):

- one quantum backend per IBM backend of the queue-length trace, its others' queue replayed
  minute by minute; a job found behind ``n`` others waits for ``n`` run times drawn from the
  real per-job run times (2019-20), scaled to the mean service time the backend's own queue
  drains at in the trace (2023: jobs served per minute, from the trace's decreases), since
  the two eras' jobs differ; and no longer than until the trace shows ``n`` jobs gone
  (first come first served: a queue that empties takes its waiting jobs with it); a
  backend marked other than ``active`` (``internal``, ``dedicated``) or not operational
  takes no new work, and the jobs queued there wait until it is back;
- calibrations: each backend follows ibm_perth's real daily calibrations from its own start
  day (backends are spread over the calibration days), the day changing at midnight;
- a CPU pool and a GPU pool, which may lose nodes for a while (``node_loss``); the GPU
  pool's background load is the production GPU cluster's busy curve (its 149 days
  compressed ``gpu_time_scale`` times), rescaled so that its peak takes
  ``gpu_background_peak`` of the pool (the pod list is a sample of a much larger cluster:
  held against all its nodes it never passes 1%).

The workflows are drawn (seeded) from five shapes a hybrid platform runs: sampling batches
with a classical post-processing step, deep circuits, variational loops between classical
pre- and post-steps, wide circuits that only a simulator holds, and classical-only
pipelines. Their circuits are generated OpenQASM, parsed by the same parser the operator
uses.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from qorch.api.backend import Provider
from qorch.api.workflow import (
    HybridWorkflowSpec,
    ObjectivePreset,
    Toleration,
)
from qorch.orchestrator.prices import IBM_PAY_AS_YOU_GO_USD_PER_QPU_SECOND
from qorch.orchestrator.snapshot import BackendInfo
from qorch.sim.backend import SimBackend
from qorch.sim.exogenous import (
    DAY_S,
    CalibrationDays,
    GpuBackground,
    QueueReplay,
    ServiceTimes,
)
from qorch.sim.pool import SimPool
from qorch.sim.twin import TwinBackend, TwinPool, TwinWorkflow

GIB = 2.0**30
# Qubits of the IBM devices in the queue-length trace (IBM's published sizes).
IBM_QUBITS: Mapping[str, int] = {
    "ibm_perth": 7,
    "ibm_lagos": 7,
    "ibm_nairobi": 7,
    "ibm_algiers": 27,
    "ibm_cairo": 27,
    "ibm_hanoi": 27,
    "ibmq_kolkata": 27,
    "ibmq_mumbai": 27,
    "ibm_cusco": 127,
    "ibm_brisbane": 127,
    "ibm_nazca": 127,
    "ibm_sherbrooke": 127,
}
SHAPES = ("sampling", "deep", "vqe", "wide", "classical")


@dataclass(frozen=True)
class Scenario:
    """What to replay. ``mix``: relative weights of the workflow shapes."""

    name: str = "week"
    hours: float = 24.0 * 6.4
    workflows: int = 1000
    seed: int = 7
    mix: Mapping[str, float] = field(
        default_factory=lambda: {
            "sampling": 0.35,
            "deep": 0.15,
            "vqe": 0.2,
            "wide": 0.15,
            "classical": 0.15,
        }
    )
    presets: Mapping[str, float] = field(
        default_factory=lambda: {"balanced": 0.6, "speed": 0.2, "accuracy": 0.2}
    )
    data_dir: Path | None = None  # None: ../shared/data beside the repository
    backends: tuple[str, ...] = ()  # () every backend of the trace
    cpu_cores: float = 64.0
    cpu_memory_gib: float = 256.0
    gpus: float = 8.0
    gpu_cores: float = 64.0
    gpu_memory_gib: float = 512.0
    gpu_time_scale: float = 0.05
    gpu_background_peak: float = 0.9
    # Stationary: the queues are frozen at their values at t = 0, calibrations at day 0.
    stationary: bool = False
    # The replay starts this many hours into the queue trace.
    offset_hours: float = 0.0
    # Nodes lost: (pool, at hour, for hours, share of the pool's nodes), e.g. a GPU node
    # failing; the pods running there fail and are retried (``plan``).
    node_loss: tuple[tuple[str, float, float, float], ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Scenario:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown scenario field(s): {', '.join(unknown)}")
        values = dict(raw)
        if "data_dir" in values and values["data_dir"] is not None:
            values["data_dir"] = Path(values["data_dir"])
        if "backends" in values:
            values["backends"] = tuple(values["backends"])
        if "node_loss" in values:
            values["node_loss"] = tuple(_node_loss(item) for item in values["node_loss"] or ())
        scenario = cls(**values)
        scenario.check()
        return scenario

    def check(self) -> None:
        if not (self.hours > 0 and self.workflows >= 0):
            raise ValueError("hours must be > 0 and workflows >= 0")
        unknown = sorted(set(self.mix) - set(SHAPES))
        if unknown:
            raise ValueError(f"unknown workflow shape(s) in mix: {', '.join(unknown)}")
        if not self.mix or sum(self.mix.values()) <= 0:
            raise ValueError("mix needs a positive weight")
        for pool, at, hours, share in self.node_loss:
            if pool not in ("cpu", "gpu"):
                raise ValueError(f"node_loss: unknown pool {pool!r} (cpu or gpu)")
            if not (at >= 0 and hours > 0 and 0 < share <= 1):
                raise ValueError("node_loss: at_hours >= 0, hours > 0, 0 < share <= 1")
        presets = {p.value for p in ObjectivePreset}
        bad = sorted(set(self.presets) - presets)
        if bad:
            raise ValueError(f"unknown preset(s): {', '.join(bad)}")


def _node_loss(item: Any) -> tuple[str, float, float, float]:
    if not isinstance(item, Mapping) or set(item) != {"pool", "at_hours", "hours", "share"}:
        raise ValueError("node_loss: each item is {pool, at_hours, hours, share}")
    return (str(item["pool"]), float(item["at_hours"]), float(item["hours"]), float(item["share"]))


# ---- the world -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traces:
    queues: QueueReplay
    service: ServiceTimes
    calibrations: CalibrationDays
    gpu: GpuBackground


@lru_cache(maxsize=4)
def load_traces(data_dir: Path | None, gpu_time_scale: float) -> Traces:
    """Every trace the world needs, read once (a bad file raises naming it)."""

    def under(*parts: str) -> Path | None:
        return None if data_dir is None else data_dir.joinpath(*parts)

    return Traces(
        QueueReplay.load(under("ibm-queue-length", "pending_jobs.csv.gz")),
        ServiceTimes.fit(under("ibm-queue-jobs", "jobs.csv")),
        CalibrationDays.load(under("ibm-calibrations", "ibm_perth")),
        GpuBackground.load(
            under("gpu-cluster", "openb_pod_list_default.csv"),
            under("gpu-cluster", "openb_node_list_gpu_node.csv"),
            time_scale=gpu_time_scale,
        ),
    )


def drain_seconds(queues: QueueReplay, backend: str) -> float:
    """Mean seconds per job the backend's queue drained at over the trace: its span over
    the jobs that left it (the sum of the queue's decreases; arrivals in the same minute
    hide some departures, so this is an upper bound on the true mean service time)."""
    changes = queues.changes(backend)
    served = sum(max(a[1] - b[1], 0) for a, b in itertools.pairwise(changes))
    span = changes[-1][0] - changes[0][0] if len(changes) > 1 else 0.0
    return span / served if served > 0 and span > 0 else ServiceTimes.fit().mean


@dataclass(frozen=True)
class World:
    backends: list[TwinBackend]
    pools: list[TwinPool]


def build_world(scenario: Scenario, traces: Traces) -> World:
    names = scenario.backends or traces.queues.backends
    offset = scenario.offset_hours * 3600.0
    backends = []
    for i, name in enumerate(names):
        if name not in traces.queues.backends:
            raise ValueError(f"backend {name!r} is not in the queue trace")
        mean = drain_seconds(traces.queues, name)
        service = scaled(traces.service.for_backend(name), mean)
        backends.append(
            _backend(name, i, len(names), service, mean, traces, scenario.stationary, offset)
        )

    def lost(pool: str) -> tuple[tuple[float, float, float], ...]:
        return tuple(
            (at * 3600.0, (at + hours) * 3600.0, share)
            for name, at, hours, share in scenario.node_loss
            if name == pool
        )

    cpu = SimPool("cpu", scenario.cpu_cores, scenario.cpu_memory_gib * GIB, outages=lost("cpu"))
    peak = traces.gpu.peak_fraction or 1.0
    share = scenario.gpu_background_peak / peak
    gpus = scenario.gpus

    def background(t: float) -> float:
        return min(traces.gpu.busy_fraction(t) * share, 1.0) * gpus

    gpu = SimPool(
        "gpu",
        scenario.gpu_cores,
        scenario.gpu_memory_gib * GIB,
        gpus,
        background_gpus=background,
        outages=lost("gpu"),
    )
    return World(
        backends,
        [TwinPool(cpu, {"qorch.io/pool": "cpu"}), TwinPool(gpu, {"qorch.io/pool": "gpu"}, True)],
    )


@dataclass(frozen=True)
class Departures:
    """The jobs a backend's queue lost over the trace, cumulated: where its length fell,
    by how much (minute samples net arrivals against departures, so this counts fewer
    departures than there were: a bound that holds, never an invented drain)."""

    times: tuple[float, ...]
    gone: tuple[int, ...]  # jobs gone by times[i]

    @classmethod
    def of(cls, queues: QueueReplay, backend: str) -> Departures:
        times, gone, total, last = [], [], 0, None
        for t, pending, _ in queues.changes(backend):
            if last is not None and pending < last:
                total += last - pending
                times.append(t)
                gone.append(total)
            last = pending
        return cls(tuple(times), tuple(gone))

    def seconds_until(self, t: float, jobs: int) -> float:
        """Seconds from trace time ``t`` until ``jobs`` more have left (inf: not within
        the trace)."""
        if jobs <= 0:
            return 0.0
        i = bisect.bisect_right(self.times, t)
        before = self.gone[i - 1] if i > 0 else 0
        j = bisect.bisect_left(self.gone, before + jobs, lo=i)
        return self.times[j] - t if j < len(self.times) else math.inf


def scaled(service: ServiceTimes, mean: float) -> ServiceTimes:
    """The same measured shape, scaled to ``mean``."""
    factor = mean / service.mean
    return ServiceTimes(tuple(s * factor for s in service.samples), backend=service.backend)


def _backend(
    name: str,
    index: int,
    count: int,
    service: ServiceTimes,
    mean: float,
    traces: Traces,
    stationary: bool,
    offset: float,
) -> TwinBackend:
    queues = traces.queues
    days = traces.calibrations
    start_day = (index * days.days) // max(count, 1)

    def length(t: float) -> int:
        return queues.queue_length(name, offset + (0.0 if stationary else t))

    departures = Departures.of(queues, name)
    down = [] if stationary else queues.down_intervals(name)

    def with_downtime(t: float, wait: float) -> float:
        """A wait stretched by the time the device was down within it (it served none)."""
        at = offset + t
        end = at + wait
        for begin, finish in down:
            if finish <= at:
                continue
            if begin >= end:
                break
            end += finish - max(begin, at)
        return end - at

    def wait(t: float) -> float:
        # Seeded by the instant: the same question gets the same answer.
        rng = random.Random(f"{name}:{round(t, 3)}")
        ahead = length(t)
        sampled = service.wait(ahead, rng)
        if stationary:
            return sampled
        # First come first served: once the trace shows as many jobs gone as were ahead,
        # the job is at the front, whatever the run-time draws said.
        return min(with_downtime(t, sampled), departures.seconds_until(offset + t, ahead))

    def calibration(t: float) -> Any:
        return days.summary_at(0.0 if stationary else t, start_day)

    def healthy(t: float) -> bool:
        at = offset + (0.0 if stationary else t)
        return queues.operational(name, at) and queues.status(name, at) == "active"

    info = BackendInfo(
        name=name.replace("_", "-"),
        provider=Provider.IBM,
        num_qubits=IBM_QUBITS.get(name, 27),
        price_per_qpu_second=IBM_PAY_AS_YOU_GO_USD_PER_QPU_SECOND,
        backend_name=name,
    )
    sim = SimBackend(info.name, info.num_qubits, others_wait=wait, others_length=length)
    return TwinBackend(info, sim, calibration, healthy, average_job_seconds=mean)


# ---- the workflows -------------------------------------------------------------------------------


def _layered(rng: random.Random, qubits: int, layers: int, measure: bool = True) -> str:
    """OpenQASM 2: ``layers`` of single-qubit rotations and a CX chain."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];"]
    if measure:
        lines.append(f"creg c[{qubits}];")
    for _ in range(layers):
        for q in range(qubits):
            lines.append(f"rz({rng.uniform(0, 2 * math.pi):.4f}) q[{q}];")
            lines.append(f"sx q[{q}];")
        start = rng.randrange(2)
        for q in range(start, qubits - 1, 2):
            lines.append(f"cx q[{q}],q[{q + 1}];")
    if measure:
        lines.append("measure q -> c;")
    return "\n".join(lines) + "\n"


def _ansatz(qubits: int, layers: int) -> tuple[str, int]:
    """OpenQASM 3 hardware-efficient ansatz with ``input float[64]`` parameters."""
    params = [f"t{i}" for i in range(qubits * (layers + 1))]
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";']
    lines += [f"input float[64] {p};" for p in params]
    lines.append(f"qubit[{qubits}] q;")
    k = 0
    for layer in range(layers + 1):
        for q in range(qubits):
            lines.append(f"ry({params[k]}) q[{q}];")
            k += 1
        if layer < layers:
            lines += [f"cx q[{q}], q[{q + 1}];" for q in range(qubits - 1)]
    return "\n".join(lines) + "\n", len(params)


def _pool(name: str, max_qubits: int) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "name": name,
        "nodeSelector": {"qorch.io/pool": name},
        "maxQubits": max_qubits,
    }
    if name == "gpu":
        pool["gpu"] = True
        pool["tolerations"] = [Toleration(key="nvidia.com/gpu", operator="Exists").model_dump()]
    return pool


def _classical(seconds: float, gpu: int = 0) -> dict[str, Any]:
    return {
        "image": "python:3.12-slim",
        "command": ["python", "-c", f"import time; time.sleep({seconds:.0f})"],
        "resources": {"cpu": "1", "memory": "1Gi", "gpu": gpu},
    }


def make_workflows(scenario: Scenario, backends: list[TwinBackend]) -> list[TwinWorkflow]:
    """``scenario.workflows`` workflows arriving uniformly at random over the replay."""
    rng = random.Random(scenario.seed)
    horizon = scenario.hours * 3600.0
    # Leave the last sixth of the replay for the work that arrived to finish.
    arrivals = sorted(rng.uniform(0, horizon * 5 / 6) for _ in range(scenario.workflows))
    shapes = list(scenario.mix)
    weights = [scenario.mix[s] for s in shapes]
    presets = list(scenario.presets)
    preset_weights = [scenario.presets[p] for p in presets]
    names = [b.info.name for b in backends]
    out = []
    for i, arrival in enumerate(arrivals):
        shape = rng.choices(shapes, weights)[0]
        preset = rng.choices(presets, preset_weights)[0]
        out.append(_workflow(rng, f"{shape}-{i:04d}", shape, arrival, preset, names))
    return out


def _workflow(
    rng: random.Random, name: str, shape: str, arrival: float, preset: str, backends: list[str]
) -> TwinWorkflow:
    subtasks: list[dict[str, Any]] = []
    sources: dict[str, str] = {}
    seconds: dict[str, float] = {}
    # Hardware work: the pool runs the classical steps and the optimizer only (a pool that
    # simulates nothing wider than one qubit): the circuits must run on a device.
    pools = [_pool("cpu", 1)]
    quantum = list(backends)
    if shape == "sampling":
        qubits = rng.choice((3, 4, 5, 6, 7, 12, 16, 20))
        count = rng.randint(2, 5)
        for k in range(count):
            sources[f"c{k}"] = _layered(rng, qubits, rng.randint(2, 6))
            subtasks.append({"name": f"c{k}", "circuit": {"shots": rng.choice((1000, 4000))}})
        seconds["post"] = rng.uniform(5, 60)
        subtasks.append(
            {"name": "post", "dependsOn": [f"c{k}" for k in range(count)], "classical": {}}
        )
    elif shape == "deep":
        qubits = rng.choice((5, 6, 7))
        sources["deep"] = _layered(rng, qubits, rng.randint(15, 40))
        subtasks.append({"name": "deep", "circuit": {"shots": 8000}})
    elif shape == "vqe":
        qubits = rng.choice((2, 3, 4, 5, 6))
        ansatz, _ = _ansatz(qubits, rng.randint(1, 3))
        seconds["prep"] = rng.uniform(10, 120)
        seconds["report"] = rng.uniform(5, 30)
        terms = [
            {"pauli": "Z" * qubits, "coefficient": -1.0},
            {"pauli": "X" * qubits, "coefficient": 0.5},
        ]
        sources["vqe"] = ansatz
        subtasks += [
            {"name": "prep", "classical": {}},
            {
                "name": "vqe",
                "dependsOn": ["prep"],
                "variational": {
                    "qasm": ansatz,
                    "hamiltonian": terms,
                    "maxIterations": rng.randint(3, 12),
                    "shots": 2000,
                },
            },
            {"name": "report", "dependsOn": ["vqe"], "classical": {}},
        ]
    elif shape == "wide":
        qubits = rng.randint(24, 30)
        sources["wide"] = _layered(rng, qubits, rng.randint(3, 8))
        seconds["prep"] = rng.uniform(5, 60)
        subtasks += [
            {"name": "prep", "classical": {}},
            {"name": "wide", "dependsOn": ["prep"], "circuit": {"shots": 1000}},
        ]
        pools = [_pool("cpu", 28), _pool("gpu", 32)]
        quantum = []
    else:  # classical
        wants_gpu = rng.random() < 0.4
        seconds["train"] = rng.uniform(60, 1800)
        seconds["eval"] = rng.uniform(10, 120)
        subtasks += [
            {"name": "train", "classical": {"gpu": 1 if wants_gpu else 0}},
            {"name": "eval", "dependsOn": ["train"], "classical": {}},
        ]
        pools = [_pool("cpu", 28), _pool("gpu", 32)]
        quantum = []
    for sub in subtasks:
        if "classical" in sub:
            sub["classical"] = _classical(seconds[sub["name"]], int(sub["classical"].get("gpu", 0)))
        elif "circuit" in sub:
            sub["circuit"]["qasm"] = sources[sub["name"]]
    spec = HybridWorkflowSpec.model_validate(
        {
            "subtasks": subtasks,
            "resources": {"quantumBackends": quantum, "classicalPools": pools},
            "objective": {"preset": preset},
        }
    )
    return TwinWorkflow(name, shape, arrival, spec, sources, seconds)


def horizon_seconds(scenario: Scenario) -> float:
    return scenario.hours * 3600.0


__all__ = [
    "DAY_S",
    "SHAPES",
    "Scenario",
    "Traces",
    "World",
    "build_world",
    "drain_seconds",
    "horizon_seconds",
    "load_traces",
    "make_workflows",
]
