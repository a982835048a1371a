"""Where a subtask runs. ``PlacementPolicy`` is the seam the predictive policy plugs into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from qorch.api.workflow import ClassicalPool, Placement, ResourceKind, SubtaskSpec
from qorch.orchestrator.snapshot import WorkflowSnapshot


@dataclass(frozen=True)
class Infeasible:
    """Cannot place now: data, not an exception. ``permanent`` fails the subtask."""

    reason: str
    permanent: bool = False


class PlacementPolicy(Protocol):
    def place(self, subtask: SubtaskSpec, snapshot: WorkflowSnapshot) -> Placement | Infeasible: ...


def _pool_fits(pool: ClassicalPool, subtask: SubtaskSpec, qubits: int | None) -> bool:
    if subtask.classical is not None:
        return pool.gpu or subtask.classical.resources.gpu == 0
    if subtask.variational is not None and subtask.variational.wants_gpu and not pool.gpu:
        return False  # its optimizer pod requests GPUs
    return qubits is None or qubits <= pool.maxQubits


class DecidedPolicy:
    """The cluster pass's placements (``snapshot.placements``); a subtask it held back
    waits with its reason; one it did not decide (no pass yet) falls back to ``fallback``."""

    def __init__(self, fallback: PlacementPolicy) -> None:
        self.fallback = fallback

    def place(self, subtask: SubtaskSpec, snapshot: WorkflowSnapshot) -> Placement | Infeasible:
        chosen = snapshot.placements.get(subtask.name)
        if chosen is not None:
            return chosen
        held = snapshot.held.get(subtask.name)
        if held is not None:
            return Infeasible(held)
        return self.fallback.place(subtask, snapshot)


class RulePolicy:
    """Static rules, the baseline the predictive policy must beat.

    - classical steps: a GPU pool when they request GPUs, else the first CPU pool;
    - circuits: the healthy allowed quantum backend with enough qubits and the shortest
      queue; with none, simulate on the smallest classical pool that holds the circuit
      (CPU before GPU at equal size).
    """

    def place(self, subtask: SubtaskSpec, snapshot: WorkflowSnapshot) -> Placement | Infeasible:
        pools = snapshot.spec.resources.classicalPools
        if subtask.classical is not None:
            wants_gpu = subtask.classical.resources.gpu > 0
            # GPU steps need a GPU pool; CPU steps prefer CPU pools but may use GPU nodes.
            ordered = (
                [p for p in pools if p.gpu] if wants_gpu else sorted(pools, key=lambda p: p.gpu)
            )
            if ordered:
                return Placement(kind=ResourceKind.POOL, name=ordered[0].name)
            return Infeasible("no classical pool can run this step", permanent=True)

        info = snapshot.circuits.get(subtask.name)
        qubits = info.num_qubits if info else None
        backends = [
            snapshot.backends[b]
            for b in snapshot.spec.resources.quantumBackends
            if b in snapshot.backends
        ]
        fitting_backends = [b for b in backends if qubits is None or qubits <= b.num_qubits]
        healthy = [b for b in fitting_backends if b.healthy]
        if healthy:
            best = min(healthy, key=lambda b: (b.queue_length, b.name))
            return Placement(kind=ResourceKind.BACKEND, name=best.name)
        fitting_pools = sorted(
            (p for p in pools if _pool_fits(p, subtask, qubits)), key=lambda p: (p.maxQubits, p.gpu)
        )
        if fitting_pools:
            return Placement(kind=ResourceKind.POOL, name=fitting_pools[0].name)
        if fitting_backends:
            return Infeasible("every quantum backend that fits is unhealthy; waiting")
        return Infeasible(f"no allowed resource holds {qubits} qubits", permanent=True)
