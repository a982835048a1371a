"""The cluster-wide decision pass in a running operator (QORCH_CLUSTER_PASS=on): twenty
workflows applied at once are placed by one pass that sees them all, so they spread over
the backends instead of all taking the shortest queue (which the static rule does)."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devenv.cluster import Cluster, wait_for
from devenv.nodes import NodeSpec, node_manifest
from tests.e2e.conftest import scripted_backend
from tests.e2e.test_trust import BELL, phase, slow_step, workflow

pytestmark = pytest.mark.controlplane
WORKFLOWS = 20


@pytest.fixture
def three_backends(cluster: Cluster, namespace: str) -> Iterator[list[str]]:
    names = [f"qb{i}-{namespace}"[:63].rstrip("-") for i in range(3)]
    for name in names:
        cluster.apply(json.dumps(scripted_backend(name)))
    yield names
    for name in names:
        cluster.plane.kubectl("delete", "qb", name, "--wait=false", check=False)


def placed_on(cluster: Cluster, namespace: str, workflow_name: str, backend: str) -> list[str]:
    """The subtasks of a workflow whose current attempt is on ``backend``."""
    wf = cluster.get("hwf", workflow_name, namespace) or {}
    return [
        s["name"]
        for s in (wf.get("status") or {}).get("subtasks") or []
        if (s.get("placement") or {}).get("name") == backend
    ]


def placements(cluster: Cluster, namespace: str) -> collections.Counter[str]:
    where: collections.Counter[str] = collections.Counter()
    for i in range(WORKFLOWS):
        wf = cluster.get("hwf", f"burst-{i}", namespace) or {}
        for st in (wf.get("status") or {}).get("subtasks") or []:
            if st.get("placement"):
                where[st["placement"]["name"]] += 1
    return where


def test_twenty_workflows_at_once_spread_over_the_backends(
    cluster: Cluster, namespace: str, own_operator: Any, three_backends: list[str]
) -> None:
    # Scripted gateway jobs take long enough that the queues matter.
    own_operator(QORCH_CLUSTER_PASS="on", QORCH_TEST_SCRIPTED_QUEUE_SECONDS="1",
                 QORCH_TEST_SCRIPTED_RUN_SECONDS="3")  # fmt: skip
    manifests = [
        json.loads(
            workflow(
                f"burst-{i}",
                {"name": "q", "circuit": {"qasm": BELL, "shots": 1000}},
                quantumBackends=three_backends,
                classicalPools=[],
            )
        )
        for i in range(WORKFLOWS)
    ]
    cluster.apply("\n---\n".join(json.dumps(m) for m in manifests), namespace)
    wait_for(
        "all placed",
        lambda: sum(placements(cluster, namespace).values()) == WORKFLOWS,
        120,
    )
    where = placements(cluster, namespace)
    assert len(where) == 3, where  # every backend took some
    assert max(where.values()) <= 10, where  # none took most of them
    wait_for(
        "all succeeded",
        lambda: all(
            phase(cluster, f"burst-{i}", namespace) == "Succeeded" for i in range(WORKFLOWS)
        ),
        180,
    )


def test_a_stationary_run_makes_no_moves(
    cluster: Cluster, namespace: str, own_operator: Any, three_backends: list[str]
) -> None:
    own_operator(QORCH_CLUSTER_PASS="on", QORCH_TEST_SCRIPTED_QUEUE_SECONDS="2",
                 QORCH_TEST_SCRIPTED_RUN_SECONDS="1")  # fmt: skip
    subtasks = [{"name": f"c{i}", "circuit": {"qasm": BELL, "shots": 500}} for i in range(6)]
    subtasks.append({"name": "last", "dependsOn": [f"c{i}" for i in range(6)],
                     "circuit": {"qasm": BELL}})  # fmt: skip
    cluster.apply(
        workflow("steady", *subtasks, quantumBackends=three_backends, classicalPools=[]),
        namespace,
    )
    wait_for("steady succeeded", lambda: phase(cluster, "steady", namespace) == "Succeeded", 120)
    wf = cluster.get("hwf", "steady", namespace)
    assert wf is not None and wf["status"]["moves"] == 0, wf["status"]
    reasons = {e["reason"] for e in cluster.events(namespace, "steady")}
    assert not reasons & {"Moving", "Moved", "MoveAbandoned"}, reasons
    # The pass did decide: the six parallel circuits did not all queue on one backend.
    used = {s["placement"]["name"] for s in wf["status"]["subtasks"]}
    assert len(used) >= 2, used


def test_a_queue_spike_moves_queued_jobs_away_with_the_numbers_in_events(
    cluster: Cluster, namespace: str, own_operator: Any, three_backends: list[str]
) -> None:
    # Jobs wait 25 s in the (scripted) gateways' queues: long enough to be moved.
    own_operator(QORCH_CLUSTER_PASS="on", QORCH_TEST_SCRIPTED_QUEUE_SECONDS="25",
                 QORCH_TEST_SCRIPTED_RUN_SECONDS="1")  # fmt: skip
    subtasks = [{"name": f"c{i}", "circuit": {"qasm": BELL, "shots": 500}} for i in range(6)]
    cluster.apply(
        workflow("spike", *subtasks, quantumBackends=three_backends, classicalPools=[]),
        namespace,
    )

    def on(backend: str) -> list[str]:
        return placed_on(cluster, namespace, "spike", backend)

    busy = three_backends[0]
    wait_for(f"jobs queued on {busy}", lambda: on(busy), 60)
    # Other clients fill that backend's queue: 500 jobs ahead of ours.
    cluster.plane.kubectl(
        "patch", "qb", busy, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"queueLength": 500}}),
    )  # fmt: skip
    wait_for(f"every job moved off {busy}", lambda: not on(busy), 60)
    wait_for("spike succeeded", lambda: phase(cluster, "spike", namespace) == "Succeeded", 120)
    wf = cluster.get("hwf", "spike", namespace)
    assert wf is not None
    status = wf["status"]
    assert status["moves"] >= 1
    assert all(s["failures"] == 0 for s in status["subtasks"])  # a move is not a failure
    moved = [e for e in cluster.events(namespace, "spike") if e["reason"] == "Moved"]
    assert moved, [e["reason"] for e in cluster.events(namespace, "spike")]
    assert any(
        f"from {busy}" in e["message"] and "price of moving" in e["message"] for e in moved
    ), [e["message"] for e in moved]


GOOD = {
    "medianTwoQubitError": 0.007,
    "medianSingleQubitError": 0.0003,
    "medianReadoutError": 0.015,
    "medianT1Seconds": 0.00015,
    "medianT2Seconds": 0.0001,
    "updatedAt": "2026-11-26T00:00:00Z",
}
BAD = {
    **GOOD,
    "medianTwoQubitError": 0.2,
    "medianReadoutError": 0.3,
    "updatedAt": "2026-11-26T06:00:00Z",
}


def test_a_degraded_calibration_moves_queued_jobs_when_accuracy_matters(
    cluster: Cluster, namespace: str, own_operator: Any
) -> None:
    # Two noisy (fake) devices with the same good calibration; jobs wait 25 s in the queues.
    names = [f"dev{i}-{namespace}"[:63].rstrip("-") for i in range(2)]
    for name in names:
        manifest = scripted_backend(name, provider="fake", backendName="fake_manila", numQubits=5)
        cluster.apply(json.dumps(manifest))
        cluster.plane.kubectl(
            "patch", "qb", name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"calibration": GOOD}}),
        )  # fmt: skip
    try:
        own_operator(QORCH_CLUSTER_PASS="on", QORCH_TEST_SCRIPTED_QUEUE_SECONDS="25",
                     QORCH_TEST_SCRIPTED_RUN_SECONDS="1")  # fmt: skip
        subtasks = [{"name": f"c{i}", "circuit": {"qasm": BELL, "shots": 500}} for i in range(4)]
        manifest = json.loads(
            workflow("drift", *subtasks, quantumBackends=names, classicalPools=[])
        )
        manifest["spec"]["objective"] = {"preset": "accuracy"}
        cluster.apply(json.dumps(manifest), namespace)

        def on(backend: str) -> list[str]:
            return placed_on(cluster, namespace, "drift", backend)

        worse = names[0]
        wait_for(f"jobs queued on {worse}", lambda: on(worse), 60)
        # The device's next calibration is far worse (a drift day of the same device).
        cluster.plane.kubectl(
            "patch", "qb", worse, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"calibration": BAD}}),
        )  # fmt: skip
        wait_for(f"every job moved off {worse}", lambda: not on(worse), 60)
        wait_for("drift succeeded", lambda: phase(cluster, "drift", namespace) == "Succeeded", 120)
        wf = cluster.get("hwf", "drift", namespace)
        assert wf is not None and wf["status"]["moves"] >= 1
        moved = [e["message"] for e in cluster.events(namespace, "drift") if e["reason"] == "Moved"]
        assert moved and all(f"from {worse}" in m for m in moved), moved
        fidelity = {s["name"]: s["predicted"]["fidelity"] for s in wf["status"]["subtasks"]}
        assert all(f > 0.5 for f in fidelity.values()), fidelity  # placed on the good device
    finally:
        for name in names:
            cluster.plane.kubectl("delete", "qb", name, "--wait=false", check=False)


def wide_circuit(qubits: int, layers: int) -> str:
    """A circuit whose statevector simulation takes minutes (the predictor says so)."""
    layer = " ".join(f"h q[{i}];" for i in range(qubits))
    layer += " ".join(f"cx q[{i}],q[{i + 1}];" for i in range(qubits - 1))
    head = f'OPENQASM 2.0; include "qelib1.inc"; qreg q[{qubits}]; creg c[{qubits}]; '
    return head + layer * layers + " measure q -> c;"


def test_a_running_simulation_is_relaunched_on_a_backend_whose_queue_drained(
    cluster: Cluster, namespace: str, own_operator: Any
) -> None:
    # An ideal simulator backend with 500 jobs ahead: the 28-qubit circuit goes to the CPU
    # pool (about 200 s predicted there). Its pod runs (a KWOK pod runs until deleted); the
    # backend's queue drains. The backend simulates about as fast as the pod, but it is
    # free and the pod is not, and this workflow weighs money first (preset ``cost``,
    # threshold 0.1): the rest of the pod's run costs more than starting again at the
    # backend, so the pass relaunches it there, and the old pod goes. (Under ``balanced``
    # and the default threshold, a move that saves a fraction of a cent for a later finish
    # is not worth a restart: 6% gain.)
    name = f"sim-{namespace}"[:63].rstrip("-")
    cluster.apply(json.dumps(scripted_backend(name, numQubits=30)))
    busy = {"status": {"queueLength": 500}}
    cluster.plane.kubectl("patch", "qb", name, "--subresource=status", "--type=merge",
                          "-p", json.dumps(busy))  # fmt: skip
    try:
        own_operator(QORCH_CLUSTER_PASS="on", QORCH_TEST_SCRIPTED_QUEUE_SECONDS="0",
                     QORCH_TEST_SCRIPTED_RUN_SECONDS="1")  # fmt: skip
        cpu = {"name": "cpu", "nodeSelector": {"qorch.io/pool": "cpu"}, "maxQubits": 28}
        sub = {"name": "wide", "circuit": {"qasm": wide_circuit(28, 10), "shots": 100000}}
        manifest = json.loads(
            workflow("relaunch", sub, quantumBackends=[name], classicalPools=[cpu])
        )
        manifest["spec"]["objective"] = {"preset": "cost"}
        manifest["spec"]["reallocation"] = {"threshold": 0.1}
        cluster.apply(json.dumps(manifest), namespace)

        def running_pod() -> str | None:
            wf = cluster.get("hwf", "relaunch", namespace) or {}
            done = (wf.get("status") or {}).get("phase") in ("Failed", "Succeeded")
            assert not done, json.dumps(wf["status"]["subtasks"], indent=1)
            for st in (wf.get("status") or {}).get("subtasks") or []:
                if (
                    st.get("phase") == "Running"
                    and (st.get("placement") or {}).get("kind") == "pool"
                ):
                    return str(st["podName"])
            return None

        wait_for("the circuit simulated by a running pod", running_pod, 60)
        pod = running_pod()
        drained = {"status": {"queueLength": 0}}
        cluster.plane.kubectl("patch", "qb", name, "--subresource=status", "--type=merge",
                              "-p", json.dumps(drained))  # fmt: skip
        wait_for(
            "relaunch succeeded", lambda: phase(cluster, "relaunch", namespace) == "Succeeded", 90
        )
        wf = cluster.get("hwf", "relaunch", namespace)
        assert wf is not None
        st = wf["status"]["subtasks"][0]
        assert st["placement"]["name"] == name and st["moves"] == 1
        assert st["failures"] == 0  # a relaunch is a move, not a failure
        assert st["result"]  # the backend's (scripted) result
        assert cluster.get("pods", pod, namespace) is None  # the old pod is gone
        events = cluster.events(namespace, "relaunch")
        moved = [e["message"] for e in events if e["reason"] == "Moved"]
        assert moved and all("from cpu" in m for m in moved), [e["reason"] for e in events]
        # The numbers behind it: the progress given up and the restart, against the gain.
        assert all("progress lost" in m and "pod restart" in m for m in moved), moved
    finally:
        cluster.plane.kubectl("delete", "qb", name, "--wait=false", check=False)


def test_pods_start_only_as_the_pools_nodes_have_room_for_them(
    cluster: Cluster, namespace: str, own_operator: Any
) -> None:
    # One 2-CPU node in pool "tiny"; four steps of 1 CPU each (5 s of work).
    node = f"kwok-tiny-{namespace}"[:63].rstrip("-")
    cluster.apply(node_manifest(NodeSpec(node, "tiny", cpu="2", memory="8Gi")))
    try:
        own_operator(QORCH_CLUSTER_PASS="on")
        steps = [slow_step(f"s{i}", "5s") for i in range(4)]
        for s in steps:
            s["classical"]["resources"] = {"cpu": "1", "memory": "1Gi"}
        tiny = {"name": "tiny", "nodeSelector": {"qorch.io/pool": "tiny"}}
        cluster.apply(workflow("room", *steps, classicalPools=[tiny]), namespace)

        most = 0
        held_seen = False
        deadline = time.monotonic() + 120
        while phase(cluster, "room", namespace) != "Succeeded" and time.monotonic() < deadline:
            pods = cluster.list("pods", namespace)
            live = [p for p in pods if p.get("status", {}).get("phase") in ("Pending", "Running")]
            out_of_gate = [p for p in live if not p["spec"].get("schedulingGates")]
            most = max(most, len(out_of_gate))
            wf = cluster.get("hwf", "room", namespace) or {}
            messages = [s.get("message", "") for s in wf.get("status", {}).get("subtasks", [])]
            held_seen = held_seen or any("room" in m for m in messages)
            time.sleep(0.2)
        assert phase(cluster, "room", namespace) == "Succeeded"
        # Never more pods let into the scheduler than the node holds; the others waited,
        # saying why, instead of piling up Pending.
        assert most == 2 and held_seen
    finally:
        cluster.plane.kubectl("delete", "node", node, "--wait=false", check=False)
