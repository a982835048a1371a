"""The operator on the real control plane: DAG execution, failure, restarts, peering."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devenv.cluster import Cluster, wait_for
from devenv.controlplane import ControlPlane
from devenv.overlays import kwok_example
from tests.harness import operator as operator_mod
from tests.harness.podwatch import PodWatcher

pytestmark = pytest.mark.controlplane


def phase_of(cluster: Cluster, name: str, namespace: str) -> str | None:
    wf = cluster.get("hwf", name, namespace)
    return (wf or {}).get("status", {}).get("phase")


def wait_phase(
    cluster: Cluster, name: str, namespace: str, phases: set[str], timeout: float = 90
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        wf = cluster.get("hwf", name, namespace)
        return wf if wf and wf.get("status", {}).get("phase") in phases else None

    return wait_for(f"{namespace}/{name} in {phases}", done, timeout)


def test_three_stage_example_runs_placed_and_completed(
    cluster: Cluster,
    namespace: str,
    operator_process: operator_mod.OperatorProcess,
    control_plane: ControlPlane,
) -> None:
    phases_seen: list[str] = []
    with PodWatcher(str(control_plane.kubeconfig), namespace) as watcher:
        # The example as users apply it, plus KWOK's completion annotation (2 s per step).
        out = control_plane.kubectl(
            "apply", "-n", namespace, "-f", "-", input=kwok_example("three-stage-dag.yaml", "2s")
        )
        assert "created" in out.stdout

        def finished() -> bool:
            phase = phase_of(cluster, "three-stage-dag", namespace)
            if phase and (not phases_seen or phases_seen[-1] != phase):
                phases_seen.append(phase)
            return phase in ("Succeeded", "Failed")

        wait_for("workflow to finish", finished, 90, interval=0.1)

    wf = cluster.get("hwf", "three-stage-dag", namespace)
    assert wf is not None
    assert wf["status"]["phase"] == "Succeeded", wf["status"]
    assert "Running" in phases_seen and phases_seen[-1] == "Succeeded", phases_seen
    assert wf["status"]["progress"] == "3/3"
    assert wf["status"]["observedGeneration"] == wf["metadata"]["generation"]

    expected_pool = {"prepare": "cpu", "train": "gpu", "analyse": "cpu"}
    pods = cluster.list("pods", namespace)
    assert len(pods) == 3
    for sub, pool in expected_pool.items():
        pod = f"three-stage-dag-{sub}-1"
        history = watcher.history(pod)
        assert history, f"no observations of {pod}"
        # The rule decides the pool when the step is ready: the pod is created placed (one
        # write), as the release of a gated pod would leave it (no gate, the pool's
        # selector), never scheduled anywhere else first.
        created = history[0]
        assert created.event == "ADDED" and created.gates == (), created
        assert created.node is None and created.node_selector == {"qorch.io/pool": pool}
        bound = next(o for o in history if o.node)
        assert bound.node.startswith(f"kwok-{pool}-"), bound
        assert all(o.node_selector == {"qorch.io/pool": pool} for o in history)
        assert history[-1].phase == "Succeeded"
        # Owner reference: deleting the workflow deletes the pods.
        live = next(p for p in pods if p["metadata"]["name"] == pod)
        owner = live["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "HybridWorkflow" and owner["uid"] == wf["metadata"]["uid"]
        assert live["spec"]["securityContext"]["runAsNonRoot"] is True

    # Every placement leaves an Event (Kopf posts them from a queue: wait for the last).
    reasons = wait_for(
        "WorkflowSucceeded event",
        lambda: (
            r
            if "WorkflowSucceeded"
            in (r := [e["reason"] for e in cluster.events(namespace, "three-stage-dag")])
            else None
        ),
        30,
    )
    assert reasons.count("Placed") == 3, reasons

    # Dependencies ran in order.
    st = {s["name"]: s for s in wf["status"]["subtasks"]}
    assert st["prepare"]["finishedAt"] <= st["train"]["launchedAt"]
    assert st["train"]["finishedAt"] <= st["analyse"]["launchedAt"]

    # The operator's metrics count the decisions.
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator_process.metrics_port}/metrics", timeout=5
    ) as resp:
        text = resp.read().decode()
    assert 'qorch_operator_placements_total{kind="pool",resource="gpu"}' in text

    control_plane.kubectl("delete", "hwf", "three-stage-dag", "-n", namespace)
    wait_for("pods garbage-collected", lambda: not cluster.list("pods", namespace), 60)


STD = 'OPENQASM 3.0; include "stdgates.inc"; '
BAD_QASM = STD + "qubit[2] q; h q[0]; cx q[0] q[1];"  # missing comma
WIDE = STD + "qubit[40] q; h q[0];"


@pytest.mark.parametrize(
    ("subtasks", "resources", "expected"),
    [
        (
            [{"name": "a", "dependsOn": ["ghost"], "classical": {"image": "busybox"}}],
            {},
            "spec.subtasks[0].dependsOn[0]: unknown subtask 'ghost'",
        ),
        (
            [
                {"name": "a", "dependsOn": ["b"], "classical": {"image": "busybox"}},
                {"name": "b", "dependsOn": ["a"], "classical": {"image": "busybox"}},
            ],
            {},
            "spec.subtasks: dependency cycle: a -> b -> a",
        ),
        (
            [{"name": "q", "circuit": {"qasm": BAD_QASM}}],
            {},
            "spec.subtasks[0].circuit.qasm: OpenQASM does not parse: line 1, column 67: "
            "unexpected 'q'",
        ),
        (
            [{"name": "q", "circuit": {"qasm": WIDE}}],
            {},
            "spec.subtasks[0].circuit.qasm: circuit needs 40 qubits but the largest allowed "
            "resource has 32",
        ),
        (
            [{"name": "q", "circuit": {"qasm": STD + "qubit[2] q; h q[0];"}}],
            {"quantumBackends": ["no-such-backend"]},
            "spec.resources.quantumBackends[0]: unknown QuantumBackend 'no-such-backend'",
        ),
        (
            [{"name": "q", "circuit": {"configMapRef": {"name": "missing", "key": "c.qasm"}}}],
            {},
            "spec.subtasks[0].circuit.configMapRef: ConfigMap 'missing' cannot be read (404",
        ),
    ],
)
def test_invalid_workflow_fails_fast_with_a_specific_message_and_no_pods(
    cluster: Cluster,
    namespace: str,
    operator_process: operator_mod.OperatorProcess,
    subtasks: list[dict[str, Any]],
    resources: dict[str, Any],
    expected: str,
) -> None:
    manifest = {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {"name": "bad"},
        "spec": {"subtasks": subtasks, "resources": resources},
    }
    cluster.apply(json.dumps(manifest), namespace)
    wf = wait_phase(cluster, "bad", namespace, {"Failed", "Succeeded", "Running"})
    assert wf["status"]["phase"] == "Failed"
    valid = {c["type"]: c for c in wf["status"]["conditions"]}["Valid"]
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert expected in valid["message"], valid["message"]
    assert cluster.list("pods", namespace) == []
    wait_for(
        "InvalidSpec warning event",
        lambda: any(
            e["reason"] == "InvalidSpec" and e["type"] == "Warning"
            for e in cluster.events(namespace, "bad")
        ),
        30,
    )


def test_failing_step_is_retried_then_fails_the_workflow(
    cluster: Cluster, namespace: str, operator_process: operator_mod.OperatorProcess
) -> None:
    manifest = {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {"name": "flaky"},
        "spec": {
            "subtasks": [
                {
                    "name": "boom",
                    "maxRetries": 1,
                    "classical": {
                        "image": "busybox",
                        "annotations": {
                            "pod-complete.stage.kwok.x-k8s.io/delay": "500ms",
                            "qorch.io/kwok-exit-code": "3",
                        },
                    },
                },
                {"name": "after", "dependsOn": ["boom"], "classical": {"image": "busybox"}},
            ]
        },
    }
    cluster.apply(json.dumps(manifest), namespace)
    wf = wait_phase(cluster, "flaky", namespace, {"Failed", "Succeeded"})
    assert wf["status"]["phase"] == "Failed"
    st = {s["name"]: s for s in wf["status"]["subtasks"]}
    assert st["boom"]["phase"] == "Failed" and st["boom"]["attempts"] == 2
    assert "exit code 3" in st["boom"]["message"]
    assert st["after"]["phase"] == "Skipped"
    names = sorted(p["metadata"]["name"] for p in cluster.list("pods", namespace))
    assert names == ["flaky-boom-1", "flaky-boom-2"]
    reasons = wait_for(
        "WorkflowFailed event",
        lambda: (
            r
            if "WorkflowFailed" in (r := [e["reason"] for e in cluster.events(namespace, "flaky")])
            else None
        ),
        30,
    )
    assert "AttemptFailed" in reasons


def test_operator_identity_is_least_privilege(
    control_plane: ControlPlane, session_dir: Path, operator_process: operator_mod.OperatorProcess
) -> None:
    """The operator of this module runs as the chart's ServiceAccount (see conftest); it
    can do what the code calls and nothing like reading Secrets or touching nodes."""
    kubeconfig = next(session_dir.glob("sa-test_workflow_lifecycle.yaml"))

    def can(*args: str) -> bool:
        out = control_plane.kubectl(
            "--kubeconfig", str(kubeconfig), "auth", "can-i", *args, check=False
        )
        return out.stdout.strip() == "yes"

    assert can("create", "pods", "-n", "default")
    assert can("patch", "hybridworkflows.qorch.io", "--subresource", "status", "-n", "default")
    assert not can("get", "secrets", "-n", "default")
    assert not can("delete", "nodes")
    assert not can("create", "deployments.apps", "-n", "default")
    assert not can("update", "pods", "-n", "default")
