"""Contract tests on the real control plane: the mechanisms the operator relies on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devenv.cluster import Cluster, wait_for
from devenv.controlplane import ControlPlane
from devenv.controlplane import start as start_control_plane
from devenv.nodes import DEFAULT_NODES

pytestmark = pytest.mark.controlplane


def test_control_plane_is_real_processes(control_plane: ControlPlane) -> None:
    names = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert set(control_plane.components) == names
    for comp in control_plane.components.values():
        assert comp.alive(), f"{comp.name} is not running"
        assert os.path.exists(f"/proc/{comp.pid}"), f"no process {comp.pid} for {comp.name}"
        exe = os.readlink(f"/proc/{comp.pid}/exe")
        assert exe.endswith(comp.name), (comp.name, exe)
    version = control_plane.get_json("/version")
    assert version["gitVersion"] == "v1.36.3"
    assert int(version["minor"]) >= 31  # scheduling gates are GA from 1.30


def test_kubectl_works_with_the_fixture_kubeconfig(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("get", "nodes", "-o", "json")
    nodes = json.loads(out.stdout)["items"]
    pools = {n["metadata"]["labels"]["qorch.io/pool"] for n in nodes}
    assert pools == {"cpu", "gpu", "quantum-gateway"}
    gpu = [n for n in nodes if n["metadata"]["labels"]["qorch.io/pool"] == "gpu"]
    assert all(n["status"]["allocatable"]["nvidia.com/gpu"] == "8" for n in gpu)
    assert all(any(t["key"] == "nvidia.com/gpu" for t in n["spec"]["taints"]) for n in gpu)


MINIMAL = """
apiVersion: qorch.io/v1alpha1
kind: HybridWorkflow
metadata: {name: %(name)s}
spec:
  subtasks:
  - name: step
    classical: {image: busybox, command: ["true"]}
