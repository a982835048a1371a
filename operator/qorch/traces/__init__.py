"""Typed readers of the real traces (IBM queues, run times, calibrations, a GPU cluster).

Used by training (``qorch train``) and the digital twin; a bad or truncated file raises
``TraceError`` naming the file and line, never a silent skip. Every reader takes a path and
defaults to ``$QORCH_TRACES_DIR`` (else ``../shared/data`` beside the repository); the operator
never needs these files at run time."""

from qorch.traces._io import ENV_TRACES_DIR, PathLike, TraceError, default_traces_dir
from qorch.traces.calibrations import (
    CALIBRATIONS_DIR,
    Calibration,
    GateCalibration,
    QubitCalibration,
    read_calibration,
    read_calibrations,
)
from qorch.traces.gpu_cluster import (
    NODES_FILE,
    PODS_FILE,
    GpuNode,
    GpuPod,
    read_gpu_nodes,
    read_gpu_pods,
)
from qorch.traces.ibm import (
    QUEUE_JOBS_FILE,
    QUEUE_LENGTH_FILE,
    RUNTIME_FILE,
    QueueJob,
    QueueLengthSample,
    RuntimeJob,
    read_queue_jobs,
    read_queue_lengths,
    read_runtime_jobs,
)

__all__ = [
    "CALIBRATIONS_DIR",
    "ENV_TRACES_DIR",
    "NODES_FILE",
    "PODS_FILE",
    "QUEUE_JOBS_FILE",
    "QUEUE_LENGTH_FILE",
    "RUNTIME_FILE",
    "Calibration",
    "GateCalibration",
    "GpuNode",
    "GpuPod",
    "PathLike",
    "QubitCalibration",
    "QueueJob",
    "QueueLengthSample",
    "RuntimeJob",
    "TraceError",
    "default_traces_dir",
    "read_calibration",
    "read_calibrations",
    "read_gpu_nodes",
    "read_gpu_pods",
    "read_queue_jobs",
    "read_queue_lengths",
    "read_runtime_jobs",
]
