"""Free capacity per pool from nodes and bound pods, as the cluster pass reads it."""

from __future__ import annotations

import json

import pytest

from qorch.api.workflow import ClassicalPool, Toleration, default_pools
from qorch.operator.nodes import node_info, pod_usage
from qorch.orchestrator.capacity import NodeInfo, PodUsage, Taint, pool_capacity
from qorch.orchestrator.cluster import PoolCapacity
from tests.harness.nodes import NodeSpec, node_manifest

GIB = float(1 << 30)
CPU, GPU = default_pools()


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
    assert free["cpu"] == PoolCapacity(cpu_cores=14.0, memory_bytes=59 * GIB, gpus=0.0)
    assert free["gpu"] == PoolCapacity(cpu_cores=14.0, memory_bytes=56 * GIB, gpus=1.0)
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
    assert (pool_capacity([CPU], [n], [])["cpu"].cpu_cores == 8.0) is counted


def test_cordoned_untolerated_and_mislabelled_nodes_are_not_members() -> None:
    base = NodeInfo("n", {"qorch.io/pool": "gpu"}, 8, 8 * GIB, gpus=2,
                    taints=(Taint("nvidia.com/gpu", "present"),))  # fmt: skip
    assert pool_capacity([GPU], [base], [])["gpu"].gpus == 2.0  # tolerated (Exists)
    strict = ClassicalPool(name="gpu", nodeSelector={"qorch.io/pool": "gpu"}, gpu=True)
    assert pool_capacity([strict], [base], [])["gpu"].gpus == 0.0  # untolerated taint
    equal = strict.model_copy(
        update={"tolerations": [Toleration(key="nvidia.com/gpu", operator="Equal",
                                           value="present", effect="NoSchedule")]}
    )  # fmt: skip
    assert pool_capacity([equal], [base], [])["gpu"].gpus == 2.0
    cordoned = NodeInfo("n", base.labels, 8, 8 * GIB, gpus=2, schedulable=False)
    assert pool_capacity([GPU], [cordoned], [])["gpu"].gpus == 0.0
    other = NodeInfo("n", {"qorch.io/pool": "cpu"}, 8, 8 * GIB)
    assert pool_capacity([GPU], [other], [])["gpu"] == PoolCapacity(0.0, 0.0, 0.0)
    # A taint that only prefers: no bar.
    soft = NodeInfo("n", {"qorch.io/pool": "cpu"}, 8, 8 * GIB,
                    taints=(Taint("spot", "true", "PreferNoSchedule"),))  # fmt: skip
    assert pool_capacity([CPU], [soft], [])["cpu"].cpu_cores == 8.0


def test_overcommitted_nodes_count_as_full_not_negative() -> None:
    n = NodeInfo("n", {"qorch.io/pool": "cpu"}, 2, 2 * GIB)
    over = [PodUsage("n", 3.0, 4 * GIB), PodUsage("n", 1.0, GIB)]
    assert pool_capacity([CPU], [n], over)["cpu"] == PoolCapacity(0.0, 0.0, 0.0)
