"""End to end with real computation: a workflow applied with kubectl runs real Aer
simulations through a quantum-gateway process (quantum subtasks) and through worker pods
that the test node agent runs as local processes (classical subtasks); the results land
in the workflow's status."""

from __future__ import annotations

import json
import urllib.request
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

pytestmark = [pytest.mark.controlplane, pytest.mark.prometheus]
STD = 'OPENQASM 3.0; include "stdgates.inc"; '
GHZ3 = STD + "qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;"
GHZ6 = STD + (
    "qubit[6] q; bit[6] c; h q[0]; "
    + "".join(f"cx q[{i}], q[{i + 1}]; " for i in range(5))
    + "c = measure q;"
)
BELL = STD + "qubit[2] q; h q[0]; cx q[0], q[1];"


@pytest.fixture(scope="module")
def stack(
    cluster: Cluster, control_plane: ControlPlane, session_dir: Path, prometheus: Prometheus
) -> Iterator[dict[str, Any]]:
    """An Aer gateway (4 qubits), a node agent for pool `local`, and the operator in
    http gateway mode reading metrics from the real Prometheus."""
    work = session_dir / "real-computation"
    work.mkdir(exist_ok=True)
    with (
        gateway_mod.running(
            work / "gateway.log",
            "--provider",
            "aer",
            "--backend",
            "aer_local",
            "--max-qubits",
            "4",
            "--price-per-qpu-second",
            "0.5",
        ) as gw,
        agentprocess.running(cluster, work / "agent"),
        operator_mod.running(
            control_plane,
            work / "operator.log",
            kubeconfig=least_privilege_kubeconfig(control_plane, work / "sa.yaml"),
            gateway="http",
            extra_env={
                "QORCH_PROMETHEUS_URL": prometheus.url,
                "QORCH_METRICS_REFRESH_SECONDS": "1",
            },
        ) as op,
    ):
        prometheus.set_targets("gateway", [f"127.0.0.1:{gw.port}"])
        cluster.apply(
            json.dumps(
                {
                    "apiVersion": "qorch.io/v1alpha1",
                    "kind": "QuantumBackend",
                    "metadata": {"name": "aer-local"},
                    "spec": {
                        "provider": "aer",
                        "backendName": "aer_local",
                        "numQubits": 4,
                        "gateway": {"url": gw.url},
                    },
                }
            )
        )
        yield {"gateway": gw, "operator": op, "work": work}
        cluster.plane.kubectl("delete", "qb", "aer-local", "--wait=false", check=False)


def workflow(name: str, subtasks: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "apiVersion": "qorch.io/v1alpha1",
            "kind": "HybridWorkflow",
            "metadata": {"name": name},
            "spec": {
                "subtasks": subtasks,
                "resources": {
                    "quantumBackends": ["aer-local"],
                    "classicalPools": [
                        {
                            "name": "local",
                            "nodeSelector": {"qorch.io/pool": "local"},
                            "maxQubits": 24,
                        }
                    ],
                },
            },
        }
    )


