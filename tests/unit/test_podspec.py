"""Pod manifests and the one narrowing update, without a cluster."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from qorch.api.workflow import (
    ClassicalPool,
    Placement,
    ResourceKind,
    SubtaskSpec,
    Toleration,
    default_pools,
)
from qorch.operator.pod_cache import PodCache
from qorch.operator.podspec import (
    ANNOTATION_WORKFLOW_NAME,
    GATE,
    INPUTS_DIR,
    LABEL_VALUE,
    LABEL_WORKFLOW,
    POOL_ANNOTATION,
    POOL_MOVES_ANNOTATION,
    ROUTE_ANNOTATION,
    ROUTE_DIR,
    build_pod,
    pod_state,
    release_patch,
    released,
    workflow_label,
)
from qorch.orchestrator.cluster import PodRequest, pod_request, quantity
from qorch.orchestrator.plan import DependencyResult
from qorch.orchestrator.simulation import (
    GIB,
    MPS_STATE_BYTES,
    STATEVECTOR_MAX_QUBITS,
    WORKER_OVERHEAD_BYTES,
)
from qorch.orchestrator.snapshot import PodPhase
from qorch.worker.main import choose_method

WORKFLOW = {"metadata": {"name": "wf", "namespace": "ns", "uid": "u-1"}}
CPU, GPU = default_pools()
CIRCUIT = SubtaskSpec.model_validate(
    {"name": "q", "circuit": {"qasm": "OPENQASM 3.0; qubit[1] q;", "shots": 10}}
)


def circuit_pod(num_qubits: int | None, pool: ClassicalPool = CPU, **kw: Any) -> dict[str, Any]:
    return build_pod(
        workflow=kw.pop("workflow", WORKFLOW),
        subtask=kw.pop("subtask", CIRCUIT),
        attempt=1,
        pod_name="wf-q-1",
        worker_image="img",
        pool=pool,
        num_qubits=num_qubits,
    )


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def memory_bytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) << 20


def test_circuit_pod_is_gated_non_root_and_owned() -> None:
    sub = SubtaskSpec.model_validate(
        {
            "name": "q",
            "circuit": {"configMapRef": {"name": "circuits", "key": "ghz.qasm"}, "shots": 10},
        }
    )
    pod = build_pod(
        workflow=WORKFLOW, subtask=sub, attempt=2, pod_name="wf-q-2", worker_image="img:1", pool=CPU
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
    for pool in (CPU, GPU):  # a classical step keeps its own count, whatever the pool
        pod = build_pod(
            workflow=WORKFLOW,
            subtask=sub,
            attempt=1,
            pod_name="wf-t-1",
            worker_image="img",
            pool=pool,
        )
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == "2"
        assert resources["limits"]["nvidia.com/gpu"] == "2"
        assert "QORCH_DEVICE" not in env_of(pod)
    cpu_only = SubtaskSpec.model_validate({"name": "t", "classical": {"image": "trainer"}})
    pod = build_pod(
        workflow=WORKFLOW, subtask=cpu_only, attempt=1, pod_name="p", worker_image="i", pool=GPU
    )
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["requests"]


@pytest.mark.parametrize(
    ("qubits", "method", "state_bytes"),
    [
        (4, "statevector", 16 << 4),
        (27, "statevector", 2 * GIB),  # OOM-killed at the old fixed 2Gi
        (28, "statevector", 4 * GIB),
        (29, "matrix_product_state", MPS_STATE_BYTES),
        (60, "matrix_product_state", MPS_STATE_BYTES),
    ],
)
def test_circuit_pod_memory_fits_the_method_the_worker_will_use(
    qubits: int, method: str, state_bytes: int
) -> None:
    pod = circuit_pod(qubits)
    resources = pod["spec"]["containers"][0]["resources"]
    requested = memory_bytes(resources["requests"]["memory"])
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert (
        state_bytes + WORKER_OVERHEAD_BYTES
        <= requested
        < state_bytes + WORKER_OVERHEAD_BYTES + (1 << 20)
    )
    env = env_of(pod)
    assert env["QORCH_METHOD"] == method == choose_method(qubits, "auto")
    assert env["QORCH_DEVICE"] == "CPU"


def test_circuit_pod_of_unknown_width_gets_the_most_either_method_takes() -> None:
    pod = circuit_pod(None)
    requested = memory_bytes(pod["spec"]["containers"][0]["resources"]["requests"]["memory"])
    widest = max(16 << STATEVECTOR_MAX_QUBITS, MPS_STATE_BYTES)
    assert requested >= widest + WORKER_OVERHEAD_BYTES
    assert env_of(pod)["QORCH_METHOD"] == "auto"


def test_the_threshold_is_the_workers() -> None:
    for n in range(1, 45):
        assert env_of(circuit_pod(n))["QORCH_METHOD"] == choose_method(n, "auto")


def test_circuit_on_a_gpu_pool_requests_one_gpu() -> None:
    pod = circuit_pod(20, GPU)
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(pod)["QORCH_DEVICE"] == "auto"  # the GPU when the image's Aer sees one
    # Unknown width: the GPU is there, the worker takes it if it picks statevector.
    unknown = circuit_pod(None, GPU)
    assert unknown["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(unknown)["QORCH_DEVICE"] == "auto"
    # Aer has no GPU matrix_product_state: no GPU held idle, and the worker runs on the CPU.
    wide = circuit_pod(40, GPU)
    assert "nvidia.com/gpu" not in wide["spec"]["containers"][0]["resources"]["requests"]
    assert env_of(wide)["QORCH_DEVICE"] == "CPU"
    on_cpu = circuit_pod(20, CPU)
    assert "nvidia.com/gpu" not in on_cpu["spec"]["containers"][0]["resources"]["limits"]
    assert env_of(on_cpu)["QORCH_DEVICE"] == "CPU"


def test_circuit_pod_serves_metrics_and_asks_to_be_scraped() -> None:
    pod = circuit_pod(5)
    container = pod["spec"]["containers"][0]
    port = int(env_of(pod)["QORCH_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)


def test_workflow_label_keeps_short_names_and_hashes_long_ones() -> None:
    assert workflow_label("wf") == "wf"
    assert workflow_label("a" * 63) == "a" * 63
    long_a, long_b = "x" * 199 + "a", "x" * 199 + "b"  # same 63-character prefix
    for name in (long_a, long_b, "a" * 64, "a." * 100 + "z", "a-" * 100 + "z"):
        label = workflow_label(name)
        assert len(label) <= 63 and LABEL_VALUE.match(label), label
        assert workflow_label(name) == label  # stable across calls and restarts
    assert workflow_label(long_a) != workflow_label(long_b)
    assert workflow_label(long_a).startswith("x" * 40)


def test_a_200_character_workflow_name_gives_a_valid_pod() -> None:
    name = "w" * 100 + "-" + "x" * 99
    workflow = {"metadata": {"name": name, "namespace": "ns", "uid": "u-1"}}
    classical = SubtaskSpec.model_validate({"name": "c", "classical": {"image": "busybox"}})
    for sub in (CIRCUIT, classical):
        pod = circuit_pod(3, workflow=workflow, subtask=sub)
        labels = pod["metadata"]["labels"]
        for value in labels.values():
            assert len(value) <= 63 and LABEL_VALUE.match(value), value
        assert labels[LABEL_WORKFLOW] == workflow_label(name)
        assert pod["metadata"]["annotations"][ANNOTATION_WORKFLOW_NAME] == name
        env = env_of(pod)
        assert env["QORCH_WORKFLOW"] == name


def test_the_pod_cache_and_wake_up_find_a_long_named_workflow() -> None:
    name = "n" * 200
    pod = circuit_pod(3, workflow={"metadata": {"name": name, "namespace": "ns", "uid": "u"}})
    woken: list[tuple[str, str]] = []
    cache = PodCache(None, lambda ns, wf: woken.append((ns, wf)))  # type: ignore[arg-type]
    cache.apply("ADDED", pod)
    # drive_workflow looks its pods up under (namespace, workflow_label(name)).
    assert [p.name for p in cache.workflow_pods("ns", workflow_label(name))] == ["wf-q-1"]
    # A pod from before the annotation: its label is the (short) name.
    old = copy.deepcopy(pod)
    old["metadata"].update(
        name="old-q-1", labels={**old["metadata"]["labels"], LABEL_WORKFLOW: "old"}
    )
    del old["metadata"]["annotations"][ANNOTATION_WORKFLOW_NAME]
    cache.apply("ADDED", old)
    assert woken == [("ns", name), ("ns", "old")]


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
    gates = next(o for o in ops if o["op"] == "replace")
    assert gates == {
        "op": "replace",
        "path": "/spec/schedulingGates",
        "value": [{"name": "other.io/quota"}],
    }
    # The pool it goes to and the move count, in the same patch (a restart reads them
    # back): the annotations map is created, or keys added to it (others left alone).
    marks = {POOL_ANNOTATION: "gpu", POOL_MOVES_ANNOTATION: "0"}
    assert ops[-1] == {"op": "add", "path": "/metadata/annotations", "value": marks}
    pod["metadata"] = {"annotations": {"qorch.io/route": "{}"}}
    added = release_patch(pod, pool, moves=2)[-2:]
    assert added == [
        {"op": "add", "path": "/metadata/annotations/qorch.io~1pool", "value": "gpu"},
        {"op": "add", "path": "/metadata/annotations/qorch.io~1pool-moves", "value": "2"},
    ]
    meta = {"name": "p", "annotations": {POOL_ANNOTATION: "gpu", POOL_MOVES_ANNOTATION: "2"}}
    released = pod_state({"metadata": meta, "spec": {}, "status": {}})
    assert released.pool == "gpu" and released.pool_moves == 2
    gated = {"metadata": meta, "spec": {"schedulingGates": [{"name": GATE}]}, "status": {}}
    assert pod_state(gated).pool is None  # not released (yet): not on any pool


@pytest.mark.parametrize("annotated", [False, True])
def test_a_pod_created_released_is_the_pod_the_release_patch_leaves(annotated: bool) -> None:
    """The applier creates a pod released when the same plan releases it (one write, not
    two): what it creates must be exactly what the release patch would have left."""
    import jsonpatch

    manifest: dict[str, Any] = {
        "metadata": {"name": "p", **({"annotations": {"x.io/a": "1"}} if annotated else {})},
        "spec": {
            "schedulingGates": [{"name": GATE}, {"name": "other.io/quota"}],
            "nodeSelector": {"zone": "a"},
            "containers": [{"name": "main", "image": "busybox"}],
        },
    }
    pool = ClassicalPool(
        name="gpu",
        nodeSelector={"qorch.io/pool": "gpu", "zone": "b"},
        tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists")],
    )
    before = copy.deepcopy(manifest)
    for moves in (0, 3):
        patched = jsonpatch.apply_patch(manifest, release_patch(manifest, pool, moves))
        assert released(manifest, pool, moves) == patched
    assert manifest == before  # the manifest given is left as it was
    only_ours = copy.deepcopy(manifest)
    only_ours["spec"]["schedulingGates"] = [{"name": GATE}]
    out = released(only_ours, default_pools()[0])
    assert "schedulingGates" not in out["spec"]  # no empty list: nothing gates it


def test_pod_state_reads_the_route_and_its_move_count_back() -> None:
    def state(route: str) -> Any:
        meta = {"name": "p", "annotations": {ROUTE_ANNOTATION: route}}
        return pod_state({"metadata": meta, "spec": {}, "status": {}})

    pod = state('{"backendName":"b","kind":"backend","moves":3,"name":"qa","url":"http://g"}')
    assert pod.variational and pod.route_moves == 3
    assert pod.route == Placement(kind=ResourceKind.BACKEND, name="qa")
    for bad in ("", "not json", '{"kind":"moon","name":"x"}', '["pool"]'):
        assert (state(bad).route, state(bad).route_moves) == (None, 0), bad
    assert state('{"kind":"pool","name":"cpu","moves":-1}').route_moves == 0


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


def test_pod_state_takes_the_usage_apart_from_the_result() -> None:
    usage = {
        "wallSeconds": 1.5,
        "cpuSeconds": 3,
        "peakMemoryBytes": 200_000_000,
        "method": "statevector",
        "device": "CPU",
        "bogus": True,
        "nested": {"x": 1},
        "long": "z" * 100,
    }
    message = json.dumps({"counts": {"0": 1}, "usage": usage})
    done: dict[str, Any] = {
        "metadata": {"name": "p", "labels": {"qorch.io/subtask": "a", "qorch.io/attempt": "1"}},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message}}}],
        },
    }
    state = pod_state(done)
    assert state.result == {"counts": {"0": 1}}
    assert state.usage == {
        "wallSeconds": 1.5,
        "cpuSeconds": 3.0,
        "peakMemoryBytes": 200_000_000.0,
        "method": "statevector",
        "device": "CPU",
    }
    plain = {
        **done,
        "status": {
            **done["status"],
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 0, "message": '{"counts": {"0": 1}}'}}}
            ],
        },
    }
    assert pod_state(plain).usage is None


def test_a_variational_pod_reads_its_route_and_inputs_from_volumes() -> None:
    sub = SubtaskSpec.model_validate(
        {
            "name": "vqe",
            "dependsOn": ["prep", "big"],
            "variational": {
                "qasm": "OPENQASM 3.0; input float[64] t; qubit[2] q; ry(t) q[0];",
                "hamiltonian": [{"pauli": "ZZ", "coefficient": -1.0}],
                "optimizer": "SPSA",
                "resources": {"cpu": "250m", "memory": "256Mi"},
            },
        }
    )
    route = '{"kind":"pool","name":"cpu"}'
    inputs = (DependencyResult("prep", result={"theta": 0.5}),
              DependencyResult("big", config_map="wf-big-result"))  # fmt: skip
    pod = build_pod(workflow=WORKFLOW, subtask=sub, attempt=2, pod_name="wf-vqe-2",
                    worker_image="img", pool=CPU, num_qubits=2, route=route,
                    job_prefix="ns.wf.vqe.2", inputs=inputs,
                    inputs_config_map="wf-vqe-2-inputs")  # fmt: skip
    env = env_of(pod)
    assert json.loads(env["QORCH_VARIATIONAL"])["optimizer"] == "SPSA"
    assert env["QORCH_JOB_PREFIX"] == "ns.wf.vqe.2"
    assert pod["metadata"]["annotations"][ROUTE_ANNOTATION] == route
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    field = volumes["route"]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert field == f"metadata.annotations['{ROUTE_ANNOTATION}']"
    assert env["QORCH_ROUTE_FILE"].startswith(ROUTE_DIR + "/")
    token = volumes["gateway-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "qorch-gateway"
    sources = volumes["inputs"]["projected"]["sources"]
    assert sources == [
        {"configMap": {"name": "wf-vqe-2-inputs",
                       "items": [{"key": "prep.json", "path": "prep.json"}]}},
        {"configMap": {"name": "wf-big-result",
                       "items": [{"key": "result.json", "path": "big.json"}]}},
    ]  # fmt: skip
    assert env["QORCH_INPUTS_DIR"] == INPUTS_DIR
    container = pod["spec"]["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all(mounts[n]["readOnly"] for n in ("route", "gateway-token", "inputs"))
    # Its own requests, at least what simulating its batches in the pod needs.
    assert container["resources"]["requests"]["cpu"] == "250m"
    assert memory_bytes(container["resources"]["requests"]["memory"]) >= 256 << 20
    assert pod["spec"]["automountServiceAccountToken"] is False  # no apiserver token


def test_a_variational_pod_is_sized_for_what_may_run_in_it_and_gets_its_gpus() -> None:
    def requests(qubits: int, pool: ClassicalPool, **resources: Any) -> dict[str, str]:
        sub = SubtaskSpec.model_validate(
            {"name": "vqe", "variational": {
                "qasm": "OPENQASM 3.0; input float[64] t; qubit[2] q; ry(t) q[0];",
                "hamiltonian": [{"pauli": "ZZ", "coefficient": 1.0}],
                "resources": {"memory": "256Mi", **resources}}}
        )  # fmt: skip
        pod = build_pod(workflow=WORKFLOW, subtask=sub, attempt=1, pod_name="p",
                        worker_image="img", pool=pool, num_qubits=qubits)  # fmt: skip
        reqs: dict[str, str] = pod["spec"]["containers"][0]["resources"]["requests"]
        assert pod_request(sub, pool, qubits) == PodRequest(
            quantity(reqs["cpu"]), quantity(reqs["memory"]), float(reqs.get("nvidia.com/gpu", 0))
        )  # the cluster pass charges what the pod requests
        return reqs

    # 26 qubits may be simulated on a 28-qubit pool: room for the state (1 GiB).
    assert memory_bytes(requests(26, CPU)["memory"]) > 1 << 30
    # 40 qubits never are (its batches only go to backends): its own request only.
    assert memory_bytes(requests(40, CPU)["memory"]) == 256 << 20
    gpu_pool = ClassicalPool(name="gpu", gpu=True, maxQubits=30)
    assert requests(2, gpu_pool, gpu=1)["nvidia.com/gpu"] == "1"
