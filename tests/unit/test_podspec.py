"""Pod manifests and the one narrowing update, without a cluster."""

from __future__ import annotations

from qorch.api.workflow import ClassicalPool, SubtaskSpec, Toleration
from qorch.operator.podspec import GATE, build_pod, pod_state, release_patch
from qorch.orchestrator.snapshot import PodPhase

WORKFLOW = {"metadata": {"name": "wf", "namespace": "ns", "uid": "u-1"}}


def test_circuit_pod_is_gated_non_root_and_owned() -> None:
    sub = SubtaskSpec.model_validate(
        {
            "name": "q",
            "circuit": {"configMapRef": {"name": "circuits", "key": "ghz.qasm"}, "shots": 10},
        }
    )
    pod = build_pod(
        workflow=WORKFLOW, subtask=sub, attempt=2, pod_name="wf-q-2", worker_image="img:1"
    )
    assert pod["spec"]["schedulingGates"] == [{"name": GATE}]
    assert "nodeSelector" not in pod["spec"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert pod["metadata"]["labels"]["qorch.io/attempt"] == "2"
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["QORCH_QASM"]["valueFrom"]["configMapKeyRef"] == {
        "name": "circuits",
        "key": "ghz.qasm",
    }
    assert env["QORCH_SHOTS"]["value"] == "10"


def test_gpu_step_requests_gpus() -> None:
    sub = SubtaskSpec.model_validate(
        {"name": "t", "classical": {"image": "trainer", "resources": {"gpu": 2}}}
    )
    pod = build_pod(
        workflow=WORKFLOW, subtask=sub, attempt=1, pod_name="wf-t-1", worker_image="img"
    )
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["nvidia.com/gpu"] == "2"


def test_release_patch_narrows_adds_tolerations_and_removes_only_our_gate() -> None:
    pod = {
        "spec": {
            "schedulingGates": [{"name": GATE}, {"name": "other.io/quota"}],
            "nodeSelector": {"zone": "a"},
        }
    }
    pool = ClassicalPool(
        name="gpu",
        nodeSelector={"qorch.io/pool": "gpu", "zone": "b"},
        tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists")],
    )
    ops = release_patch(pod, pool)
    assert ops[0] == {
        "op": "test",
        "path": "/spec/schedulingGates",
        "value": pod["spec"]["schedulingGates"],
    }
    selector = next(o for o in ops if o["path"] == "/spec/nodeSelector")["value"]
    assert selector == {"zone": "a", "qorch.io/pool": "gpu"}  # existing keys are never changed
    tolerations = next(o for o in ops if o["path"] == "/spec/tolerations")["value"]
    assert tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert ops[-1] == {
        "op": "replace",
        "path": "/spec/schedulingGates",
        "value": [{"name": "other.io/quota"}],
    }


def test_pod_state_reads_result_and_failure() -> None:
    done = {
        "metadata": {"name": "p", "labels": {"qorch.io/subtask": "a", "qorch.io/attempt": "1"}},
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 0, "message": '{"counts": {"0": 1}}'}}}
            ],
        },
    }
    state = pod_state(done)
    assert state.phase is PodPhase.SUCCEEDED and state.result == {"counts": {"0": 1}}
    failed = {
        **done,
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 2,
                            "reason": "Error",
                            "message": "bad input: QORCH_QASM is empty",
                        }
                    }
                }
            ],
        },
    }
    state = pod_state(failed)
    assert state.phase is PodPhase.FAILED
    assert state.message == "exit code 2, Error: bad input: QORCH_QASM is empty"
    gated = {**done, "spec": {"schedulingGates": [{"name": GATE}]}, "status": {}}
    assert pod_state(gated).phase is PodPhase.GATED
