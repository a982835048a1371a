"""Pod manifests for subtask attempts, and reading pods back into ``PodState``."""

from __future__ import annotations

import json
from typing import Any

from qorch.api.meta import API_VERSION
from qorch.api.workflow import ClassicalPool, SubtaskSpec
from qorch.orchestrator.snapshot import PodPhase, PodState

GATE = "qorch.io/placement"
LABEL_WORKFLOW = "qorch.io/workflow"
LABEL_SUBTASK = "qorch.io/subtask"
LABEL_ATTEMPT = "qorch.io/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
RESULT_LIMIT_BYTES = 4096  # Kubernetes caps a termination message at 4096 bytes


def build_pod(
    *,
    workflow: dict[str, Any],
    subtask: SubtaskSpec,
    attempt: int,
    pod_name: str,
    worker_image: str,
) -> dict[str, Any]:
    """A gated pod: it carries no placement until ``release_patch`` narrows it."""
    meta = workflow["metadata"]
    labels = {
        LABEL_WORKFLOW: meta["name"],
        LABEL_SUBTASK: subtask.name,
        LABEL_ATTEMPT: str(attempt),
        LABEL_MANAGED_BY: "qorch",
    }
    annotations: dict[str, str] = {}
    env: list[dict[str, Any]] = [
        {"name": "QORCH_WORKFLOW", "value": meta["name"]},
        {"name": "QORCH_SUBTASK", "value": subtask.name},
        {"name": "QORCH_ATTEMPT", "value": str(attempt)},
    ]
    if subtask.classical is not None:
        spec = subtask.classical
        annotations.update(spec.annotations)
        container: dict[str, Any] = {"name": "subtask", "image": spec.image}
        if spec.command:
            container["command"] = list(spec.command)
        if spec.args:
            container["args"] = list(spec.args)
        env.extend({"name": k, "value": v} for k, v in sorted(spec.env.items()))
        requests: dict[str, str] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
        limits: dict[str, str] = {"memory": spec.resources.memory}
        if spec.resources.gpu:
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.resources.gpu)
    else:
        circuit = subtask.circuit
        assert circuit is not None
        container = {"name": "subtask", "image": worker_image, "command": ["qorch", "worker"]}
        if circuit.qasm is not None:
            env.append({"name": "QORCH_QASM", "value": circuit.qasm})
        else:
            assert circuit.configMapRef is not None
            env.append(
                {
                    "name": "QORCH_QASM",
                    "valueFrom": {
                        "configMapKeyRef": {
                            "name": circuit.configMapRef.name,
                            "key": circuit.configMapRef.key,
                        }
                    },
                }
            )
        env.extend(
            [
                {"name": "QORCH_PRIMITIVE", "value": circuit.primitive.value},
                {"name": "QORCH_SHOTS", "value": str(circuit.shots)},
                {"name": "QORCH_OBSERVABLES", "value": json.dumps(circuit.observables or [])},
            ]
        )
        requests = {"cpu": "1", "memory": "2Gi"}
        limits = {"memory": "2Gi"}
    container.update(
        {
            "env": env,
            "resources": {"requests": requests, "limits": limits},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            # A read-only root filesystem, but a writable /tmp: most images expect one.
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(workflow)],
        },
        "spec": {
            "schedulingGates": [{"name": GATE}],
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def owner_reference(workflow: dict[str, Any]) -> dict[str, Any]:
    """Children go with their workflow (garbage collection); no finalizer needed."""
    meta = workflow["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "HybridWorkflow",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def release_patch(pod: dict[str, Any], pool: ClassicalPool) -> list[dict[str, Any]]:
    """ONE JSON patch: add the pool's node selector and tolerations, remove the gate.

    While a pod is gated the apiserver allows only narrowing (adding selector keys,
    adding tolerations); the ``test`` op makes the patch fail instead of clobbering if
    someone else changed the gates meanwhile.
    """
    spec = pod.get("spec", {})
    gates = spec.get("schedulingGates") or []
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/spec/schedulingGates", "value": gates}]
    selector = dict(spec.get("nodeSelector") or {})
    for key, value in pool.nodeSelector.items():
        if key not in selector:
            selector[key] = value
    ops.append({"op": "add", "path": "/spec/nodeSelector", "value": selector})
    tolerations = list(spec.get("tolerations") or [])
    for tol in pool.tolerations:
        as_dict = tol.model_dump(exclude_none=True)
        if as_dict not in tolerations:
            tolerations.append(as_dict)
    if tolerations:
        ops.append({"op": "add", "path": "/spec/tolerations", "value": tolerations})
    remaining = [g for g in gates if g.get("name") != GATE]
    ops.append({"op": "replace", "path": "/spec/schedulingGates", "value": remaining})
    return ops


def pod_state(pod: dict[str, Any]) -> PodState:
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status") or {}
    labels = meta.get("labels") or {}
    gates = [g.get("name") for g in spec.get("schedulingGates") or []]
    phase_raw = status.get("phase", "Pending")
    message = ""
    result: dict[str, Any] | None = None
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            raw = (term.get("message") or "").strip()
            if phase_raw == "Succeeded" and raw:
                try:
                    parsed = json.loads(raw)
                    result = parsed if isinstance(parsed, dict) else {"value": parsed}
                except json.JSONDecodeError:
                    result = {"message": raw[:RESULT_LIMIT_BYTES]}
            elif phase_raw == "Failed":
                message = f"exit code {term.get('exitCode')}, {term.get('reason', '')}".strip(", ")
                if raw:
                    message += f": {raw[-1024:]}"
    if GATE in gates:
        phase = PodPhase.GATED
    elif phase_raw in ("Running", "Succeeded", "Failed"):
        phase = PodPhase(phase_raw)
    else:
        phase = PodPhase.PENDING
    if phase_raw == "Failed" and not message:
        message = status.get("message") or status.get("reason") or "pod failed"
    return PodState(
        name=meta["name"],
        subtask=labels.get(LABEL_SUBTASK, ""),
        attempt=int(labels.get(LABEL_ATTEMPT, "0") or 0),
        phase=phase,
        node=spec.get("nodeName"),
        message=message,
        result=result,
        deleting=bool(meta.get("deletionTimestamp")),
    )
