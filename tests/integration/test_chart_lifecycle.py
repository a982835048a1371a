"""The chart's life on a real control plane of its own: `helm install`, a HybridWorkflow in
the release namespace, `helm upgrade` with changed values, `helm uninstall`. An upgrade applies
the new values to the running objects and leaves the workflow alone; an uninstall deletes
every object the release templated but leaves the CRDs (Helm installs charts/qorch/crds/ once
and never upgrades or deletes it) and the workflow, as charts/qorch/README.md and NOTES.txt
say. Deleting the CRD then deletes the workflow, as they warn."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from devenv import controlplane as cp_mod
from devenv.controlplane import REPO, ControlPlane
from tests.integration.test_chart import CHART, docs_of, helm

pytestmark = pytest.mark.controlplane
__all__ = ["helm"]  # the module-scoped fixture that builds helm, shared with test_chart

NAMESPACE = "qorch-system"
RELEASE = "qorch"
WORKFLOW = REPO / "examples" / "three-stage-dag.yaml"
CRDS = sorted((CHART / "crds").glob("*.yaml"))
AER: dict[str, Any] = {
    "name": "aer",
    "provider": "aer",
    "backendName": "aer_simulator",
    "numQubits": 28,
    "pricePerQpuSecondUSD": 0.5,
    "nodeSelector": {"qorch.io/pool": "quantum-gateway"},
}
# Helm merges maps into the chart's defaults: give every key, so each is what is applied.
RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "512Mi"},
}
UPGRADED: dict[str, Any] = {
    "requests": {"cpu": "200m", "memory": "320Mi"},
    "limits": {"memory": "640Mi"},
}


def run_helm(helm: Path, plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(helm), *args, "--kubeconfig", str(plane.kubeconfig), "--namespace", NAMESPACE],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def values_file(path: Path, price: float, resources: dict[str, Any]) -> str:
    path.write_text(
        json.dumps(
            {
                "replicas": 1,
                "resources": resources,
                "backends": [{**AER, "pricePerQpuSecondUSD": price}],
            }
        )
    )
    return str(path)


def get(plane: ControlPlane, *args: str) -> dict[str, Any]:
    out = plane.kubectl("get", *args, "-o", "json")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def ref(doc: dict[str, Any]) -> str:
    """kind.group/name, as kubectl takes it."""
    group = doc["apiVersion"].rpartition("/")[0]
    kind = doc["kind"].lower()
    return (
        f"{kind}.{group}/{doc['metadata']['name']}"
        if group
        else f"{kind}/{doc['metadata']['name']}"
    )


def operator_container(plane: ControlPlane) -> dict[str, Any]:
    deployment = get(plane, "deployment", "qorch-operator", "-n", NAMESPACE)
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["status"].get("updatedReplicas") == 1, deployment["status"]
    assert deployment["status"].get("availableReplicas") == 1, deployment["status"]
    [container] = containers
    return container


def live_pods(plane: ControlPlane, selector: str) -> list[dict[str, Any]]:
    """Pods not being deleted (a rollout's old pod may linger a moment)."""
    pods = get(plane, "pods", "-n", NAMESPACE, "-l", selector)["items"]
    return [p for p in pods if "deletionTimestamp" not in p["metadata"]]


def test_install_upgrade_uninstall_keeps_crds_and_workflows(helm: Path, tmp_path: Path) -> None:
    with cp_mod.running(tmp_path / "control-plane") as plane:
        wait = ["--wait", "--timeout", "180s"]
        chart = str(CHART)
        values = values_file(tmp_path / "v1.json", 0.5, RESOURCES)
        out = run_helm(
            helm, plane, "install", RELEASE, chart, "--create-namespace", "-f", values, *wait
        )
        assert "operator: Service qorch-operator-metrics, port metrics (8080)" in out.stdout
        assert "gateway aer: Service qorch-gateway-aer, port http (8080)" in out.stdout
        assert "never the CRDs" in out.stdout, "NOTES.txt says what uninstall leaves"

        # The metrics Service reaches the operator pod on its exporter port.
        container = operator_container(plane)
        assert container["resources"] == RESOURCES
        [pod] = live_pods(plane, "app.kubernetes.io/component=operator")
        slices = get(
            plane, "endpointslices", "-n", NAMESPACE,
            "-l", "kubernetes.io/service-name=qorch-operator-metrics",
        )["items"]  # fmt: skip
        assert [e["addresses"] for s in slices for e in s["endpoints"] or []] == [
            [pod["status"]["podIP"]]
        ]
        assert [p for s in slices for p in s["ports"]] == [
            {"name": "metrics", "port": 8080, "protocol": "TCP"}
        ]

        plane.kubectl("apply", "-n", NAMESPACE, "-f", str(WORKFLOW))
        workflow = get(plane, "hybridworkflow", "three-stage-dag", "-n", NAMESPACE)

        # Upgrade: a gateway's price and the operator's resources change in place.
        values = values_file(tmp_path / "v2.json", 0.75, UPGRADED)
        run_helm(helm, plane, "upgrade", RELEASE, chart, "-f", values, *wait)
        backend = get(plane, "quantumbackend", "aer")
        assert backend["spec"]["pricePerQpuSecondUSD"] == 0.75
        gateway = get(plane, "deployment", "qorch-gateway-aer", "-n", NAMESPACE)
        [gw] = gateway["spec"]["template"]["spec"]["containers"]
        assert "--price-per-qpu-second=0.75" in gw["args"]
        assert "--price-per-qpu-second=0.5" not in gw["args"]
        assert operator_container(plane)["resources"] == UPGRADED
        pods = live_pods(plane, "app.kubernetes.io/component=operator")
        assert [p["spec"]["containers"][0]["resources"] for p in pods] == [UPGRADED], (
            "the rollout replaced the operator pod"
        )
        kept = get(plane, "hybridworkflow", "three-stage-dag", "-n", NAMESPACE)
        assert kept["metadata"]["uid"] == workflow["metadata"]["uid"]
        assert kept["spec"] == workflow["spec"]

        # Uninstall: every object of the release goes; the CRDs and the workflow stay.
        manifest = run_helm(helm, plane, "get", "manifest", RELEASE).stdout
        released = docs_of(manifest)
        kinds = {d["kind"] for d in released}
        assert kinds >= {
            "Deployment",
            "Service",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "NetworkPolicy",
            "QuantumBackend",
        }
        run_helm(helm, plane, "uninstall", RELEASE, "--wait", "--timeout", "120s")
        for doc in released:
            left = plane.kubectl(
                "get", ref(doc), "-n", NAMESPACE, "--ignore-not-found", "-o", "name"
            )
            assert left.stdout.strip() == "", f"{ref(doc)} survived helm uninstall"
        deadline = time.monotonic() + 60
        while get(plane, "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")[
            "items"
        ]:  # the operator's and gateways' pods: no operator is left to act on workflows
            assert time.monotonic() < deadline, "the release's pods were not garbage-collected"
            time.sleep(1)

        crd_names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRDS]
        assert "hybridworkflows.qorch.io" in crd_names and len(crd_names) == 3
        for name in crd_names:
            crd = get(plane, "crd", name)
            assert "deletionTimestamp" not in crd["metadata"], name
        after = get(plane, "hybridworkflow", "three-stage-dag", "-n", NAMESPACE)
        assert after["metadata"]["uid"] == workflow["metadata"]["uid"]
        assert after["spec"] == workflow["spec"]

        # Deleting the CRD deletes the workflows: a re-created CRD finds none.
        plane.kubectl("delete", "crd", "hybridworkflows.qorch.io", "--timeout=60s")
        plane.kubectl("apply", "-f", str(CHART / "crds" / "qorch.io_hybridworkflows.yaml"))
        plane.kubectl(
            "wait", "--for=condition=Established", "crd/hybridworkflows.qorch.io", "--timeout=60s"
        )
        assert get(plane, "hybridworkflows", "-A")["items"] == []