"""


def test_crd_accepts_a_valid_workflow(cluster: Cluster, namespace: str) -> None:
    cluster.apply(MINIMAL % {"name": "ok"}, namespace)
    got = cluster.get("hwf", "ok", namespace)
    assert got is not None and got["spec"]["subtasks"][0]["name"] == "step"


@pytest.mark.parametrize(
    "spec",
    [
        # Every optional field left out: the CEL rules must not trip over missing keys.
        "subtasks: [{name: q, circuit: {qasm: 'OPENQASM 3.0; qubit[1] q;'}}]",
        "subtasks: [{name: q, circuit: {qasm: 'x', primitive: estimator, observables: [Z]}}]",
        "subtasks: [{name: a, classical: {image: x}}]\n  reallocation: {threshold: 0.3}",
        "subtasks: [{name: a, classical: {image: x}}]\n  reallocation: {hysteresis: 0.1}",
        "subtasks: [{name: a, classical: {image: x}}]\n  objective: {weights: {time: 1, error: 0, "
        "cost: 0}}",
    ],
)
def test_crd_accepts_minimal_variants(cluster: Cluster, namespace: str, spec: str) -> None:
    manifest = (
        "apiVersion: qorch.io/v1alpha1\nkind: HybridWorkflow\n"
        f"metadata: {{name: ok}}\nspec:\n  {spec}\n"
    )
    cluster.apply(manifest, namespace)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "subtasks: []",
            "spec.subtasks: Invalid value: 0: spec.subtasks in body should have at least 1 items",
        ),
        ("subtasks: [{name: Bad_Name, classical: {image: x}}]", "spec.subtasks[0].name"),
        ("subtasks: [{name: a}]", "a subtask is exactly one of circuit, classical or variational"),
        ("subtasks: [{name: a, circuit: {qasm: 'x', shots: 0}}]", "spec.subtasks[0].circuit.shots"),
        (
            "subtasks: [{name: a, circuit: {qasm: 'x', primitive: estimator}}]",
            "an estimator circuit needs at least one observable",
        ),
        (
            "subtasks: [{name: a, classical: {image: x}}, {name: a, classical: {image: y}}]",
            'Duplicate value: {"name":"a"}',
        ),
        (
            "subtasks: [{name: a, classical: {image: x}}]\n  objective: {preset: fastest}",
            "spec.objective.preset: Unsupported value",
        ),
        (
            "subtasks: [{name: a, classical: {image: x}}]\n  reallocation: {threshold: 0.1, "
            "hysteresis: 0.5}",
            "hysteresis must not exceed threshold",
        ),
        (
            "subtasks: [{name: a, classical: {image: x}}]\n  reallocation: {threshold: 0.01}",
            "hysteresis must not exceed threshold",
        ),
        (
            "subtasks: [{name: a, circuit: {qasm: x, observables: [Z]}}]",
            "observables apply to the estimator primitive only",
        ),
        (
            "subtasks: [{name: a, classical: {image: x}}]\n  objective: {weights: {time: 0, "
            "error: 0, cost: 0}}",
            "at least one weight must be positive",
        ),
        (
            "subtasks: [{name: a, classical: {image: x, colour: red}}]",
            'unknown field "spec.subtasks[0].classical.colour"',
        ),
    ],
)
def test_crd_rejects_invalid_workflows(
    cluster: Cluster, namespace: str, spec: str, expected: str
) -> None:
    manifest = (
        "apiVersion: qorch.io/v1alpha1\nkind: HybridWorkflow\n"
        f"metadata: {{name: bad}}\nspec:\n  {spec}\n"
    )
    out = cluster.apply(manifest, namespace, check=False)
    assert out.returncode != 0
    assert expected in out.stderr, out.stderr
    assert cluster.get("hwf", "bad", namespace) is None


def test_subtasks_are_immutable(cluster: Cluster, namespace: str) -> None:
    cluster.apply(MINIMAL % {"name": "frozen"}, namespace)
    changed = (MINIMAL % {"name": "frozen"}).replace('["true"]', '["false"]')
    out = cluster.apply(changed, namespace, check=False)
    assert out.returncode != 0
    assert "subtasks are immutable" in out.stderr


GATED_POD = """
apiVersion: v1
kind: Pod
metadata: {name: %(name)s}
spec:
  schedulingGates: [{name: qorch.io/placement}]
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  containers: [{name: c, image: busybox}]
"""


def _pod(cluster: Cluster, name: str, namespace: str) -> dict:  # type: ignore[type-arg]
    pod = cluster.get("pod", name, namespace)
    assert pod is not None
    return pod


def test_gated_pod_waits_then_one_narrowing_update_binds_it_to_the_gpu_pool(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(GATED_POD % {"name": "gated"}, namespace)
    wait_for(
        "SchedulingGated condition",
        lambda: any(
            c.get("reason") == "SchedulingGated"
            for c in _pod(cluster, "gated", namespace).get("status", {}).get("conditions", [])
        ),
    )
    assert "nodeName" not in _pod(cluster, "gated", namespace)["spec"]

    patch = [
        {"op": "add", "path": "/spec/nodeSelector", "value": {"qorch.io/pool": "gpu"}},
        {"op": "replace", "path": "/spec/schedulingGates", "value": []},
    ]
    cluster.json_patch("pod", "gated", namespace, patch)
    pod = wait_for(
        "pod Running",
        lambda: (
            p
            if (p := _pod(cluster, "gated", namespace))["status"].get("phase") == "Running"
            else None
        ),
    )
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")


def test_widening_a_gated_pods_selector_is_rejected(cluster: Cluster, namespace: str) -> None:
    manifest = (GATED_POD % {"name": "narrow"}).replace(
        "  schedulingGates", "  nodeSelector: {qorch.io/pool: gpu}\n  schedulingGates"
    )
    cluster.apply(manifest, namespace)
    patch = [{"op": "replace", "path": "/spec/nodeSelector", "value": {"qorch.io/pool": "cpu"}}]
    out = cluster.json_patch("pod", "narrow", namespace, patch, check=False)
    assert out.returncode != 0
    assert "only additions to spec.nodeSelector are allowed" in out.stderr


def test_changing_the_selector_after_binding_is_rejected(cluster: Cluster, namespace: str) -> None:
    manifest = (GATED_POD % {"name": "bound"}).replace(
        "  schedulingGates: [{name: qorch.io/placement}]\n",
        "  nodeSelector: {qorch.io/pool: cpu}\n",
    )
    cluster.apply(manifest, namespace)
    wait_for("pod bound", lambda: _pod(cluster, "bound", namespace)["spec"].get("nodeName"))
    patch = [{"op": "add", "path": "/spec/nodeSelector/extra", "value": "x"}]
    out = cluster.json_patch("pod", "bound", namespace, patch, check=False)
    assert out.returncode != 0
    assert "Forbidden: pod updates may not change fields" in out.stderr


def test_teardown_leaves_no_process_behind(tmp_path: Path) -> None:
    plane = start_control_plane(tmp_path / "cp", nodes=DEFAULT_NODES[:1])
    pids = {c.name: c.pid for c in plane.components.values()}
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids.values())
    plane.stop()
    alive = {name: pid for name, pid in pids.items() if _running(pid)}
    assert not alive, f"still running after stop: {alive}"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
