"""Subtask pod manifests as the real apiserver sees them (server-side dry run)."""

from __future__ import annotations

import json

import pytest

from devenv.controlplane import ControlPlane
from qorch.api.workflow import SubtaskSpec, default_pools
from qorch.operator.podspec import ANNOTATION_WORKFLOW_NAME, LABEL_WORKFLOW, build_pod
from qorch.orchestrator.plan import DependencyResult

pytestmark = pytest.mark.controlplane

CPU, GPU = default_pools()
SUBTASKS = {
    "circuit": SubtaskSpec.model_validate(
        {"name": "q", "circuit": {"qasm": "OPENQASM 3.0; qubit[1] q;", "shots": 10}}
    ),
    "classical": SubtaskSpec.model_validate(
        {"name": "c", "classical": {"image": "busybox", "command": ["true"]}}
    ),
    "variational": SubtaskSpec.model_validate(
        {
            "name": "v",
            "dependsOn": ["c", "q"],
            "variational": {
                "qasm": "OPENQASM 3.0; input float[64] t; qubit[1] q; rx(t) q[0];",
                "hamiltonian": [{"pauli": "Z", "coefficient": 1.0}],
            },
        }
    ),
}
ROUTE = json.dumps({"kind": "backend", "name": "qb", "url": "http://gw:8080", "backendName": "b"})
# The circuit's result is inline (a ConfigMap of the pod's inputs), the classical one's
# was large (its own result ConfigMap): the pod reads both as files.
INPUTS = (DependencyResult("c", config_map="w-c-result"), DependencyResult("q", result={"x": 1}))


@pytest.mark.parametrize("kind", sorted(SUBTASKS))
def test_a_200_character_workflow_name_gives_a_pod_the_apiserver_accepts(
    control_plane: ControlPlane, namespace: str, kind: str
) -> None:
    # A workflow's name may be 253 characters; a label value at most 63.
    name = "w" * 100 + "-" + "x" * 99
    workflow = {"metadata": {"name": name, "namespace": namespace, "uid": "u-1"}}
    sub = SUBTASKS[kind]
    pod = build_pod(
        workflow=workflow,
        subtask=sub,
        attempt=1,
        pod_name=f"{name}-{sub.name}-1",
        worker_image="qorch:test",
        pool=GPU,
        num_qubits=27,
        route=ROUTE if sub.variational else None,
        inputs=INPUTS if sub.dependsOn else (),
        inputs_config_map=f"{name}-{sub.name}-1-inputs"[:253],
    )
    out = control_plane.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod), check=False
    )
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert (
        created["metadata"]["labels"][LABEL_WORKFLOW] == pod["metadata"]["labels"][LABEL_WORKFLOW]
    )
    assert created["metadata"]["annotations"][ANNOTATION_WORKFLOW_NAME] == name
    assert created["spec"]["schedulingGates"] == pod["spec"]["schedulingGates"]
    volumes = {v["name"] for v in created["spec"]["volumes"]}
    expected = {"tmp"} | ({"route", "gateway-token", "inputs"} if kind == "variational" else set())
    assert volumes == expected
