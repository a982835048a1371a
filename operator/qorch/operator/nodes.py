"""Nodes and bound pods as the cluster pass's capacity sees them (read from raw objects)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qorch.orchestrator.capacity import NodeInfo, PodUsage, Taint
from qorch.orchestrator.cluster import quantity

GPU_RESOURCE = "nvidia.com/gpu"


def node_info(body: Mapping[str, Any]) -> NodeInfo:
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    alloc = status.get("allocatable") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    taints = tuple(
        Taint(t.get("key", ""), t.get("value") or "", t.get("effect", "NoSchedule"))
        for t in spec.get("taints") or []
    )
    return NodeInfo(
        name=meta["name"],
        labels=dict(meta.get("labels") or {}),
        cpu_cores=quantity(str(alloc.get("cpu", "0"))),
        memory_bytes=quantity(str(alloc.get("memory", "0"))),
        gpus=quantity(str(alloc.get(GPU_RESOURCE, "0"))),
        ready=ready,
        schedulable=not spec.get("unschedulable", False),
        taints=taints,
    )


def pod_usage(body: Mapping[str, Any]) -> PodUsage | None:
    """What a pod bound to a node holds there (None: unbound or finished). Like the
    scheduler: the sum of its containers' requests, or its largest init container's."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    node = spec.get("nodeName")
    if not node or status.get("phase") in ("Succeeded", "Failed"):
        return None

    def total(containers: list[dict[str, Any]], pick: Any) -> list[float]:
        values = [
            [
                quantity(str(((c.get("resources") or {}).get("requests") or {}).get(k, "0")))
                for k in ("cpu", "memory", GPU_RESOURCE)
            ]
            for c in containers
        ]
        return [pick(v[i] for v in values) if values else 0.0 for i in range(3)]

    main = total(spec.get("containers") or [], sum)
    init = total(spec.get("initContainers") or [], max)
    cpu, memory, gpus = (max(a, b) for a, b in zip(main, init, strict=True))
    return PodUsage(node=node, cpu_cores=cpu, memory_bytes=memory, gpus=gpus)
