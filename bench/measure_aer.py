"""Measure qiskit-aer simulations on THIS machine: time and peak memory of the worker's own
code path (``qorch.worker.main.simulate``, a sampler run of an OpenQASM 3 circuit) in a
fresh subprocess per run, across circuit families, widths, depths, shots and methods.

    .venv/bin/python bench/measure_aer.py [--quick] [--out models/measured/aer_cpu.csv]

Writes one CSV row per run (catalogue CIRCUIT_FEATURES + CLASSICAL_FEATURES, then what was
measured) under a header comment naming the machine. Per run:
- ``wall_seconds``: wall time of ``simulate`` (parse, transpile, run, sample), the worker's
  own ``seconds``;
- ``cpu_seconds``: CPU time of the child process over the same span (all threads);
- ``seconds``: the training target. Runs are single-threaded (``OMP_NUM_THREADS=1``,
  ``cpu_cores`` = 1), so CPU time is what the run takes on an idle core: on a shared
  machine wall time also counts waiting for the CPU (the load average is recorded);
- ``peak_memory_bytes``: the child's peak RSS (``ru_maxrss``): interpreter, qiskit and Aer
  loaded, plus the simulation, what a worker pod peaks at.
A run over ``--timeout`` seconds is recorded with status ``timeout`` and no figures.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from qorch.predictor.catalogue import CIRCUIT_FEATURES, CLASSICAL_FEATURES  # noqa: E402

MEASURED = (
    "seconds",
    "wall_seconds",
    "cpu_seconds",
    "peak_memory_bytes",
    "loadavg_1m",
    "status",
)
COLUMNS = ("family", "method", "name", *CIRCUIT_FEATURES, *CLASSICAL_FEATURES, *MEASURED)
WARM_UP = (
    'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; '
    "c = measure q;"
)
DEFAULT_OUT = REPO / "models" / "measured" / "aer_cpu.csv"


@dataclass(frozen=True)
class Run:
    family: str
    n: int
    size: int  # layers / depth / repetitions, by family
    method: str  # statevector | matrix_product_state
    shots: int

    @property
    def name(self) -> str:
        return f"{self.family}_{self.n}_{self.size}_{self.method[:3]}_{self.shots}"


# ---- circuit families (OpenQASM 3 standard gates only, measured at the end) -------------


def build(run: Run) -> Any:
    from qiskit import QuantumCircuit

    n, size = run.n, run.size
    rng = random.Random(zlib.crc32(f"{run.family}/{n}/{size}".encode()))
    qc = QuantumCircuit(n)
    if run.family == "ghz":
        qc.h(0)
        for i in range(n - 1):
            qc.cx(i, i + 1)
    elif run.family == "qft":  # a random basis state, then the QFT (`size` unused)
        for q in range(n):
            if rng.random() < 0.5:
                qc.x(q)
        for j in range(n):
            qc.h(j)
            for k in range(j + 1, n):
                qc.cp(math.pi / 2 ** (k - j), k, j)
    elif run.family == "brickwork":  # `size` layers of random U3 and CX bricks
        for layer in range(size):
            for q in range(n):
                qc.u(rng.uniform(0, math.pi), rng.uniform(0, 6.28), rng.uniform(0, 6.28), q)
            for q in range(layer % 2, n - 1, 2):
                qc.cx(q, q + 1)
    elif run.family == "hea":  # hardware-efficient ansatz, bound: RY/RZ, CX ladder
        for _ in range(size):
            for q in range(n):
                qc.ry(rng.uniform(0, math.pi), q)
                qc.rz(rng.uniform(0, 6.28), q)
            for q in range(n - 1):
                qc.cx(q, q + 1)
    elif run.family == "qaoa":  # MaxCut on a ring, `size` rounds, CX-RZ-CX for ZZ
        qc.h(range(n))
        for _ in range(size):
            gamma, beta = rng.uniform(0, 3.14), rng.uniform(0, 3.14)
            for q in range(n):
                a, b = q, (q + 1) % n
                qc.cx(a, b)
                qc.rz(gamma, b)
                qc.cx(a, b)
            for q in range(n):
                qc.rx(2 * beta, q)
    elif run.family == "random":  # qiskit's random circuit of depth `size`
        from qiskit.circuit.random import random_circuit

        qc = random_circuit(n, size, max_operands=2, seed=n * 1000 + size)
    else:
        raise ValueError(f"unknown family {run.family!r}")
    qc.measure_all()
    return qc


def plan(quick: bool) -> list[Run]:
    sv, mps = "statevector", "matrix_product_state"
    if quick:
        return [Run("qft", 5, 1, sv, 100), Run("ghz", 6, 1, mps, 100)]
    runs: list[Run] = []
    # Statevector: time and memory grow as 2^n, so widths are spread up to 26 (1 GiB state).
    for n in (4, 12, 16, 19, 21, 23, 25):
        runs.append(Run("ghz", n, 1, sv, 1000))
        runs.append(Run("qft", n, 1, sv, 1000))
        runs.append(Run("brickwork", n, 4 if n > 21 else 10, sv, 1000))
        runs.append(Run("hea", n, 2 if n > 21 else 5, sv, 1000))
        runs.append(Run("qaoa", n, 1 if n > 21 else 3, sv, 1000))
        runs.append(Run("random", n, 5 if n > 21 else 15, sv, 1000))
    for n in (20,):  # shots and depth at one width
        runs.append(Run("ghz", n, 1, sv, 10000))
        runs.append(Run("brickwork", n, 20, sv, 100))
        runs.append(Run("hea", n, 10, sv, 10000))
    runs.append(Run("ghz", 26, 1, sv, 1000))
    runs.append(Run("hea", 26, 1, sv, 1000))
    # Matrix product states: low-entanglement circuits, wide; cost follows the bond
    # dimension (depth) and the shots (sampled one by one).
    for n in (10, 20, 30, 40):
        runs.append(Run("ghz", n, 1, mps, 1000))
        runs.append(Run("hea", n, 1, mps, 1000))
        runs.append(Run("brickwork", n, 2, mps, 1000))
        runs.append(Run("qaoa", n, 1, mps, 1000))
    for n in (8, 12, 16):
        runs.append(Run("qft", n, 1, mps, 1000))
        runs.append(Run("random", n, 4, mps, 1000))
    for n in (20, 40):
        runs.append(Run("ghz", n, 1, mps, 10000))
        runs.append(Run("hea", n, 2, mps, 100))
        runs.append(Run("brickwork", n, 4, mps, 1000))
    return runs


# ---- one run, in a fresh process -----------------------------------------------------------


def child() -> int:
    """Read {qasm, method, shots} on stdin, run the worker's simulate, print the figures."""
    spec = json.loads(sys.stdin.read())
    from qorch.metrics.exporters import WorkerMetrics
    from qorch.worker.main import CircuitTask, simulate

    metrics = WorkerMetrics.create()
    # Warm up: simulate() imports the parser, the transpiler and Aer's primitives on first
    # use (over a second of CPU); a pod pays that once at start, not per circuit.
    simulate(CircuitTask(WARM_UP, "sampler", 10, (), spec["method"], "CPU"), metrics)
    task = CircuitTask(spec["qasm"], "sampler", int(spec["shots"]), (), spec["method"], "CPU")
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = simulate(task, metrics)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(
        json.dumps(
            {
                "wall_seconds": wall,
                "worker_seconds": result["seconds"],
                "cpu_seconds": cpu,
                "peak_memory_bytes": after.ru_maxrss * 1024,
                "method": result["method"],
            }
        )
    )
    return 0


