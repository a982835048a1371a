"""Simulating a circuit on a classical pool: the method the worker picks, the memory that
takes, and how much the worker may report back.

One definition for both sides: the operator sizes the pod from it (``podspec``) and the
worker (``qorch worker``) spends what was sized, so a request and its use cannot drift.
Pure: no qiskit here; the worker applies it to the parsed circuit.
"""

from __future__ import annotations

import math
from typing import Final, Literal

Method = Literal["statevector", "matrix_product_state"]
STATEVECTOR: Final = "statevector"
MATRIX_PRODUCT_STATE: Final = "matrix_product_state"

# Largest circuit simulated as a full statevector; wider ones use matrix product states.
STATEVECTOR_MAX_QUBITS: Final = 28
AMPLITUDE_BYTES: Final = 16  # one complex128 amplitude

# Kubernetes caps a container's termination message, the worker's report, at 4096 bytes.
TERMINATION_MESSAGE_LIMIT_BYTES: Final = 4096

MIB: Final = 1 << 20
GIB: Final = 1 << 30

# Everything but the state: the interpreter, qiskit and Aer loaded, the parsed and
# transpiled circuit, the result. Measured with `qorch worker` on a 4-qubit GHZ (sampler
# and estimator): peak RSS (getrusage of the child process) 184 MiB; at 22, 24 and 25
# qubits the peak was 16*2^n + 184..189 MiB, so the state is the only part that grows.
# 512 MiB leaves room for large transpiled circuits and many distinct sampler outcomes.
WORKER_OVERHEAD_BYTES: Final = 512 * MIB

# An MPS needs memory by its bond dimension (entanglement), not by its width, so the
# qubit count cannot size it. Circuits MPS suits (low entanglement) stay far below this;
# the bound is the largest statevector pod, so a pool that runs a 28-qubit statevector
# also runs any MPS pod, and a circuit that needs more ends OOMKilled, visibly.
MPS_STATE_BYTES: Final = 4 * GIB


def statevector_bytes(num_qubits: int) -> int:
    """Memory of an ``num_qubits``-qubit statevector: 16 * 2^n bytes (2 GiB at 27)."""
    return AMPLITUDE_BYTES << max(num_qubits, 0)


def simulation_method(num_qubits: int) -> Method:
    """The method ``qorch worker`` uses for a circuit of this width."""
    return STATEVECTOR if num_qubits <= STATEVECTOR_MAX_QUBITS else MATRIX_PRODUCT_STATE


def runs_on_gpu(method: str) -> bool:
    """Aer simulates statevectors on a GPU; matrix product states only on the CPU."""
    return method == STATEVECTOR


def worker_memory_bytes(num_qubits: int | None) -> int:
    """What a worker pod needs for a circuit of ``num_qubits`` (None: not known, so the
    most either method may take)."""
    if num_qubits is None:
        state = max(statevector_bytes(STATEVECTOR_MAX_QUBITS), MPS_STATE_BYTES)
    elif simulation_method(num_qubits) == STATEVECTOR:
        state = statevector_bytes(num_qubits)
    else:
        state = MPS_STATE_BYTES
    return WORKER_OVERHEAD_BYTES + state


def memory_quantity(num_bytes: int) -> str:
    """A Kubernetes quantity in whole MiB, rounded up."""
    return f"{math.ceil(num_bytes / MIB)}Mi"
