"""Typed models of Qorch's custom resources; the CRD YAML is generated from them."""

from qorch.api.backend import Provider, QuantumBackend, QuantumBackendSpec, QuantumBackendStatus
from qorch.api.meta import API_VERSION, GROUP, VERSION, Condition
from qorch.api.workflow import (
    CircuitSpec,
    ClassicalPool,
    ClassicalSpec,
    HybridWorkflow,
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    Placement,
    Primitive,
    ResourceKind,
    SubtaskPhase,
    SubtaskSpec,
    SubtaskStatus,
    WorkflowPhase,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "CircuitSpec",
    "ClassicalPool",
    "ClassicalSpec",
    "Condition",
    "HybridWorkflow",
    "HybridWorkflowSpec",
    "HybridWorkflowStatus",
    "Placement",
    "Primitive",
    "Provider",
    "QuantumBackend",
    "QuantumBackendSpec",
    "QuantumBackendStatus",
    "ResourceKind",
    "SubtaskPhase",
    "SubtaskSpec",
    "SubtaskStatus",
    "WorkflowPhase",
]
