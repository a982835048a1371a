"""The predictor's shared vocabulary: every feature a model may use, and how a model file
describes itself. Training (``qorch train``) and serving (the operator) both go by these
names, so a model trained on the traces is fed the same quantities at run time.

A model is one ONNX file per predicted output under ``models/``, with one float32 input of
shape [N, len(features)] (columns in the order of ``qorch.features``) and one output of
shape [N] or [N, 1]. Its ``metadata_props`` say what it is (keys below).
"""

from __future__ import annotations

from typing import Final

# ---- features (per (subtask, resource) pair) -------------------------------------------
# Circuit: job-level sums where a job batches several circuits (the IBM runtime trace is
# summed the same way). One subtask is one circuit today: circuits = 1.
CIRCUIT_FEATURES: Final = (
    "num_qubits",  # width of the (widest) circuit
    "depth",  # depth of the (deepest) circuit, logical (before transpiling)
    "depth_sum",  # depth summed over the job's circuits
    "qubits_sum",  # width summed over the job's circuits
    "two_qubit_gates",  # two-qubit gates summed over the job's circuits
    "one_qubit_gates",  # single-qubit gates summed over the job's circuits
    "measurements",  # measurement operations summed over the job's circuits
    "shots",  # shots per circuit
    "circuits",  # circuits in the job
)
# Quantum backend and its calibration of the day (medians over qubits / gates).
BACKEND_FEATURES: Final = (
    "backend_qubits",
    "median_two_qubit_error",
    "median_readout_error",
    "median_single_qubit_error",
    "median_t1_us",
    "median_t2_us",
    # Product of (1 - error) over the gates and measurements of the circuit transpiled for
    # the backend, with that day's calibration: the analytic success probability.
    "estimated_success",
)
# Recent history of the backend's queue (the seed's "model of recent history").
HISTORY_FEATURES: Final = (
    "queue_length",  # pending jobs now
    "queue_length_mean_1h",
    "queue_length_max_1h",
    "queue_length_trend_1h",  # now minus one hour ago
    "recent_wait_p50_s",  # median queue wait of the backend's last 20 started jobs
    "recent_wait_p90_s",
    "recent_wait_count",  # how many of those 20 exist (0: no history)
    "hour_of_day_utc",
    "day_of_week",  # 0 = Monday
)
# Classical simulation on a pool.
CLASSICAL_FEATURES: Final = (
    "method_mps",  # 0 statevector, 1 matrix_product_state
    "device_gpu",  # 0 CPU, 1 GPU
    "cpu_cores",  # cores the pod may use
)
ALL_FEATURES: Final = CIRCUIT_FEATURES + BACKEND_FEATURES + HISTORY_FEATURES + CLASSICAL_FEATURES

# ---- models -------------------------------------------------------------------------------
# name -> the outputs it has (one ONNX file each: models/<name>[_<output>].onnx)
MODELS: Final = {
    "qpu_runtime": ("value",),  # seconds of QPU execution of the job
    "queue_wait": ("p10", "p50", "p90"),  # seconds waiting in the backend's queue
    "fidelity": ("value",),  # expected success probability under the day's calibration
    "classical_time": ("value",),  # seconds of Aer simulation on a pool
    "classical_memory": ("value",),  # peak bytes of that simulation
}

# ---- metadata_props keys of a model file --------------------------------------------------
META_MODEL: Final = "qorch.model"  # a key of MODELS
META_OUTPUT: Final = "qorch.output"  # one of MODELS[model]
META_FEATURES: Final = "qorch.features"  # JSON list of feature names, the input's columns
META_TARGET: Final = "qorch.target"  # "identity" | "log" (the output is log(value)) | "logit"
META_HELDOUT_METRIC: Final = "qorch.heldout_metric"  # e.g. "median_relative_error"
META_HELDOUT_ERROR: Final = "qorch.heldout_error"  # float as text; lower is better
META_SPLIT: Final = "qorch.split"  # how the held-out part was chosen (group / time / ...)
META_TRAINED_AT: Final = "qorch.trained_at"  # RFC 3339
META_SOURCES: Final = "qorch.sources"  # the datasets it was trained on, cited
