"""Subtask pod manifests as the real apiserver sees them (server-side dry run)."""

from __future__ import annotations

import json

import pytest

from qorch.api.workflow import SubtaskSpec, default_pools
from qorch.operator.podspec import ANNOTATION_WORKFLOW_NAME, LABEL_WORKFLOW, build_pod
from tests.harness.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

CPU, GPU = default_pools()
SUBTASKS = {
    "circuit": SubtaskSpec.model_validate(
        {"name": "q", "circuit": {"qasm": "OPENQASM 3.0; qubit[1] q;", "shots": 10}}
    ),
    "classical": SubtaskSpec.model_validate(
        {"name": "c", "classical": {"image": "busybox", "command": ["true"]}}
    ),
}


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
