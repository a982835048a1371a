"""Predictive model served by onnxruntime.

The operator builds one :class:`Predictor` at start (with a :class:`ModelStore` over the
mounted model directory), refreshes the store on a timer, and calls
``Predictor.predict(pairs, context)`` once per decision pass.
"""

from qorch.predictor.analytic import AnalyticConfig
from qorch.predictor.features import (
    BackendInput,
    CalibrationMedians,
    CircuitCache,
    FeatureBuilder,
    ParsedCircuit,
    PoolInput,
    PredictionContext,
    QueueHistory,
    SubtaskInput,
    SuccessCache,
)
from qorch.predictor.models import ModelInfo, ModelStore, Rejection, StoreChange, StoreState
from qorch.predictor.service import OutputUse, PassReport, Predictor

__all__ = [
    "AnalyticConfig",
    "BackendInput",
    "CalibrationMedians",
    "CircuitCache",
    "FeatureBuilder",
    "ModelInfo",
    "ModelStore",
    "OutputUse",
    "ParsedCircuit",
    "PassReport",
    "PoolInput",
    "PredictionContext",
    "Predictor",
    "QueueHistory",
    "Rejection",
    "StoreChange",
    "StoreState",
    "SubtaskInput",
    "SuccessCache",
]
