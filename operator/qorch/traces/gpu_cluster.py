"""Alibaba's production GPU cluster trace ("openb", cluster-trace-gpu-v2023, USENIX ATC'23):
Kubernetes pods with their requests and lifetimes, and the GPU nodes they ran on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from qorch.traces._io import PathLike, read_csv, resolve

PODS_FILE: Final = "gpu-cluster/openb_pod_list_default.csv"
NODES_FILE: Final = "gpu-cluster/openb_node_list_gpu_node.csv"


@dataclass(frozen=True, slots=True)
class GpuPod:
    """A pod of the trace. Times are seconds from the trace's start; ``scheduled_time`` is
    ``None`` for pods that were never scheduled (Pending), ``gpu_milli`` is the fraction of
    one GPU in thousandths (for shared GPUs), ``gpu_spec`` is empty when any model will do."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: str
    qos: str
    pod_phase: str
    creation_time: int
    deletion_time: int | None
    scheduled_time: int | None


def read_gpu_pods(path: PathLike | None = None) -> tuple[GpuPod, ...]:
    """``gpu-cluster/openb_pod_list_default.csv``, in file order."""
    file = resolve(path, PODS_FILE)
    columns = (
        "name",
        "cpu_milli",
        "memory_mib",
        "num_gpu",
        "gpu_milli",
        "gpu_spec",
        "qos",
        "pod_phase",
        "creation_time",
        "deletion_time",
        "scheduled_time",
    )
    return tuple(
        GpuPod(
            name=r.text("name"),
            cpu_milli=r.integer("cpu_milli", minimum=0),
            memory_mib=r.integer("memory_mib", minimum=0),
            num_gpu=r.integer("num_gpu", minimum=0),
            gpu_milli=r.integer("gpu_milli", minimum=0),
            gpu_spec=r.text("gpu_spec", allow_empty=True),
            qos=r.text("qos"),
            pod_phase=r.text("pod_phase"),
            creation_time=r.integer("creation_time", minimum=0),
            deletion_time=r.optional_integer("deletion_time", minimum=0),
            scheduled_time=r.optional_integer("scheduled_time", minimum=0),
        )
        for r in read_csv(file, columns)
    )


@dataclass(frozen=True, slots=True)
class GpuNode:
    """A GPU node of the trace: its serial name, capacity and GPU model."""

    sn: str
    cpu_milli: int
    memory_mib: int
    gpu: int
    model: str


def read_gpu_nodes(path: PathLike | None = None) -> tuple[GpuNode, ...]:
    """``gpu-cluster/openb_node_list_gpu_node.csv``, in file order."""
    file = resolve(path, NODES_FILE)
    columns = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
    return tuple(
        GpuNode(
            sn=r.text("sn"),
            cpu_milli=r.integer("cpu_milli", minimum=0),
            memory_mib=r.integer("memory_mib", minimum=0),
            gpu=r.integer("gpu", minimum=0),
            model=r.text("model"),
        )
        for r in read_csv(file, columns)
    )