def measure(run: Run, timeout: float) -> dict[str, Any]:
    from qiskit import qasm3

    from qorch.predictor.training.classical import circuit_features

    circuit = build(run)
    row: dict[str, Any] = {"family": run.family, "method": run.method, "name": run.name}
    row |= circuit_features(circuit, run.shots)
    row |= {"method_mps": float(run.method != "statevector"), "device_gpu": 0.0, "cpu_cores": 1.0}
    spec = json.dumps({"qasm": qasm3.dumps(circuit), "method": run.method, "shots": run.shots})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "operator"))
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child"],
            input=spec,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return row | {k: "" for k in MEASURED} | {"status": "timeout"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return row | {k: "" for k in MEASURED} | {"status": f"error: {tail[:200]}"}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return row | {
        "seconds": got["cpu_seconds"],
        "wall_seconds": got["wall_seconds"],
        "cpu_seconds": got["cpu_seconds"],
        "peak_memory_bytes": got["peak_memory_bytes"],
        "loadavg_1m": os.getloadavg()[0],
        "status": "ok",
    }


def machine_header() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory = f"{mem_kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "unknown"
    import qiskit
    import qiskit_aer

    return (
        f"# Aer on CPU, measured by bench/measure_aer.py (our own measurements).\n"
        f"# machine: nproc={os.cpu_count()} cpu={model!r} memory={memory} "
        f"python={platform.python_version()} qiskit={qiskit.__version__} "
        f"qiskit-aer={qiskit_aer.__version__}\n"
        f"# date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; each run in a fresh "
        f"process with OMP_NUM_THREADS=1; seconds = CPU seconds of simulate() (parse, "
        f"transpile, run, sample); peak_memory_bytes = the process's peak RSS.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two tiny runs (tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child()
    runs = plan(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with args.out.open("w", newline="", encoding="utf-8") as fh:
        fh.write(machine_header())
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for i, run in enumerate(runs, 1):
            row = measure(run, args.timeout)
            writer.writerow(row)
            fh.flush()
            print(
                f"[{i}/{len(runs)}] {run.name}: {row['status']} "
                f"s={row['seconds']!s:.8} peak={row['peak_memory_bytes']}",
                flush=True,
            )
        fh.write(f"# total measurement time: {time.perf_counter() - started:.0f} s\n")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
