"""Trust on the real control plane: late ConfigMaps, finalizers only while gateway jobs
exist, deletion while the operator is down, result ConfigMaps that are not Qorch's, and
status writes that somebody else changed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from devenv import gateway as gateway_mod
from devenv.cluster import Cluster, wait_for
from devenv.controlplane import ControlPlane
from qorch.operator.apply import Applier, ResultConflictError
from qorch.operator.objectstate import GATEWAY_JOBS_FINALIZER
from qorch.orchestrator.plan import StoreResult

pytestmark = pytest.mark.controlplane
BELL = (
    'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; '
    "c = measure q;"
)


def workflow(name: str, *subtasks: dict[str, Any], **resources: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "qorch.io/v1alpha1",
            "kind": "HybridWorkflow",
            "metadata": {"name": name},
            "spec": {"subtasks": list(subtasks), "resources": resources},
        }
    )


def slow_step(name: str, delay: str = "60s") -> dict[str, Any]:
    return {
        "name": name,
        "classical": {
            "image": "busybox",
            "annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": delay},
        },
    }


def phase(cluster: Cluster, name: str, namespace: str) -> str | None:
    return ((cluster.get("hwf", name, namespace) or {}).get("status") or {}).get("phase")


def test_a_configmap_applied_after_the_workflow_is_waited_for(
    cluster: Cluster, namespace: str, own_operator: Any, backend: str
) -> None:
    own_operator(QORCH_SOURCE_WAIT_SECONDS="60")
    cluster.apply(
        workflow(
            "late",
            {"name": "q", "circuit": {"configMapRef": {"name": "late-src", "key": "c.qasm"}}},
            quantumBackends=[backend],
        ),
        namespace,
    )

    def waiting() -> bool:
        wf = cluster.get("hwf", "late", namespace) or {}
        conds = {c["type"]: c for c in (wf.get("status") or {}).get("conditions") or []}
        return conds.get("Valid", {}).get("reason") == "WaitingForSource"

    wait_for("Valid=Unknown/WaitingForSource", waiting, 60)
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "late-src"},
        "data": {"c.qasm": BELL},
    }
    cluster.apply(json.dumps(cm), namespace)
    wait_for("Succeeded", lambda: phase(cluster, "late", namespace) == "Succeeded", 60)


def test_no_finalizer_without_gateway_jobs_so_deletion_never_waits_for_the_operator(
    cluster: Cluster, namespace: str, own_operator: Any, control_plane: ControlPlane
) -> None:
    op = own_operator()
    cluster.apply(workflow("classical", slow_step("a")), namespace)
    wait_for("Running", lambda: phase(cluster, "classical", namespace) == "Running", 60)
    wf = cluster.get("hwf", "classical", namespace)
    assert wf is not None
    assert not [f for f in wf["metadata"].get("finalizers") or [] if "qorch" in f], wf["metadata"]
    op.kill()
    started = time.monotonic()
    control_plane.kubectl("delete", "hwf", "classical", "-n", namespace, "--timeout=30s")
    assert cluster.get("hwf", "classical", namespace) is None
    assert time.monotonic() - started < 30


def test_a_queued_gateway_job_holds_the_workflow_until_deletion_cancels_it(
    cluster: Cluster, namespace: str, own_operator: Any, control_plane: ControlPlane, backend: str
) -> None:
    own_operator(QORCH_TEST_SCRIPTED_QUEUE_SECONDS="600")
    cluster.apply(
        workflow("queued", {"name": "q", "circuit": {"qasm": BELL}}, quantumBackends=[backend]),
        namespace,
    )

    def held() -> bool:
        wf = cluster.get("hwf", "queued", namespace) or {}
        return GATEWAY_JOBS_FINALIZER in (wf.get("metadata", {}).get("finalizers") or [])

    wait_for("the gateway-jobs finalizer", held, 60)
    control_plane.kubectl("delete", "hwf", "queued", "-n", namespace, "--timeout=60s")
    assert cluster.get("hwf", "queued", namespace) is None


def test_a_result_configmap_qorch_did_not_create_is_never_touched(
    cluster: Cluster, namespace: str, control_plane: ControlPlane
) -> None:
    api = config.new_client_from_config(str(control_plane.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    theirs = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "wf-big-result"},
        "data": {"precious": "yes"},
    }
    cluster.apply(json.dumps(theirs), namespace)
    cluster.apply(workflow("wf", slow_step("big", "600s")), namespace)
    wf = cluster.get("hwf", "wf", namespace)
    assert wf is not None
    applier = Applier(core, custom, gateway=None, worker_image="unused")  # type: ignore[arg-type]
    action = StoreResult("big", "wf-big-result", {"counts": {"0": 1}})
    with pytest.raises(ResultConflictError, match="does not belong to this workflow"):
        asyncio.run(applier._store_result(wf, action))
    after = cluster.get("configmap", "wf-big-result", namespace)
    assert after is not None
    assert after["data"] == {"precious": "yes"}
    assert not after["metadata"].get("ownerReferences")
    # Its own ConfigMap, on a replayed plan, is replaced as before.
    own = StoreResult("big", "wf-big-result-2", {"counts": {"0": 1}})
    asyncio.run(applier._store_result(wf, own))
    asyncio.run(applier._store_result(wf, own))
    stored = cluster.get("configmap", "wf-big-result-2", namespace)
    assert stored is not None and json.loads(stored["data"]["result.json"]) == own.result


def test_finished_gateway_jobs_are_seen_long_before_the_resync(
    cluster: Cluster, namespace: str, own_operator: Any, backend: str
) -> None:
    # Three circuits in a chain, each 0.2 s queued + 0.2 s running, under a 30 s resync.
    own_operator(
        QORCH_RESYNC_SECONDS="30",
        QORCH_TEST_SCRIPTED_QUEUE_SECONDS="0.2",
        QORCH_TEST_SCRIPTED_RUN_SECONDS="0.2",
    )
    chain = [
        {"name": f"c{i}", "dependsOn": [f"c{i - 1}"] if i else [], "circuit": {"qasm": BELL}}
        for i in range(3)
    ]
    started = time.monotonic()
    cluster.apply(workflow("chain", *chain, quantumBackends=[backend]), namespace)
    wait_for("Succeeded", lambda: phase(cluster, "chain", namespace) == "Succeeded", 60, 0.1)
    assert time.monotonic() - started < 15, "each stage waited for a resync"


def test_a_replacement_operator_takes_over_at_once_not_after_the_lease(
    cluster: Cluster, namespace: str, own_operator: Any
) -> None:
    # A long lease: the replacement must not wait for the killed replica's to expire.
    first = own_operator(QORCH_PEERING_LIFETIME_SECONDS="120")
    cluster.apply(workflow("takeover", slow_step("a", "2s"), slow_step("b", "1s")), namespace)
    wait_for("Running", lambda: phase(cluster, "takeover", namespace) == "Running", 60)
    first.kill()
    cluster.json_patch(
        "hwf",
        "takeover",
        namespace,
        [{"op": "add", "path": "/metadata/labels", "value": {"poke": "1"}}],
    )
    restarted = time.monotonic()
    own_operator(QORCH_PEERING_LIFETIME_SECONDS="120")
    wait_for("Succeeded", lambda: phase(cluster, "takeover", namespace) == "Succeeded", 90)
    assert time.monotonic() - restarted < 30


def test_a_stale_status_write_is_repaired(
    cluster: Cluster, namespace: str, own_operator: Any, control_plane: ControlPlane
) -> None:
    """Another writer (a replica that lost the lead, a hand edit) puts back an old status:
    the operator plans from what is stored, not from its memory, and repairs it without
    starting anything twice."""
    own_operator(QORCH_RESYNC_SECONDS="3")
    cluster.apply(workflow("stale", slow_step("a", "25s")), namespace)

    def running() -> dict[str, Any] | None:
        wf = cluster.get("hwf", "stale", namespace) or {}
        subs = (wf.get("status") or {}).get("subtasks") or []
        return wf if subs and subs[0]["phase"] == "Running" else None

    wf = wait_for("subtask a Running", running, 60)
    old = {"phase": "Pending", "subtasks": [{"name": "a", "phase": "Pending", "attempts": 0}]}
    control_plane.kubectl(
        "patch",
        "hwf",
        "stale",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": old}),
    )
    # Repaired while the step still runs (not merely overwritten when it finishes).
    repaired = wait_for("the stored status repaired", running, 15)
    assert repaired["status"]["phase"] == "Running"
    pod = cluster.get("pod", "stale-a-1", namespace)
    assert pod is not None and pod["status"]["phase"] == "Running"
    wait_for("Succeeded", lambda: phase(cluster, "stale", namespace) == "Succeeded", 60)
    final = cluster.get("hwf", "stale", namespace)
    assert final is not None
    assert final["status"]["subtasks"][0]["attempts"] == 1, final["status"]
    pods = cluster.list("pods", namespace)
    assert [p["metadata"]["name"] for p in pods] == ["stale-a-1"], pods
    assert wf["status"]["subtasks"][0]["podName"] == "stale-a-1"


def test_a_gateway_that_dies_is_waited_for_a_bounded_time_then_its_job_placed_elsewhere(
    cluster: Cluster,
    namespace: str,
    own_operator: Any,
    session_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Two real Aer gateways; the one the rule prefers (name order at equal queues) dies
    before the workflow arrives. Its job is unknown, not lost and not fine: after the
    bound (15 s in the harness) it is given up and the subtask runs on the other one."""
    logs = session_dir / request.node.name
    logs.mkdir(exist_ok=True)
    suffix = namespace[:40].rstrip("-")
    names = [f"a-{suffix}", f"b-{suffix}"]
    doomed = gateway_mod.start(logs / "gw-a.log", "--provider", "aer", "--backend", "aer_a")
    survivor = gateway_mod.start(logs / "gw-b.log", "--provider", "aer", "--backend", "aer_b")
    try:
        for name, gw, served in ((names[0], doomed, "aer_a"), (names[1], survivor, "aer_b")):
            qb = {
                "apiVersion": "qorch.io/v1alpha1",
                "kind": "QuantumBackend",
                "metadata": {"name": name},
                "spec": {
                    "provider": "aer",
                    "backendName": served,
                    "numQubits": 4,
                    "gateway": {"url": gw.url},
                },
            }
            cluster.apply(json.dumps(qb))
        own_operator(gateway="http")
        doomed.process.kill()
        doomed.process.wait(10)
        cluster.apply(
            workflow("dies", {"name": "q", "circuit": {"qasm": BELL}}, quantumBackends=names),
            namespace,
        )
        wf = wait_for(
            "Succeeded",
            lambda: (
                (w := cluster.get("hwf", "dies", namespace))
                and (w.get("status") or {}).get("phase") == "Succeeded"
                and w
            ),
            120,
        )
        st = wf["status"]["subtasks"][0]
        assert st["placement"]["name"] == names[1], st
        assert st["failures"] == 0 and st["attempts"] >= 2, st
        assert st["result"]["counts"], st
        reasons = {e["reason"] for e in cluster.events(namespace, "dies")}
        assert {"GatewayUnreachable", "JobAbandoned"} <= reasons, reasons
    finally:
        survivor.stop()
        doomed.stop()
        for name in names:
            cluster.plane.kubectl("delete", "qb", name, "--wait=false", check=False)


def test_a_gated_pod_released_before_the_watch_shows_it_is_released_without_a_read(
    cluster: Cluster, namespace: str, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that comes before the watch shows the gated pod is computed from what the
    create returned, not from a GET (one request a pod placed, ``bench/scale.py``). The
    real apiserver takes the patch, and the pod is bound."""
    from qorch.api.workflow import SubtaskSpec, default_pools
    from qorch.operator import kubeio
    from qorch.operator.podspec import build_pod

    api = config.new_client_from_config(str(control_plane.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    applier = Applier(core, custom, gateway=None, worker_image="busybox")  # type: ignore[arg-type]
    cpu = default_pools()[0]
    step = SubtaskSpec.model_validate({"name": "s", "classical": {"image": "busybox"}})
    owner = {"metadata": {"name": "wf", "namespace": namespace, "uid": "u-1"}}
    manifest = build_pod(
        workflow=owner, subtask=step, attempt=1, pod_name="wf-s-1", worker_image="busybox", pool=cpu
    )
    manifest["metadata"].pop("ownerReferences", None)  # its owner does not exist here
    reads: list[str] = []
    real_read = kubeio.read_pod
    monkeypatch.setattr(kubeio, "read_pod", lambda *a: reads.append(a[1]) or real_read(*a))
    asyncio.run(applier._create_pod(namespace, manifest))
    asyncio.run(applier._release_pod(namespace, "wf-s-1", cpu))
    assert reads == []
    pod = cluster.get("pod", "wf-s-1", namespace)
    assert pod is not None and not pod["spec"].get("schedulingGates")
    assert pod["spec"]["nodeSelector"] == dict(cpu.nodeSelector)
    wait_for(
        "bound",
        lambda: (cluster.get("pod", "wf-s-1", namespace) or {}).get("spec", {}).get("nodeName"),
        60,
    )


def test_a_pod_created_and_released_in_one_plan_is_created_released(
    cluster: Cluster, namespace: str, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan that creates a pod and releases it at once costs ONE write: the pod is
    created as the release would leave it (pool selector, pool marks, no gate), and the
    real apiserver binds it. A pod that exists already (a replayed plan, still gated) is
    released instead."""
    import logging

    from qorch.api.workflow import HybridWorkflowSpec, HybridWorkflowStatus
    from qorch.operator import apply as apply_mod
    from qorch.operator import kubeio
    from qorch.operator.podspec import GATE, POOL_ANNOTATION
    from qorch.orchestrator.plan import CreatePod, Plan, ReleasePod

    api = config.new_client_from_config(str(control_plane.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    applier = Applier(core, custom, gateway=None, worker_image="busybox")  # type: ignore[arg-type]
    real_build = apply_mod.build_pod

    def build_unowned(**kwargs: Any) -> dict[str, Any]:
        manifest = real_build(**kwargs)
        manifest["metadata"].pop("ownerReferences", None)  # its owner does not exist here
        return manifest

    monkeypatch.setattr(apply_mod, "build_pod", build_unowned)
    spec = HybridWorkflowSpec.model_validate(
        {"subtasks": [{"name": n, "classical": {"image": "busybox"}} for n in ("s", "t")]}
    )
    body = {"metadata": {"name": "wf", "namespace": namespace, "uid": "u-2"}, "spec": {}}
    launch = {
        n: (
            CreatePod(subtask=n, attempt=1, pod_name=f"wf-{n}-1", pool="cpu"),
            ReleasePod(f"wf-{n}-1", "cpu"),
        )
        for n in ("s", "t")
    }
    # wf-t-1 exists already, gated, as a lost status write would leave it.
    asyncio.run(
        applier.act(
            body, spec, Plan(HybridWorkflowStatus(), (launch["t"][0],)), {}, logging.getLogger()
        )
    )
    assert GATE in [
        g["name"] for g in cluster.get("pod", "wf-t-1", namespace)["spec"]["schedulingGates"]
    ]
    writes: list[tuple[str, str]] = []
    for fn, name_at in (("create_pod", None), ("patch_pod", 1), ("read_pod", 1)):
        real = getattr(kubeio, fn)

        def counted(*args: Any, _real: Any = real, _fn: str = fn, _at: int | None = name_at) -> Any:
            name = args[_at] if _at is not None else args[2]["metadata"]["name"]
            writes.append((_fn, name))
            return _real(*args)

        monkeypatch.setattr(kubeio, fn, counted)
    plan = Plan(HybridWorkflowStatus(), (*launch["s"], *launch["t"]))
    events = asyncio.run(applier.act(body, spec, plan, {}, logging.getLogger()))
    assert [e for e in events if e.warning] == []
    assert sorted(writes) == [
        ("create_pod", "wf-s-1"),
        ("create_pod", "wf-t-1"),
        ("patch_pod", "wf-t-1"),
    ]
    for pod_name in ("wf-s-1", "wf-t-1"):
        pod = cluster.get("pod", pod_name, namespace)
        assert pod is not None and not pod["spec"].get("schedulingGates"), pod
        assert pod["spec"]["nodeSelector"] == dict(spec.resources.classicalPools[0].nodeSelector)
        assert pod["metadata"]["annotations"][POOL_ANNOTATION] == "cpu"
        wait_for(
            f"{pod_name} bound",
            lambda n=pod_name: (
                (cluster.get("pod", n, namespace) or {}).get("spec", {}).get("nodeName")
            ),
            60,
        )