def finished(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        wf = cluster.get("hwf", name, namespace)
        return wf if wf and wf.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return wait_for(f"{name} to finish", done, 180, interval=0.5)


def test_hybrid_workflow_computes_on_gateway_and_worker_pods(
    cluster: Cluster, namespace: str, stack: dict[str, Any]
) -> None:
    cluster.apply(
        workflow(
            "hybrid",
            [
                {
                    "name": "prepare",
                    "classical": {
                        "image": "python:3.12-slim",
                        "command": [
                            "python",
                            "-c",
                            "import json; print(json.dumps({'theta': 0.5}))",
                        ],
                    },
                },
                {
                    "name": "bell-qpu",
                    "dependsOn": ["prepare"],
                    "circuit": {
                        "qasm": BELL,
                        "primitive": "estimator",
                        "observables": ["ZZ", "XX", "ZI"],
                        "shots": 4000,
                    },
                },
                {
                    "name": "ghz-qpu",
                    "dependsOn": ["prepare"],
                    "circuit": {"qasm": GHZ3, "shots": 2000},
                },
                # 6 qubits do not fit the 4-qubit backend: the planner simulates it on a worker pod.
                {
                    "name": "ghz-sim",
                    "dependsOn": ["prepare"],
                    "circuit": {"qasm": GHZ6, "shots": 1000},
                },
            ],
        ),
        namespace,
    )
    wf = finished(cluster, "hybrid", namespace)
    assert wf["status"]["phase"] == "Succeeded", json.dumps(wf["status"], indent=1)
    st = {s["name"]: s for s in wf["status"]["subtasks"]}

    assert st["bell-qpu"]["placement"] == {"kind": "backend", "name": "aer-local"}
    evs = dict(
        zip(
            st["bell-qpu"]["result"]["observables"],
            st["bell-qpu"]["result"]["expectationValues"],
            strict=True,
        )
    )
    assert evs["ZZ"] == pytest.approx(1.0, abs=0.1)
    assert evs["XX"] == pytest.approx(1.0, abs=0.1)
    assert evs["ZI"] == pytest.approx(0.0, abs=0.1)

    assert st["ghz-qpu"]["placement"] == {"kind": "backend", "name": "aer-local"}
    assert set(st["ghz-qpu"]["result"]["counts"]) == {"000", "111"}
    assert sum(st["ghz-qpu"]["result"]["counts"].values()) == 2000

    assert st["ghz-sim"]["placement"] == {"kind": "pool", "name": "local"}
    sim = st["ghz-sim"]["result"]
    assert set(sim["counts"]) == {"000000", "111111"} and sim["method"] == "statevector"
    assert sum(sim["counts"].values()) == 1000

    assert st["prepare"]["phase"] == "Succeeded"
    pods = cluster.list("pods", namespace)
    assert {p["spec"]["nodeName"] for p in pods} == {"agent-0"}
    assert {p["metadata"]["name"] for p in pods} == {"hybrid-prepare-1", "hybrid-ghz-sim-1"}

    conds = {c["type"]: c for c in wf["status"]["conditions"]}
    assert conds["MetricsAvailable"]["status"] == "True", conds

    # Every circuit placement recorded the shipped models' prediction beside its outcome.
    assert conds["Predicted"]["status"] == "True", conds["Predicted"]
    for name in ("bell-qpu", "ghz-qpu", "ghz-sim"):
        predicted, actual = st[name]["predicted"], st[name]["actual"]
        assert predicted["source"] == "model", predicted
        assert predicted["runSeconds"] > 0 and actual["runSeconds"] > 0, (predicted, actual)
    assert st["ghz-qpu"]["actual"]["queueSeconds"] >= 0
    assert st["ghz-qpu"]["predicted"]["fidelity"] == 1.0  # an ideal simulator is exact
    assert st["ghz-sim"]["actual"]["costUSD"] > 0  # a CPU pod at the cited default price
    assert (
        st["ghz-qpu"]["predicted"]["queueSecondsP10"]
        <= st["ghz-qpu"]["predicted"]["queueSecondsP90"]
    )
    assert st["ghz-sim"]["predicted"]["peakMemoryBytes"] > 0
    assert st["ghz-sim"]["actual"]["peakMemoryBytes"] > 0
    assert "predicted" not in st["prepare"]  # a classical step has no circuit to predict
    # ... and the operator exports how far off those predictions were (recorded once the
    # status that says so is stored: just after the status this test read).
    port = stack["operator"].metrics_port

    def exported() -> str | None:
        text = operator_metrics(port)
        return text if 'quantity="simulation_seconds"' in text else None

    text = wait_for("the prediction error exported", exported, 10)
    for quantity in ("qpu_run_seconds", "simulation_seconds", "peak_memory_bytes"):
        assert f'qorch_prediction_median_relative_error{{quantity="{quantity}"}}' in text, quantity
    assert "qorch_prediction_queue_interval_coverage " in text
    assert 'qorch_predictor_model_serving{model="qpu_runtime",output="value"} 1.0' in text


def operator_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_failing_worker_reports_its_message(
    cluster: Cluster, namespace: str, stack: dict[str, Any]
) -> None:
    cluster.apply(
        workflow(
            "broken",
            [
                {
                    "name": "crash",
                    "maxRetries": 0,
                    "classical": {
                        "image": "python:3.12-slim",
                        "command": ["python", "-c", "import sys; sys.exit('out of coffee')"],
                    },
                },
            ],
        ),
        namespace,
    )
    wf = finished(cluster, "broken", namespace)
    assert wf["status"]["phase"] == "Failed"
    crash = wf["status"]["subtasks"][0]
    assert "exit code 1" in crash["message"], crash


def test_quantum_backend_status_mirrors_the_gateway(
    cluster: Cluster, stack: dict[str, Any]
) -> None:
    def ready() -> dict[str, Any] | None:
        qb = cluster.get("qb", "aer-local")
        return qb if qb and qb.get("status", {}).get("healthy") is True else None

    qb = wait_for("QuantumBackend status", ready, 60)
    # The timer may have caught a job in the queue: any count the gateway reported is fine.
    assert isinstance(qb["status"]["queueLength"], int) and qb["status"]["queueLength"] >= 0
    assert "updatedAt" in qb["status"]["calibration"]
    assert {c["type"]: c["status"] for c in qb["status"]["conditions"]} == {"Ready": "True"}


def test_submission_the_gateway_refuses_fails_the_subtask_with_its_reason(
    cluster: Cluster, namespace: str, stack: dict[str, Any]
) -> None:
    # A QuantumBackend whose backendName the gateway does not serve: a permanent 404.
    cluster.apply(
        json.dumps(
            {
                "apiVersion": "qorch.io/v1alpha1",
                "kind": "QuantumBackend",
                "metadata": {"name": "misnamed"},
                "spec": {
                    "provider": "aer",
                    "backendName": "not_served",
                    "numQubits": 4,
                    "gateway": {"url": stack["gateway"].url},
                },
            }
        )
    )
    try:
        manifest = json.loads(
            workflow(
                "refused",
                [{"name": "ghz", "maxRetries": 1, "circuit": {"qasm": GHZ3, "shots": 10}}],
            )
        )
        manifest["spec"]["resources"]["quantumBackends"] = ["misnamed"]
        cluster.apply(json.dumps(manifest), namespace)
        wf = finished(cluster, "refused", namespace)
    finally:
        cluster.plane.kubectl("delete", "qb", "misnamed", "--wait=false", check=False)
    assert wf["status"]["phase"] == "Failed"
    ghz = wf["status"]["subtasks"][0]
    # A refusal is permanent: the same submission would be refused again, so no retry.
    assert ghz["attempts"] == 1 and ghz["failures"] == 1, ghz
    assert "permanent: not retried" in ghz["message"]
    assert "unknown backend 'not_served': this gateway serves 'aer_local'" in ghz["message"]
