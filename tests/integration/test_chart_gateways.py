"""The chart's `backends:` deploy one quantum gateway each: a QuantumBackend, a `qorch gateway`
Deployment and its Service, all rendered from the one values entry. The QuantumBackend points
at the Service that selects the gateway's pods, and for provider ibm names the very Secret the
Deployment mounts and passes by --token-file; the token itself never appears in values. The
rendered command line parses with the real `qorch gateway` CLI, the pods pass the apiserver's
`restricted` Pod Security admission, and `helm install` creates working objects."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devenv import controlplane as cp_mod
from devenv.cluster import Cluster
from devenv.controlplane import REPO, ControlPlane
from qorch import cli
from qorch.api import QuantumBackend
from tests.integration.test_chart import CHART, docs_of, helm, one, render

pytestmark = pytest.mark.controlplane
__all__ = ["helm"]  # the module-scoped fixture that builds helm, shared with test_chart

EXAMPLE = REPO / "examples" / "quantum-backend-aer.yaml"
NAMESPACE = "qorch-system"  # what test_chart.render installs into
PORT = 9443  # not the default, so the tests see gateway.port reused everywhere
OPERATOR_SA = "qorch-operator"
AER: dict[str, Any] = {
    "name": "aer",
    "provider": "aer",
    "backendName": "aer_simulator",
    "numQubits": 28,
}
IBM: dict[str, Any] = {
    "name": "ibm-torino",
    "provider": "ibm",
    "backendName": "ibm_torino",
    "numQubits": 133,
    "instance": "crn:v1:bluemix:public:quantum-computing:us-east:a/0123::",
    "pricePerQpuSecondUSD": 1.6,
    "executionMode": "batch",
    "credentialsSecret": {"name": "ibm-quantum", "key": "apikey"},
    "stateVolume": {"persistentVolumeClaim": "gw-journal"},
    "maxQueued": 50,
    "batchSize": 4,
    "transpileWorkers": 3,
}
VALUES: dict[str, Any] = {
    "gateway": {"port": PORT, "allowNamespaces": ["team-a", "team-b"]},
    "backends": [AER, IBM],
}


def render_values(
    helm: Path, tmp_path: Path, values: dict[str, Any], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "values.json"  # JSON is YAML; numbers keep their type (unlike --set)
    path.write_text(json.dumps(values))
    return render(helm, "-f", str(path), *args, check=check)


@pytest.fixture
def docs(helm: Path, tmp_path: Path) -> list[dict[str, Any]]:
    return docs_of(render_values(helm, tmp_path, VALUES).stdout)


def gateway_of(docs: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    """The Deployment serving QuantumBackend ``backend``, found through the QuantumBackend's
    own gateway reference (not through the naming rule)."""
    spec = one(docs, "QuantumBackend", backend)["spec"]
    return one(docs, "Deployment", spec["gateway"]["serviceName"])


def gateway_args(deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The container's args as the real `qorch gateway` parses them (an unknown or malformed
    flag fails here, as it would in the pod)."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    parsed: list[argparse.Namespace] = []

    def capture(args: argparse.Namespace) -> int:
        parsed.append(args)
        return 0

    monkeypatch.setattr(cli, "_gateway", capture)
    assert cli.main(container["args"]) == 0
    return parsed[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_chart_with_backends_lints(helm: Path, tmp_path: Path) -> None:
    path = tmp_path / "values.json"
    path.write_text(json.dumps(VALUES))
    out = subprocess.run(
        [str(helm), "lint", str(CHART), "-f", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_backends_no_gateways(helm: Path) -> None:
    docs = docs_of(render(helm).stdout)
    assert not [d for d in docs if d["kind"] == "QuantumBackend"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == [
        f"{OPERATOR_SA}-metrics"
    ], "only the operator's metrics Service"
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"] == [OPERATOR_SA]


def test_quantum_backend_points_at_the_service_that_selects_its_gateway(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = one(docs, "Deployment", OPERATOR_SA)
    assert operator["spec"]["template"]["spec"]["serviceAccountName"] == OPERATOR_SA
    policy = one(docs, "NetworkPolicy", "qorch-gateway")["spec"]["podSelector"]["matchLabels"]
    for values in (AER, IBM):
        backend = one(docs, "QuantumBackend", values["name"])
        ref = backend["spec"]["gateway"]
        service = one(docs, "Service", ref["serviceName"])
        assert service["metadata"]["namespace"] == ref["namespace"] == NAMESPACE
        assert service["spec"]["type"] == "ClusterIP"
        [port] = service["spec"]["ports"]
        assert port == {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}
        assert ref["port"] == port["port"]
        # What the operator's gateway client dials.
        gateway = QuantumBackend.model_validate(backend).spec.gateway
        assert gateway is not None
        assert gateway.base_url() == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{PORT}"

        deployment = one(docs, "Deployment", ref["serviceName"])
        assert deployment["metadata"]["namespace"] == NAMESPACE
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert matches(service["spec"]["selector"], labels)
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert labels["app.kubernetes.io/component"] == "quantum-gateway"
        assert labels["qorch.io/backend"] == values["name"]
        assert matches(policy, labels), "the NetworkPolicy protects the gateway pods"
        assert not matches(operator["spec"]["selector"]["matchLabels"], labels), (
            "the operator Deployment must not select gateway pods"
        )
        [container] = template["spec"]["containers"]
        assert {"name": "http", "containerPort": PORT, "protocol": "TCP"} in container["ports"]
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(PORT),
            "prometheus.io/path": "/metrics",
        }
        assert template["spec"]["serviceAccountName"] == "qorch-gateway"

        args = gateway_args(deployment, monkeypatch)
        assert args.provider == values["provider"] == backend["spec"]["provider"]
        assert args.backend == values["backendName"] == backend["spec"]["backendName"]
        assert args.port == PORT
        assert args.auth == "tokenreview"
        assert args.auth_audience == "qorch-gateway"
        assert args.allow_serviceaccount == [f"{NAMESPACE}/{OPERATOR_SA}"]
        assert args.allow_namespace == ["team-a", "team-b"]
        assert backend["spec"]["numQubits"] == values["numQubits"]


def test_ibm_gateway_mounts_exactly_the_secret_its_quantum_backend_names(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = one(docs, "QuantumBackend", "ibm-torino")["spec"]
    ref = backend["credentialsSecretRef"]
    assert ref == {"name": "ibm-quantum", "namespace": NAMESPACE, "key": "apikey"}
    deployment = gateway_of(docs, "ibm-torino")
    assert deployment["metadata"]["namespace"] == ref["namespace"]
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == ref["name"]
    [item] = volume["secret"]["items"]
    assert item["key"] == ref["key"]
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    args = gateway_args(deployment, monkeypatch)
    assert args.token_file == f"{mount['mountPath']}/{item['path']}"
    # The token reaches the process only as that file: no env var, no other Secret.
    assert "secretKeyRef" not in json.dumps(deployment)
    assert "envFrom" not in container
    # The rest of the record matches the command line too.
    assert args.instance == backend["instance"] == IBM["instance"]
    assert args.execution_mode == backend["executionMode"] == "batch"
    assert args.price_per_qpu_second == backend["pricePerQpuSecondUSD"] == 1.6
    assert (args.max_queued, args.batch_size, args.transpile_workers) == (50, 4, 3)


def test_ibm_secret_key_defaults_to_token_and_price_to_pay_as_you_go(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ibm = {**IBM, "credentialsSecret": {"name": "ibm-quantum"}}
    del ibm["pricePerQpuSecondUSD"]
    docs = docs_of(render_values(helm, tmp_path, {"backends": [ibm]}).stdout)
    backend = one(docs, "QuantumBackend", "ibm-torino")["spec"]
    args = gateway_args(gateway_of(docs, "ibm-torino"), monkeypatch)
    # IBM's published Pay-As-You-Go price, the same in the record and at the gateway.
    assert backend["pricePerQpuSecondUSD"] == args.price_per_qpu_second == 1.6
    ref = backend["credentialsSecretRef"]
    pod = gateway_of(docs, "ibm-torino")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert ref["key"] == volume["secret"]["items"][0]["key"] == "token"


def test_aer_gateway_mounts_no_secret(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "credentialsSecretRef" not in one(docs, "QuantumBackend", "aer")["spec"]
    deployment = gateway_of(docs, "aer")
    pod = deployment["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "secret" in v or "projected" in v]
    assert "secretKeyRef" not in json.dumps(deployment)
    args = gateway_args(deployment, monkeypatch)
    assert args.token_file is None
    assert args.max_qubits == AER["numQubits"]
    assert args.transpile_workers == 2  # the gateway's own default


def test_a_fake_gateway_follows_the_calibration_configmap_it_names(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = {"name": "twin", "provider": "fake", "backendName": "fake_manila",
            "calibrationConfigMap": {"name": "manila-day-2", "key": "day.json"}}  # fmt: skip
    rendered = docs_of(render_values(helm, tmp_path, {"backends": [fake]}).stdout)
    deployment = gateway_of(rendered, "twin")
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "calibration"]
    assert volume["configMap"] == {
        "name": "manila-day-2",
        "items": [{"key": "day.json", "path": "properties.json"}],
    }
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "calibration"]
    assert "subPath" not in mount  # a subPath mount would never see the ConfigMap's updates
    args = gateway_args(deployment, monkeypatch)
    assert args.calibration_file == f"{mount['mountPath']}/properties.json"


def test_gateway_pods_run_restricted_and_keep_a_journal(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, journal in (("aer", {"emptyDir": {}}), ("ibm-torino", None)):
        deployment = gateway_of(docs, name)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "never two at once"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        [container] = pod["containers"]
        assert container["securityContext"] == {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/tmp"]] == {"name": mounts["/tmp"], "emptyDir": {}}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
        args = gateway_args(deployment, monkeypatch)
        state = volumes[mounts[args.state_dir]]
        if journal is None:
            assert state["persistentVolumeClaim"] == {"claimName": "gw-journal"}
        else:
            assert {k: v for k, v in state.items() if k != "name"} == journal


def test_pods_pass_restricted_pod_security(
    docs: list[dict[str, Any]], cluster: Cluster, namespace: str
) -> None:
    """The apiserver's own PodSecurity admission, level `restricted`, on the gateway pods."""
    plane = cluster.plane
    plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    plane.kubectl("create", "serviceaccount", "qorch-gateway", "-n", namespace)
    for name in ("aer", "ibm-torino"):
        template = gateway_of(docs, name)["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"gw-{name}", "namespace": namespace, **template["metadata"]},
            "spec": template["spec"],
        }
        out = plane.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
        )
        assert out.returncode == 0, out.stderr
        assert "Warning" not in out.stderr, out.stderr
    # The check bites: the same pod with privilege escalation allowed is refused.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    out = plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode != 0 and "allowPrivilegeEscalation" in out.stderr, out.stderr


