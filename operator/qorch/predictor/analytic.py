"""The analytic model: what the predictor answers for an output whose model is missing,
rejected or failing. Vectorised over a pass's pairs; every constant says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qorch.orchestrator.simulation import (
    MPS_STATE_BYTES,
    STATEVECTOR_MAX_QUBITS,
    statevector_bytes,
)

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class AnalyticConfig:
    """The analytic model's constants.

    QPU run time ``a + b * shots * circuits``: fitted (least median relative error) on all
    5,896 rows of ``ibm-job-runtime/runtime.csv`` (Qonductor artifact, real IBM jobs):
    a = 2.6 s, b = 3.2e-4 s; median relative error 13.5% on those rows (in-sample; the
    toolchain notes measure 25.8% on a group split).

    Queue wait: ``queue_length x service_seconds_per_job`` is the median; P10 and P90 are
    multiples of it. 66 s is the median run time of DONE jobs in ``ibm-queue-jobs/jobs.csv``
    (Ravi et al., IISWC 2021), taken as the time each job ahead holds the device. The
    multiples are assumptions: the unconditional per-backend spread in the same file is far
    wider (P10/P50 ~ 0.01, P90/P50 ~ 30, median over 9 backends), and conditioning on the
    live queue length narrows it by an amount no data here measures.

    Simulation time ``overhead + k * gates * 2^n / cores`` for a statevector: k = 2.6e-9 s
    per gate per amplitude on one core, measured here with Aer 0.18 (``AerSimulator(method=
    "statevector", max_parallel_threads=1)``, layered rx/rz + cx circuits of 14-23 qubits,
    140-910 gates, 1,024 shots; k between 1.8e-9 and 3.9e-9 from 18 qubits up, on a shared
    2-core machine). The overhead 0.02 s is the 14-qubit time. Cores scale ideally (Aer
    parallelises the state update): an optimistic bound. GPU: NOT measured here (no GPU on
    this machine); assumed 50x one core, to be replaced by the GPU measurement.
    Matrix product states: ``k_mps * gates * n`` with k_mps = 5e-5 s, from the same Aer runs
    at 10-30 qubits and 4 layers (0.11-0.27 s); it holds for LOW entanglement only (a
    20-qubit, 16-layer circuit took 35 s: the bond dimension decides, which no count shows).
    """

    qpu_overhead_seconds: float = 2.6
    qpu_seconds_per_shot: float = 3.2e-4
    service_seconds_per_job: float = 66.0
    queue_multiples: tuple[float, float, float] = (0.1, 1.0, 5.0)
    statevector_seconds_per_gate_amplitude: float = 2.6e-9
    simulation_overhead_seconds: float = 0.02
    gpu_speedup: float = 50.0
    mps_seconds_per_gate_qubit: float = 5e-5


def qpu_run_seconds(config: AnalyticConfig, shots: FloatArray, circuits: FloatArray) -> FloatArray:
    """QPU execution time of a job: ``a + b * shots * circuits``."""
    return config.qpu_overhead_seconds + config.qpu_seconds_per_shot * shots * circuits


def queue_wait_seconds(
    config: AnalyticConfig, queue_length: FloatArray, service_seconds: FloatArray | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """P10, P50, P90 of the wait: the live queue length times the service time per job
    (each row's backend's where known, else ``service_seconds_per_job``), times each
    multiple (no queue reading: an empty queue is assumed)."""
    per_job = config.service_seconds_per_job if service_seconds is None else service_seconds
    base = np.nan_to_num(queue_length, nan=0.0).clip(min=0.0) * per_job
    lo, mid, hi = sorted(config.queue_multiples)
    return base * lo, base * mid, base * hi


def simulation_seconds(
    config: AnalyticConfig,
    num_qubits: FloatArray,
    gates: FloatArray,
    method_mps: FloatArray,
    device_gpu: FloatArray,
    cpu_cores: FloatArray,
) -> FloatArray:
    """Aer wall time of one circuit on a pool (shots do not count: Aer samples the final
    state once per circuit when measurements come last)."""
    n = np.clip(num_qubits, 0, 62)
    cores = np.where(np.isnan(cpu_cores) | (cpu_cores < 1.0), 1.0, cpu_cores)
    statevector = config.statevector_seconds_per_gate_amplitude * gates * np.exp2(n) / cores
    statevector = np.where(device_gpu > 0, statevector * cores / config.gpu_speedup, statevector)
    mps = config.mps_seconds_per_gate_qubit * gates * n
    return config.simulation_overhead_seconds + np.where(method_mps > 0, mps, statevector)


def simulation_memory_bytes(num_qubits: FloatArray) -> FloatArray:
    """Peak memory of the simulated state: 16 * 2^n bytes for a statevector
    (``orchestrator.simulation.statevector_bytes``, the one definition the pod sizing uses),
    the MPS bound beyond ``STATEVECTOR_MAX_QUBITS``. The worker's fixed overhead is not in
    it (``worker_memory_bytes`` adds that when sizing a pod)."""
    widths, inverse = np.unique(num_qubits.astype(np.int64), return_inverse=True)
    per_width = np.array(
        [
            float(statevector_bytes(int(w)) if w <= STATEVECTOR_MAX_QUBITS else MPS_STATE_BYTES)
            for w in widths
        ],
        dtype=np.float64,
    )
    return per_width[inverse.reshape(-1)] if len(widths) else np.zeros(0)
