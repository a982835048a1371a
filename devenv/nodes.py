"""The fake node pools KWOK manages in tests: labels and taints as real pools carry them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    pool: str
    cpu: str = "16"
    memory: str = "64Gi"
    gpus: int = 0
    extra_labels: dict[str, str] = field(default_factory=dict)
    extra_taints: tuple[dict[str, str], ...] = ()


def node_manifest(spec: NodeSpec) -> str:
    capacity = {"cpu": spec.cpu, "memory": spec.memory, "pods": "110"}
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "qorch.io/pool": spec.pool,
        **spec.extra_labels,
    }
    # No kwok.x-k8s.io/node taint: this cluster has only fake nodes, so nothing real
    # must be kept off them, and manifests stay as users would write them.
    taints = [*spec.extra_taints]
    if spec.gpus:
        capacity["nvidia.com/gpu"] = str(spec.gpus)
        labels.update(
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": str(spec.gpus),
            }
        )
        taints.append(GPU_TAINT)
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": labels,
        },
        "spec": {"taints": taints},
        "status": {"allocatable": capacity, "capacity": capacity},
    }
    return json.dumps(node)


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("kwok-cpu-0", "cpu"),
    NodeSpec("kwok-cpu-1", "cpu"),
    NodeSpec("kwok-gpu-0", "gpu", gpus=8),
    NodeSpec("kwok-gpu-1", "gpu", gpus=8),
    NodeSpec("kwok-qgw-0", "quantum-gateway", cpu="8", memory="32Gi"),
)
