"""Pod manifests for subtask attempts, and reading pods back into ``PodState``."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from qorch.api.meta import API_VERSION
from qorch.api.workflow import (
    ClassicalPool,
    ConfigMapKeyRef,
    Placement,
    ResourceKind,
    SubtaskSpec,
)
from qorch.orchestrator.cluster import quantity
from qorch.orchestrator.plan import DependencyResult
from qorch.orchestrator.simulation import (
    TERMINATION_MESSAGE_LIMIT_BYTES,
    memory_quantity,
    runs_on_gpu,
    simulation_method,
    worker_memory_bytes,
)
from qorch.orchestrator.snapshot import PodPhase, PodState

GATE = "qorch.io/placement"
LABEL_WORKFLOW = "qorch.io/workflow"
LABEL_SUBTASK = "qorch.io/subtask"
LABEL_ATTEMPT = "qorch.io/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# The workflow's full name: its label may be shortened (``workflow_label``).
ANNOTATION_WORKFLOW_NAME = "qorch.io/workflow-name"
RESULT_LIMIT_BYTES = TERMINATION_MESSAGE_LIMIT_BYTES
METRICS_PORT = 9090  # `qorch worker` serves /metrics here (QORCH_METRICS_PORT)
ROUTE_ANNOTATION = "qorch.io/route"  # where a variational pod sends its next batch
POOL_ANNOTATION = "qorch.io/pool"  # the pool a pod was released to (set with the release)
# A container's termination message (Kubernetes' default path): a step's result.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
POOL_MOVES_ANNOTATION = "qorch.io/pool-moves"  # the subtask's moves then (a narrow's count)
ROUTE_DIR = "/etc/qorch/route"
GATEWAY_TOKEN_DIR = "/var/run/secrets/qorch/gateway"
GATEWAY_AUDIENCE = "qorch-gateway"
INPUTS_DIR = "/var/run/qorch/inputs"  # <dependency>.json: what each dependency produced
LABEL_VALUE_MAX = 63
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_HASH_CHARS = 10  # 40 bits of sha256: collisions need ~10^6 names sharing a prefix


def workflow_label(name: str) -> str:
    """The ``qorch.io/workflow`` label value for a workflow: its name when that is a valid
    label value (at most 63 characters), else a prefix of it, '-', and a hash of the whole
    name, so it stays stable, valid and unique in practice. The full name is in the
    ``qorch.io/workflow-name`` annotation."""
    if len(name) <= LABEL_VALUE_MAX and LABEL_VALUE.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_LABEL_HASH_CHARS]
    keep = LABEL_VALUE_MAX - _LABEL_HASH_CHARS - 1
    prefix = re.sub(r"[^-A-Za-z0-9_.]", "", name)[:keep].strip("-_.")
    return f"{prefix}-{digest}" if prefix else digest


def build_pod(
    *,
    workflow: dict[str, Any],
    subtask: SubtaskSpec,
    attempt: int,
    pod_name: str,
    worker_image: str,
    pool: ClassicalPool,
    num_qubits: int | None = None,
    route: str | None = None,
    job_prefix: str | None = None,
    inputs: tuple[DependencyResult, ...] = (),
    inputs_config_map: str | None = None,
) -> dict[str, Any]:
    """A gated pod: it carries no placement until ``release_patch`` narrows it to ``pool``.

    A circuit pod runs ``qorch worker``; its memory is sized from the method the worker
    will use for ``num_qubits`` (None: unknown, so the most any method may take), and on
    a GPU pool it gets one GPU when that method runs on one.

    A variational pod runs ``qorch worker`` in its variational mode: ``route`` (JSON, see
    ``qorch.worker.variational``) is its ``qorch.io/route`` annotation, which the pod reads
    through a downward-API volume before each batch, and ``job_prefix`` names its gateway
    jobs. It gets a projected ServiceAccount token for the gateways' audience.

    Every pod of a subtask with dependencies reads their results as files
    ``$QORCH_INPUTS_DIR/<dependency>.json``: inline results from ``inputs_config_map``
    (which the applier writes first), large ones from the ConfigMap they were stored in.
    """
    meta = workflow["metadata"]
    labels = {
        LABEL_WORKFLOW: workflow_label(meta["name"]),
        LABEL_SUBTASK: subtask.name,
        LABEL_ATTEMPT: str(attempt),
        LABEL_MANAGED_BY: "qorch",
    }
    annotations: dict[str, str] = {}
    extra_mounts: list[dict[str, Any]] = []
    extra_volumes: list[dict[str, Any]] = []
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
        # Where a step leaves its result (JSON): the container's termination message, which
        # the operator copies into the status (``qorch run`` points it at a file).
        env.append({"name": "QORCH_RESULT_PATH", "value": TERMINATION_MESSAGE_PATH})
        requests: dict[str, str] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
        limits: dict[str, str] = {"memory": spec.resources.memory}
        if spec.resources.gpu:
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.resources.gpu)
    elif subtask.variational is not None:
        var = subtask.variational
        container = {"name": "subtask", "image": worker_image, "command": ["qorch", "worker"]}
        env.append(_qasm_env(var.qasm, var.configMapRef))
        settings = var.model_dump(
            mode="json",
            include={"hamiltonian", "optimizer", "maxIterations", "tolerance", "initialPoint",
                     "shots"},
        )  # fmt: skip
        env.extend(
            [
                {"name": "QORCH_VARIATIONAL", "value": json.dumps(settings, sort_keys=True)},
                {"name": "QORCH_JOB_PREFIX", "value": job_prefix or pod_name},
                {"name": "QORCH_ROUTE_FILE", "value": f"{ROUTE_DIR}/route"},
                {"name": "QORCH_GATEWAY_TOKEN_FILE", "value": f"{GATEWAY_TOKEN_DIR}/token"},
                {"name": "QORCH_METRICS_PORT", "value": str(METRICS_PORT)},
            ]
        )
        # The optimizer may simulate its batches here (a pool route, where the pool holds
        # the ansatz): room for the state.
        simulable = num_qubits is None or num_qubits <= pool.maxQubits
        state = worker_memory_bytes(num_qubits) if simulable else 0
        room = max(state, int(quantity(var.resources.memory)))
        requests = {"cpu": var.resources.cpu, "memory": memory_quantity(room)}
        limits = {"memory": requests["memory"]}
        if var.resources.gpu:
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(var.resources.gpu)
        container["ports"] = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
        annotations.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                ROUTE_ANNOTATION: route or "",
            }
        )
        extra_mounts = [
            {"name": "route", "mountPath": ROUTE_DIR, "readOnly": True},
            {"name": "gateway-token", "mountPath": GATEWAY_TOKEN_DIR, "readOnly": True},
        ]
        extra_volumes = [
            {
                "name": "route",
                "downwardAPI": {
                    "items": [
                        {
                            "path": "route",
                            "fieldRef": {
                                "fieldPath": f"metadata.annotations['{ROUTE_ANNOTATION}']"
                            },
                        }
                    ]
                },
            },
            {
                "name": "gateway-token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": GATEWAY_AUDIENCE,
                                "expirationSeconds": 3600,
                                "path": "token",
                            }
                        }
                    ]
                },
            },
        ]
    else:
        circuit = subtask.circuit
        assert circuit is not None
        container = {"name": "subtask", "image": worker_image, "command": ["qorch", "worker"]}
        env.append(_qasm_env(circuit.qasm, circuit.configMapRef))
        env.extend(
            [
                {"name": "QORCH_PRIMITIVE", "value": circuit.primitive.value},
                {"name": "QORCH_SHOTS", "value": str(circuit.shots)},
                {"name": "QORCH_OBSERVABLES", "value": json.dumps(circuit.observables or [])},
            ]
        )
        method = "auto" if num_qubits is None else simulation_method(num_qubits)
        memory = memory_quantity(worker_memory_bytes(num_qubits))
        requests = {"cpu": "1", "memory": memory}
        limits = {"memory": memory}
        device = "CPU"
        if pool.gpu and (num_qubits is None or runs_on_gpu(method)):
            # "auto": the worker takes the GPU when its Aer build sees one, and still runs
            # (on the CPU, saying so in its usage) from an image without qiskit-aer-gpu.
            device = "auto"
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = "1"
        env.extend(
            [
                {"name": "QORCH_METHOD", "value": method},
                {"name": "QORCH_DEVICE", "value": device},
                # Long runs are scraped; every run also reports its usage in its result.
                {"name": "QORCH_METRICS_PORT", "value": str(METRICS_PORT)},
            ]
        )
        container["ports"] = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
        annotations.update(
            {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}
        )
    annotations[ANNOTATION_WORKFLOW_NAME] = meta["name"]
    if inputs:
        env.append({"name": "QORCH_INPUTS_DIR", "value": INPUTS_DIR})
        extra_mounts.append({"name": "inputs", "mountPath": INPUTS_DIR, "readOnly": True})
        extra_volumes.append(
            {"name": "inputs", "projected": {"sources": _input_sources(inputs, inputs_config_map)}}
        )
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
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *extra_mounts],
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
            "volumes": [{"name": "tmp", "emptyDir": {}}, *extra_volumes],
        },
    }


def _input_sources(
    inputs: tuple[DependencyResult, ...], inline_config_map: str | None
) -> list[dict[str, Any]]:
    inline = [i for i in inputs if i.config_map is None]
    sources: list[dict[str, Any]] = []
    if inline:
        assert inline_config_map is not None
        items = [{"key": f"{i.subtask}.json", "path": f"{i.subtask}.json"} for i in inline]
        sources.append({"configMap": {"name": inline_config_map, "items": items}})
    for i in inputs:
        if i.config_map is not None:
            items = [{"key": "result.json", "path": f"{i.subtask}.json"}]
            sources.append({"configMap": {"name": i.config_map, "items": items}})
    return sources


def _qasm_env(qasm: str | None, ref: ConfigMapKeyRef | None) -> dict[str, Any]:
    if qasm is not None:
        return {"name": "QORCH_QASM", "value": qasm}
    assert ref is not None
    return {
        "name": "QORCH_QASM",
        "valueFrom": {"configMapKeyRef": {"name": ref.name, "key": ref.key}},
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


def _release_parts(
    pod: Mapping[str, Any], pool: ClassicalPool, moves: int
) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """What releasing ``pod`` to ``pool`` leaves: its node selector and tolerations with the
    pool's added, its scheduling gates without Qorch's, and the marks to annotate."""
    spec = pod.get("spec") or {}
    selector = dict(spec.get("nodeSelector") or {})
    for key, value in pool.nodeSelector.items():
        if key not in selector:
            selector[key] = value
    tolerations = list(spec.get("tolerations") or [])
    for tol in pool.tolerations:
        as_dict = tol.model_dump(exclude_none=True)
        if as_dict not in tolerations:
            tolerations.append(as_dict)
    remaining = [g for g in spec.get("schedulingGates") or [] if g.get("name") != GATE]
    # The pool it went to and the subtask's move count, for a restart to read back when
    # the status write after a narrow was lost.
    marks = {POOL_ANNOTATION: pool.name, POOL_MOVES_ANNOTATION: str(moves)}
    return selector, tolerations, remaining, marks


def release_patch(pod: dict[str, Any], pool: ClassicalPool, moves: int = 0) -> list[dict[str, Any]]:
    """ONE JSON patch: add the pool's node selector and tolerations, remove the gate.

    While a pod is gated the apiserver allows only narrowing (adding selector keys,
    adding tolerations); the ``test`` op makes the patch fail instead of clobbering if
    someone else changed the gates meanwhile.
    """
    gates = pod.get("spec", {}).get("schedulingGates") or []
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/spec/schedulingGates", "value": gates}]
    uid = pod.get("metadata", {}).get("uid")
    if uid:  # the very pod the view was taken of, not a later one of the same name
        ops.insert(0, {"op": "test", "path": "/metadata/uid", "value": uid})
    selector, tolerations, remaining, marks = _release_parts(pod, pool, moves)
    ops.append({"op": "add", "path": "/spec/nodeSelector", "value": selector})
    if tolerations:
        ops.append({"op": "add", "path": "/spec/tolerations", "value": tolerations})
    ops.append({"op": "replace", "path": "/spec/schedulingGates", "value": remaining})
    if pod.get("metadata", {}).get("annotations"):
        for key, value in marks.items():
            path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
            ops.append({"op": "add", "path": path, "value": value})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": marks})
    return ops


def released(manifest: dict[str, Any], pool: ClassicalPool, moves: int = 0) -> dict[str, Any]:
    """``manifest`` as ``release_patch`` would leave the created pod: a pod created and
    released in the same plan is created released, one write instead of two (and one
    watch event fewer for everything that watches pods)."""
    selector, tolerations, remaining, marks = _release_parts(manifest, pool, moves)
    spec = dict(manifest.get("spec") or {})
    spec["nodeSelector"] = selector
    if tolerations:
        spec["tolerations"] = tolerations
    if remaining:
        spec["schedulingGates"] = remaining
    else:
        spec.pop("schedulingGates", None)
    meta = dict(manifest.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), **marks}
    return {**manifest, "metadata": meta, "spec": spec}


def release_view(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """What ``release_patch`` reads of a pod Qorch still gates (None once released): kept
    by the operator's pod cache (``pod_cache``) so that releasing needs no read."""
    spec = pod.get("spec") or {}
    gates = spec.get("schedulingGates") or []
    if not any(g.get("name") == GATE for g in gates):
        return None
    kept = {
        k: copy.deepcopy(spec[k])
        for k in ("schedulingGates", "nodeSelector", "tolerations")
        if k in spec
    }
    meta = pod.get("metadata") or {}
    return {
        "spec": kept,
        "metadata": {"uid": meta.get("uid"), "annotations": dict(meta.get("annotations") or {})},
    }


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
    usage = _usage(result.pop("usage", None)) if result is not None else None
    annotations = meta.get("annotations") or {}
    route, route_moves = _route(annotations.get(ROUTE_ANNOTATION))
    return PodState(
        name=meta["name"],
        subtask=labels.get(LABEL_SUBTASK, ""),
        attempt=int(labels.get(LABEL_ATTEMPT, "0") or 0),
        phase=phase,
        node=spec.get("nodeName"),
        message=message,
        result=result,
        deleting=bool(meta.get("deletionTimestamp")),
        usage=usage,
        ip=status.get("podIP") or None,
        variational=ROUTE_ANNOTATION in annotations,
        pool=None if GATE in gates else (annotations.get(POOL_ANNOTATION) or None),
        pool_moves=_count(annotations.get(POOL_MOVES_ANNOTATION)),
        route=route,
        route_moves=route_moves,
    )


def _count(raw: Any) -> int:
    """A move count from an annotation; 0 when absent or not a small non-negative number."""
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 7 else 0


def _route(raw: Any) -> tuple[Placement | None, int]:
    """A variational pod's ``qorch.io/route`` annotation: where its batches go, and the
    subtask's move count when that was set (see ``Applier``); (None, 0) when unreadable."""
    try:
        doc = json.loads(raw) if isinstance(raw, str) and raw else None
        if not isinstance(doc, dict):
            return None, 0
        moves = doc.get("moves", 0)
        placement = Placement(kind=ResourceKind(str(doc.get("kind"))), name=str(doc.get("name")))
        return placement, moves if isinstance(moves, int) and moves >= 0 else 0
    except (ValueError, TypeError):
        return None, 0


def _usage(raw: Any) -> dict[str, float | str] | None:
    """The worker's ``usage`` summary (its own numbers, not the user's result), keeping
    only plain numbers and short strings: it comes from inside the pod."""
    if not isinstance(raw, dict):
        return None
    usage: dict[str, float | str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or len(key) > 64:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            usage[key] = float(value)
        elif isinstance(value, str) and len(value) <= 64:
            usage[key] = value
    return usage or None
