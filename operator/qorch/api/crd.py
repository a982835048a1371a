"""Generate CustomResourceDefinitions from the typed models (the one source of truth).

Pydantic's JSON schema is turned into a Kubernetes structural schema: ``$ref``s are
inlined, ``Optional`` unions collapse to the inner type, titles and defaults are dropped
(the operator applies defaults by parsing with the models, so GitOps diffs stay clean).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from qorch.api.backend import QuantumBackendSpec, QuantumBackendStatus
from qorch.api.meta import GROUP, VERSION
from qorch.api.workflow import HybridWorkflowSpec, HybridWorkflowStatus

_DROP = {"title", "default", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _structural(target, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            merged = {k: v for k, v in node.items() if k != "anyOf"}
            merged.update(options[0])
            return _structural(merged, defs)
    if "const" in node:
        node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        elif key == "additionalProperties" and isinstance(value, bool):
            continue  # structural schemas prune unknown fields; booleans are not allowed
        else:
            out[key] = _structural(value, defs)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
    result: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return result


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    scope: str,
    short_names: list[str],
    spec_model: type[BaseModel],
    status_model: type[BaseModel],
    columns: list[dict[str, Any]],
    description: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["qorch"],
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(spec_model),
                                "status": openapi_schema(status_model),
                            },
                        }
                    },
                }
            ],
        },
    }


def hybrid_workflow_crd() -> dict[str, Any]:
    return _crd(
        kind="HybridWorkflow",
        plural="hybridworkflows",
        singular="hybridworkflow",
        scope="Namespaced",
        short_names=["hwf"],
        spec_model=HybridWorkflowSpec,
        status_model=HybridWorkflowStatus,
        description="A DAG of circuit and classical subtasks that Qorch places on quantum "
        "backends or classical node pools and re-places during the run.",
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Done/Total", "type": "string", "jsonPath": ".status.progress"},
            {"name": "Cost", "type": "number", "jsonPath": ".status.costUSD"},
            {"name": "Moves", "type": "integer", "jsonPath": ".status.moves"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def quantum_backend_crd() -> dict[str, Any]:
    return _crd(
        kind="QuantumBackend",
        plural="quantumbackends",
        singular="quantumbackend",
        scope="Cluster",
        short_names=["qb"],
        spec_model=QuantumBackendSpec,
        status_model=QuantumBackendStatus,
        description="A quantum resource (IBM Quantum, a fake backend or Aer) served by a "
        "quantum-gateway.",
        columns=[
            {"name": "Provider", "type": "string", "jsonPath": ".spec.provider"},
            {"name": "Backend", "type": "string", "jsonPath": ".spec.backendName"},
            {"name": "Qubits", "type": "integer", "jsonPath": ".spec.numQubits"},
            {"name": "Queue", "type": "integer", "jsonPath": ".status.queueLength"},
            {"name": "Healthy", "type": "boolean", "jsonPath": ".status.healthy"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def kopf_peering_crd() -> dict[str, Any]:
    """Kopf's ClusterKopfPeering: replicas of the operator find each other through it and
    only the one with the highest priority acts."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": "Cluster",
            "names": {
                "kind": "ClusterKopfPeering",
                "plural": "clusterkopfpeerings",
                "singular": "clusterkopfpeering",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name in ``crds/`` -> CRD document."""
    return {
        "qorch.io_hybridworkflows.yaml": hybrid_workflow_crd(),
        "qorch.io_quantumbackends.yaml": quantum_backend_crd(),
        "kopf.dev_clusterkopfpeerings.yaml": kopf_peering_crd(),
    }
