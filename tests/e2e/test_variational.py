"""A variational subtask end to end: a VQE of H2 runs as a `qorch worker` pod (run by the
test node agent as a local process) whose optimizer sends each batch to a real quantum
gateway; mid-run the backend it uses becomes 100 times dearer and the cluster pass
re-routes the next batches to the other gateway by patching the pod's annotation (read
through its downward-API volume): same pod, no restart, the energy keeps converging. A
classical step then reads the VQE's result from the file its dependency left it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devenv import gateway as gateway_mod
from devenv.cluster import Cluster, wait_for
from devenv.controlplane import ControlPlane
from devenv.prometheus import Prometheus
from devenv.rbac import least_privilege_kubeconfig
from tests.harness import agentprocess
from tests.harness import operator as operator_mod
from tests.unit.test_worker_variational import ANSATZ, H2
from tests.unit.test_worker_variational import GROUND as H2_GROUND

pytestmark = [pytest.mark.controlplane, pytest.mark.prometheus]

READ_INPUT = (
    "import json, os; "
    "vqe = json.load(open(os.path.join(os.environ['QORCH_INPUTS_DIR'], 'vqe.json'))); "
    "out = os.environ.get('QORCH_RESULT_PATH', '/dev/termination-log'); "
    "open(out, 'w').write(json.dumps({'readEnergy': vqe['energy']}))"
)


@pytest.fixture(scope="module")
def stack(
    cluster: Cluster, control_plane: ControlPlane, session_dir: Path, prometheus: Prometheus
) -> Iterator[dict[str, Any]]:
    work = session_dir / "variational"
    work.mkdir(exist_ok=True)
    # Priced simulators: each bills the seconds a batch held it (as a provider would).
    aer = ("--provider", "aer", "--max-qubits", "4", "--price-per-qpu-second", "0.5",
           "--bill-held-seconds")  # fmt: skip
    with (
        gateway_mod.running(work / "gw-a.log", *aer, "--backend", "aer_a") as gw_a,
        gateway_mod.running(work / "gw-b.log", *aer, "--backend", "aer_b") as gw_b,
        agentprocess.running(cluster, work / "agent"),
        operator_mod.running(
            control_plane,
            work / "operator.log",
            kubeconfig=least_privilege_kubeconfig(control_plane, work / "sa.yaml"),
            gateway="http",
            extra_env={
                "QORCH_CLUSTER_PASS": "on",
                "QORCH_PROMETHEUS_URL": prometheus.url,
                "QORCH_METRICS_REFRESH_SECONDS": "1",
            },
        ),
    ):
        prometheus.set_targets("gateway", [f"127.0.0.1:{gw_a.port}", f"127.0.0.1:{gw_b.port}"])
        names = {"vqe-a": gw_a, "vqe-b": gw_b}
        for name, gw in names.items():
            cluster.apply(
                json.dumps(
                    {
                        "apiVersion": "qorch.io/v1alpha1",
                        "kind": "QuantumBackend",
                        "metadata": {"name": name},
                        "spec": {
                            "provider": "aer",
                            "backendName": "aer_a" if name == "vqe-a" else "aer_b",
                            "numQubits": 4,
                            "pricePerQpuSecondUSD": 0.5,
                            "gateway": {"url": gw.url},
                        },
                    }
                )
            )
        yield {"backends": sorted(names)}
        for name in names:
            cluster.plane.kubectl("delete", "qb", name, "--wait=false", check=False)


def manifest(backends: list[str]) -> str:
    return json.dumps(
        {
            "apiVersion": "qorch.io/v1alpha1",
            "kind": "HybridWorkflow",
            "metadata": {"name": "h2"},
            "spec": {
                "objective": {"preset": "cost"},
                "subtasks": [
                    {
                        "name": "vqe",
                        "variational": {
                            "qasm": ANSATZ,
                            "hamiltonian": H2,
                            "optimizer": "COBYLA",
                            # Long enough to be re-routed mid-run (tolerance keeps it going).
                            "maxIterations": 120,
                            "tolerance": 1e-7,
                            "shots": 1_000_000,
                        },
                    },
                    {
                        "name": "report",
                        "dependsOn": ["vqe"],
                        "classical": {
                            "image": "python:3.12-slim",
                            "command": ["python", "-c", READ_INPUT],
                        },
                    },
                ],
                "resources": {
                    "quantumBackends": backends,
                    # The optimizer runs here, but its 2-qubit batches cannot be simulated here:
                    # they go to a quantum backend.
                    "classicalPools": [
                        {
                            "name": "local",
                            "nodeSelector": {"qorch.io/pool": "local"},
                            "maxQubits": 1,
                        }
                    ],
                },
            },
        }
    )


def vqe_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    wf = cluster.get("hwf", "h2", namespace) or {}
    subtasks = (wf.get("status") or {}).get("subtasks") or []
    return next((s for s in subtasks if s["name"] == "vqe"), {})


def test_a_vqe_is_rerouted_mid_run_without_a_restart(
    cluster: Cluster, namespace: str, stack: dict[str, Any]
) -> None:
    cluster.apply(manifest(stack["backends"]), namespace)

    def batches_running() -> dict[str, Any] | None:
        st = vqe_status(cluster, namespace)
        progress = st.get("progress") or {}
        running = st.get("phase") == "Running" and progress.get("evaluations", 0) >= 3
        return st if running and st.get("route", {}).get("kind") == "backend" else None

    # The loop runs and its progress shows in the status while it runs.
    try:
        st = wait_for("the VQE sending batches to a backend", batches_running, 120, interval=0.5)
    except AssertionError as exc:
        events = [(e["reason"], e["message"]) for e in cluster.events(namespace, "h2")]
        raise AssertionError(f"{exc}; status {vqe_status(cluster, namespace)}; {events}") from None
    first = st["route"]["name"]
    other = next(b for b in stack["backends"] if b != first)
    pod = st["podName"]
    assert st["placement"] == {"kind": "pool", "name": "local"}  # the optimizer's pod

    # The backend it uses becomes 100 times dearer: the pass re-routes the next batches.
    cluster.plane.kubectl(
        "patch", "qb", first, "--type=merge", "-p",
        json.dumps({"spec": {"pricePerQpuSecondUSD": 50.0}}),
    )  # fmt: skip
    st = wait_for(
        f"batches running on {other}",
        lambda: (
            (s := vqe_status(cluster, namespace)).get("progress", {}).get("batches", {}).get(other)
            and s
        ),
        120,
        interval=0.5,
    )
    assert st["route"] == {"kind": "backend", "name": other}

    wf = wait_for(
        "h2 finished",
        lambda: (
            (w := cluster.get("hwf", "h2", namespace))
            and w.get("status", {}).get("phase") in ("Succeeded", "Failed")
            and w
        ),
        240,
        interval=1,
    )
    status = wf["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    subtasks = {s["name"]: s for s in status["subtasks"]}
    vqe = subtasks["vqe"]
    # One pod, one attempt: the re-route restarted nothing and cost no retry.
    assert vqe["attempts"] == 1 and vqe["failures"] == 0 and vqe["podName"] == pod
    assert vqe["moves"] == 1 and status["moves"] == 1
    assert [h["event"] for h in vqe["history"]].count("Rerouted") == 1
    batches = vqe["progress"]["batches"]
    assert batches.get(first, 0) >= 3 and batches.get(other, 0) >= 1, batches
    assert vqe["result"]["evaluations"] == sum(batches.values())
    # Each backend billed the seconds it held the device; the operator priced them as the
    # batches ran (0.5 USD/s, 50 on the first backend once patched) into the workflow's
    # cost, with the optimizer pod's and the report's time.
    billed = vqe["progress"]["qpuSeconds"]
    assert set(billed) == {first, other} and all(v > 0 for v in billed.values()), billed
    spent = vqe["progress"]["spentUSD"]
    assert 0.5 * sum(billed.values()) - 1e-6 <= spent <= 50.0 * sum(billed.values()), vqe
    assert vqe["actual"]["costUSD"] > spent
    parts = sum((s.get("actual") or {}).get("costUSD") or 0.0 for s in status["subtasks"])
    assert status["costUSD"] == pytest.approx(parts, abs=1e-5), status
    # The optimizer kept its state across the move: it converged near the ground energy
    # (the shot noise of a million shots per batch allows a little).
    print(
        f"VQE of H2: energy {vqe['result']['energy']:.6f} Ha (exact {H2_GROUND}) after "
        f"{vqe['result']['evaluations']} batches {batches}; re-routed {first} -> {other}"
    )
    assert vqe["result"]["energy"] == pytest.approx(H2_GROUND, abs=0.06), vqe["result"]
    events = [e for e in cluster.events(namespace, "h2") if e["reason"] == "Rerouted"]
    assert events and f"from {first} to {other}" in events[0]["message"], events
    # The dependent step read the VQE's result from its input file.
    assert subtasks["report"]["result"] == {"readEnergy": vqe["result"]["energy"]}