def test_rendered_gateways_are_accepted_by_the_apiserver(
    helm: Path, tmp_path: Path, control_plane: ControlPlane
) -> None:
    """Server-side dry run: the QuantumBackends pass the CRD's schema and CEL rules."""
    manifest = render_values(helm, tmp_path, VALUES).stdout
    docs = docs_of(manifest)
    assert {d["kind"] for d in docs} >= {"QuantumBackend", "Deployment", "Service"}
    control_plane.kubectl("create", "namespace", NAMESPACE, check=False)
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert out.returncode == 0, out.stderr
    # The CEL rules do apply to what the chart renders: without its Secret, ibm is refused.
    ibm = one(docs, "QuantumBackend", "ibm-torino")
    del ibm["spec"]["credentialsSecretRef"]
    out = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(ibm), check=False
    )
    assert out.returncode != 0
    assert "provider ibm needs credentialsSecretRef" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({k: v for k, v in IBM.items() if k != "credentialsSecret"}, "credentialsSecret"),
        ({**IBM, "token": "secret-api-key"}, "token"),
        ({**IBM, "credentialsSecret": {"name": "ibm-quantum", "token": "x"}}, "token"),
        ({**IBM, "credentialsSecret": {"key": "token"}}, "name"),
        ({**AER, "credentialsSecret": {"name": "ibm-quantum"}}, "credentialsSecret"),
        ({"name": "fake", "provider": "fake"}, "backendName"),
        ({**AER, "provider": "braket"}, "provider"),
        ({**AER, "replicas": 2}, "replicas"),
        ({**AER, "name": "Aer_1"}, "name"),
        ({**AER, "stateVolume": {"hostPath": "/var"}}, "hostPath"),
        ({**AER, "calibrationConfigMap": {"name": "cal"}}, "calibrationConfigMap"),
    ],
)
def test_values_schema_rejects_bad_backends(
    helm: Path, tmp_path: Path, backend: dict[str, Any], message: str
) -> None:
    out = render_values(helm, tmp_path, {"backends": [backend]}, check=False)
    assert out.returncode != 0
    assert "schema" in out.stderr and message in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ([AER, AER], 'name "aer" is listed twice'),
        (
            [{**AER, "name": "a" * 60 + "x"}, {**AER, "name": "a" * 60 + "y"}],
            "both get the gateway name",
        ),
    ],
)
def test_gateway_names_are_unique(
    helm: Path, tmp_path: Path, backends: list[dict[str, Any]], message: str
) -> None:
    out = render_values(helm, tmp_path, {"backends": backends}, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_long_names_are_cut_to_63_without_a_trailing_dash(helm: Path, tmp_path: Path) -> None:
    long = {**AER, "name": "b" * 48 + "-" + "c" * 14}  # the cut at 63 falls on the "-"
    docs = docs_of(render_values(helm, tmp_path, {"backends": [long]}).stdout)
    name = one(docs, "QuantumBackend", long["name"])["spec"]["gateway"]["serviceName"]
    assert name == "qorch-gateway-" + "b" * 48
    assert one(docs, "Deployment", name) and one(docs, "Service", name)


def test_aer_example_is_what_the_chart_renders(helm: Path) -> None:
    """examples/quantum-backend-aer.yaml says which values make the chart render it."""
    text = EXAMPLE.read_text()
    [values] = re.findall(r"--set '([^']+)'", text)
    [rendered] = [
        d for d in docs_of(render(helm, "--set", values).stdout) if d["kind"] == "QuantumBackend"
    ]
    example = yaml.safe_load(text)
    assert rendered["metadata"]["name"] == example["metadata"]["name"]
    assert rendered["spec"] == example["spec"]


def test_helm_install_creates_the_backend_and_its_gateway(helm: Path, tmp_path: Path) -> None:
    """`helm install` into an empty cluster of its own (the session's already holds objects
    such as the operator's ClusterRole, made by other tests without Helm): the chart's CRDs go
    in first, then the QuantumBackend, whose gateway pod KWOK starts on the gateway pool."""
    values = tmp_path / "values.json"
    aer = {**AER, "nodeSelector": {"qorch.io/pool": "quantum-gateway"}}
    values.write_text(json.dumps({"backends": [aer], "replicas": 1}))
    with cp_mod.running(tmp_path / "control-plane") as plane:
        kube = ["--kubeconfig", str(plane.kubeconfig)]
        out = subprocess.run(
            [
                str(helm),
                "install",
                "qorch",
                str(CHART),
                *kube,
                "--namespace",
                NAMESPACE,
                "--create-namespace",
                "-f",
                str(values),
                "--wait",
                "--timeout",
                "180s",
            ],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "QuantumBackend aer (aer) -> Deployment and Service qorch-gateway-aer" in out.stdout

        backend = json.loads(plane.kubectl("get", "quantumbackend", "aer", "-o", "json").stdout)
        QuantumBackend.model_validate(backend)
        assert backend["spec"]["gateway"] == {
            "serviceName": "qorch-gateway-aer",
            "namespace": NAMESPACE,
            "port": 8080,
        }
        deployment = json.loads(
            plane.kubectl(
                "get", "deployment", "qorch-gateway-aer", "-n", NAMESPACE, "-o", "json"
            ).stdout
        )
        assert deployment["status"]["availableReplicas"] == 1
        selector = ",".join(
            f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items()
        )
        pods = json.loads(
            plane.kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json").stdout
        )["items"]
        assert [p["spec"]["nodeName"] for p in pods] == ["kwok-qgw-0"]
        endpoints = plane.kubectl(
            "get",
            "endpointslices",
            "-n",
            NAMESPACE,
            "-l",
            "kubernetes.io/service-name=qorch-gateway-aer",
            "-o",
            "json",
        )
        slices = json.loads(endpoints.stdout)["items"]
        assert [e["addresses"] for s in slices for e in s["endpoints"] or []] == [
            [pods[0]["status"]["podIP"]]
        ], "the Service reaches the gateway pod"

        out = subprocess.run(
            [str(helm), "uninstall", "qorch", *kube, "--namespace", NAMESPACE, "--wait"],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        gone = plane.kubectl("get", "quantumbackend", "aer", check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout
