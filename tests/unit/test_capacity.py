"""Free capacity per pool from nodes and bound pods, as the cluster pass reads it."""

from __future__ import annotations

import json

import pytest

from devenv.nodes import NodeSpec, node_manifest
from qorch.api.workflow import ClassicalPool, Toleration, default_pools
from qorch.operator.nodes import node_info, pod_usage
from qorch.orchestrator.capacity import NodeInfo, PodUsage, Taint, pool_capacity
from qorch.orchestrator.cluster import PoolCapacity, capacity_key

GIB = float(1 << 30)
CPU, GPU = default_pools()


def free_of(pool: ClassicalPool, nodes: list[NodeInfo], pods: list[PodUsage]) -> PoolCapacity:
    return pool_capacity([pool], nodes, pods)[capacity_key(pool)]


def node(spec: NodeSpec, **status: object) -> NodeInfo:
    body = json.loads(node_manifest(spec))
    body["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    body["status"].update(status)
    return node_info(body)


def pod(node_name: str | None, *containers: dict[str, str], phase: str = "Running",
        init: tuple[dict[str, str], ...] = ()) -> PodUsage | None:  # fmt: skip
    return pod_usage(
        {
            "spec": {
                "nodeName": node_name,
                "containers": [{"resources": {"requests": c}} for c in containers],
                "initContainers": [{"resources": {"requests": c}} for c in init],
            },
            "status": {"phase": phase},
        }
    )


def test_a_pool_holds_its_nodes_allocatable_minus_what_bound_pods_request() -> None:
    nodes = [
        node(NodeSpec("c0", "cpu", cpu="8", memory="32Gi")),
        node(NodeSpec("c1", "cpu", cpu="8", memory="32Gi")),
        node(NodeSpec("g0", "gpu", cpu="16", memory="64Gi", gpus=4)),
    ]
    pods = [
        pod("c0", {"cpu": "1500m", "memory": "4Gi"}, {"cpu": "500m", "memory": "1Gi"}),
        pod("g0", {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "3"}),
        pod("c1", {"cpu": "4"}, phase="Succeeded"),  # finished: holds nothing
        pod(None, {"cpu": "4"}),  # not bound yet: the pass counts it itself
    ]
    free = pool_capacity([CPU, GPU], nodes, [p for p in pods if p is not None])
    assert free[capacity_key(CPU)] == PoolCapacity(cpu_cores=14.0, memory_bytes=59 * GIB, gpus=0.0)
    assert free[capacity_key(GPU)] == PoolCapacity(cpu_cores=14.0, memory_bytes=56 * GIB, gpus=1.0)
    assert pod("c1", {"cpu": "4"}, phase="Failed") is None


def test_an_init_container_larger_than_the_containers_sets_the_request() -> None:
    usage = pod("n", {"cpu": "1", "memory": "1Gi"}, init=({"cpu": "3"}, {"memory": "2Gi"}))
    assert usage == PodUsage("n", cpu_cores=3.0, memory_bytes=2 * GIB)


@pytest.mark.parametrize(
    ("change", "counted"),
    [
        ({}, True),
        ({"conditions": [{"type": "Ready", "status": "False"}]}, False),
    ],
)
def test_only_ready_nodes_count(change: dict[str, object], counted: bool) -> None:
    n = node(NodeSpec("c0", "cpu", cpu="8"), **change)
    assert (free_of(CPU, [n], []).cpu_cores == 8.0) is counted


def test_cordoned_untolerated_and_mislabelled_nodes_are_not_members() -> None:
    base = NodeInfo("n", {"qorch.io/pool": "gpu"}, 8, 8 * GIB, gpus=2,
                    taints=(Taint("nvidia.com/gpu", "present"),))  # fmt: skip
    assert free_of(GPU, [base], []).gpus == 2.0  # tolerated (Exists)
    strict = ClassicalPool(name="gpu", nodeSelector={"qorch.io/pool": "gpu"}, gpu=True)
    assert free_of(strict, [base], []).gpus == 0.0  # untolerated taint
    equal = strict.model_copy(
        update={"tolerations": [Toleration(key="nvidia.com/gpu", operator="Equal",
                                           value="present", effect="NoSchedule")]}
    )  # fmt: skip
    assert free_of(equal, [base], []).gpus == 2.0
    cordoned = NodeInfo("n", base.labels, 8, 8 * GIB, gpus=2, schedulable=False)
    assert free_of(GPU, [cordoned], []).gpus == 0.0
    other = NodeInfo("n", {"qorch.io/pool": "cpu"}, 8, 8 * GIB)
    assert free_of(GPU, [other], []) == PoolCapacity(0.0, 0.0, 0.0)
    # A taint that only prefers: no bar.
    soft = NodeInfo("n", {"qorch.io/pool": "cpu"}, 8, 8 * GIB,
                    taints=(Taint("spot", "true", "PreferNoSchedule"),))  # fmt: skip
    assert free_of(CPU, [soft], []).cpu_cores == 8.0


def test_overcommitted_nodes_count_as_full_not_negative() -> None:
    n = NodeInfo("n", {"qorch.io/pool": "cpu"}, 2, 2 * GIB)
    over = [PodUsage("n", 3.0, 4 * GIB), PodUsage("n", 1.0, GIB)]
    assert free_of(CPU, [n], over) == PoolCapacity(0.0, 0.0, 0.0)


def test_two_workflows_pools_of_one_name_on_other_nodes_are_counted_apart() -> None:
    team_a = ClassicalPool(name="gpu", nodeSelector={"team": "a"}, gpu=True)
    team_b = ClassicalPool(name="gpu", nodeSelector={"team": "b"}, gpu=True)
    nodes = [NodeInfo("a0", {"team": "a"}, 8, 8 * GIB, gpus=4),
             NodeInfo("b0", {"team": "b"}, 8, 8 * GIB, gpus=2)]  # fmt: skip
    free = pool_capacity([team_a, team_b, team_a], nodes, [PodUsage("a0", 1.0, GIB, 4.0)])
    assert free[capacity_key(team_a)].gpus == 0.0  # team a's GPUs are all taken ...
    assert free[capacity_key(team_b)].gpus == 2.0  # ... which says nothing of team b's
    assert len(free) == 2
    # Another name for team a's nodes is the same capacity (one key): never counted twice.
    alias = team_a.model_copy(update={"name": "a100"})
    assert capacity_key(alias) == capacity_key(team_a)
