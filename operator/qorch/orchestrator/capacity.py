"""Free capacity per classical pool, from the nodes and the pods bound to them (pure).

A node belongs to a pool when it carries every label of the pool's ``nodeSelector``,
is Ready and schedulable, and every NoSchedule / NoExecute taint it has is tolerated by
the pool. A pool's free capacity is the sum over its nodes of allocatable minus the
requests of the non-terminal pods bound there: what the kube-scheduler would still admit.
Summing over nodes ignores fragmentation (two half-free nodes do not hold one pod that
needs a whole one), so the pass may release a pod the scheduler then keeps Pending a
while; it never holds back one that would fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from qorch.api.workflow import ClassicalPool, Toleration
from qorch.orchestrator.cluster import PoolCapacity, capacity_key


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    cpu_cores: float
    memory_bytes: float
    gpus: float = 0.0
    ready: bool = True
    schedulable: bool = True
    taints: tuple[Taint, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class PodUsage:
    """The requests of one non-terminal pod bound to ``node``."""

    node: str
    cpu_cores: float
    memory_bytes: float
    gpus: float = 0.0


def _tolerated(taint: Taint, tolerations: Iterable[Toleration]) -> bool:
    for tol in tolerations:
        if tol.effect is not None and tol.effect != taint.effect:
            continue
        if tol.operator == "Exists" and (tol.key is None or tol.key == taint.key):
            return True
        if tol.key == taint.key and (tol.value or "") == taint.value:
            return True
    return False


def member(pool: ClassicalPool, node: NodeInfo) -> bool:
    if not (node.ready and node.schedulable):
        return False
    if any(node.labels.get(k) != v for k, v in pool.nodeSelector.items()):
        return False
    blocking = (t for t in node.taints if t.effect in ("NoSchedule", "NoExecute"))
    return all(_tolerated(t, pool.tolerations) for t in blocking)


def pool_capacity(
    pools: Iterable[ClassicalPool], nodes: Iterable[NodeInfo], pods: Iterable[PodUsage]
) -> dict[str, PoolCapacity]:
    """Free capacity of each pool, by ``capacity_key`` (its name and what selects its
    nodes: two workflows' pools of one name may be different node sets)."""
    node_list = list(nodes)
    used: dict[str, list[float]] = {}
    for pod in pods:
        u = used.setdefault(pod.node, [0.0, 0.0, 0.0])
        u[0] += pod.cpu_cores
        u[1] += pod.memory_bytes
        u[2] += pod.gpus
    free: dict[str, tuple[float, float, float]] = {}
    for node in node_list:
        u = used.get(node.name, [0.0, 0.0, 0.0])
        free[node.name] = (
            max(node.cpu_cores - u[0], 0.0),
            max(node.memory_bytes - u[1], 0.0),
            max(node.gpus - u[2], 0.0),
        )
    out: dict[str, PoolCapacity] = {}
    for pool in pools:
        key = capacity_key(pool)
        if key in out:
            continue
        members = [n for n in node_list if member(pool, n)]
        out[key] = PoolCapacity(
            cpu_cores=sum(free[n.name][0] for n in members),
            memory_bytes=sum(free[n.name][1] for n in members),
            gpus=sum(free[n.name][2] for n in members),
        )
    return out
