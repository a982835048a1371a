"""The Helm chart renders, its values are typed, and what it renders is accepted by the
real apiserver (server-side dry run). Its RBAC rules are the file the e2e tests run
the operator under; the gateway's rules are the file test_gateway_auth runs a gateway under."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from devenv.controlplane import REPO, ControlPlane
from devenv.operator import CHART_ENV
from devenv.rbac import RULES
from qorch import cli
from qorch.operator.podspec import LABEL_MANAGED_BY
from qorch.operator.settings import OperatorSettings

pytestmark = pytest.mark.controlplane
CHART = REPO / "charts" / "qorch"
GATEWAY_RULES = CHART / "files" / "gateway-clusterrole-rules.yaml"


@pytest.fixture(scope="module")
def helm() -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "install-helm.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / "helm"


def render(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(helm),
            "template",
            "qorch",
            str(CHART),
            "--namespace",
            "qorch-system",
            "--kube-version",
            "v1.36.3",
            *args,
        ],
        capture_output=True,
        text=True,
        check=check,
    )


def docs_of(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def test_chart_lints(helm: Path) -> None:
    out = subprocess.run([str(helm), "lint", str(CHART)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rendered_chart_is_accepted_by_the_apiserver(
    helm: Path, control_plane: ControlPlane
) -> None:
    manifest = render(helm, "--include-crds").stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "NetworkPolicy",
        "Service",
        "ServiceAccount",
    ]
    role = one(docs, "ClusterRole", "qorch-operator")
    assert role["rules"] == yaml.safe_load(RULES.read_text())
    gateway_role = one(docs, "ClusterRole", "qorch-gateway")
    assert gateway_role["rules"] == yaml.safe_load(GATEWAY_RULES.read_text())
    assert gateway_role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    binding = one(docs, "ClusterRoleBinding", "qorch-gateway")
    assert binding["roleRef"]["name"] == "qorch-gateway"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "qorch-gateway", "namespace": "qorch-system"}
    ]
    assert one(docs, "ServiceAccount", "qorch-gateway")["metadata"]["namespace"] == "qorch-system"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    control_plane.kubectl("create", "namespace", "qorch-system", check=False)
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "replicas=0"], "replicas"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "colour=blue"], "colour"),
        (["--set", "gateway.auth.tokenExpirationSeconds=60"], "tokenExpirationSeconds"),
        (["--set", "gateway.networkPolicy.enabled=maybe"], "enabled"),
        (["--set", "gateway.networkPolicy.podSelector.app=x"], "podSelector"),
        (["--set", "models.refreshSeconds=0"], "refreshSeconds"),
        (["--set", "models.existingClaim=Not_A_Name"], "existingClaim"),
        (["--set", "models.existingClaim=a", "--set", "models.configMaps={b}"], "not both"),
        (["--set", "serviceMonitor.enabled=maybe"], "enabled"),
        (["--set", "serviceMonitor.interval=soon"], "interval"),
        (["--set", "serviceMonitor.scrapeEvery=30s"], "scrapeEvery"),
        (["--set", "serviceMonitor.labels.tier=1"], "tier"),
    ],
)
def test_values_schema_rejects_bad_values(helm: Path, values: list[str], message: str) -> None:
    out = render(helm, *values, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_operator_gets_a_rotating_token_only_gateways_accept(helm: Path) -> None:
    docs = docs_of(render(helm, "--set", "gateway.auth.audience=gw-test").stdout)
    pod = one(docs, "Deployment", "qorch-operator")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "gateway-token"]
    [source] = volume["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == "gw-test"
    assert token["expirationSeconds"] == 3600
    container = pod["containers"][0]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "gateway-token"]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QORCH_GATEWAY_TOKEN_FILE"] == f"{mount['mountPath']}/{token['path']}"


def operator_container(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = one(docs, "Deployment", "qorch-operator")["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_models_come_from_the_image_unless_configmaps_or_a_claim_replace_them(
    helm: Path,
) -> None:
    pod, container = operator_container(docs_of(render(helm).stdout))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QORCH_MODELS_DIR"] == "/opt/qorch/models"  # the Dockerfile copies them there
    assert "models" not in {v["name"] for v in pod["volumes"]}
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "/opt/qorch/models/" in dockerfile and "QORCH_MODELS_DIR=/opt/qorch/models" in dockerfile

    pod, container = operator_container(
        docs_of(
            render(
                helm, "--set", "models.configMaps={models-a,models-b}",
                "--set", "models.refreshSeconds=5",
            ).stdout
        )
    )  # fmt: skip
    env = {e["name"]: e.get("value") for e in container["env"]}
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert env["QORCH_MODELS_DIR"] == mount["mountPath"] and mount["readOnly"] is True
    assert "subPath" not in mount  # a subPath mount would never see ConfigMap updates
    assert env["QORCH_MODEL_REFRESH_SECONDS"] == "5"
    [volume] = [v for v in pod["volumes"] if v["name"] == "models"]
    assert [s["configMap"]["name"] for s in volume["projected"]["sources"]] == [
        "models-a",
        "models-b",
    ]

    pod, container = operator_container(
        docs_of(render(helm, "--set", "models.existingClaim=trained").stdout)
    )
    [volume] = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"] == {"claimName": "trained", "readOnly": True}


def test_network_policy_admits_only_operator_workflow_pods_and_prometheus(helm: Path) -> None:
    docs = docs_of(render(helm, "--set", "gateway.port=9443").stdout)
    policy = one(docs, "NetworkPolicy", "qorch-gateway")["spec"]
    assert policy["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/component": "quantum-gateway"}
    }
    assert policy["policyTypes"] == ["Ingress"]
    callers, scrapers = policy["ingress"]
    operator_labels = one(docs, "Deployment", "qorch-operator")["spec"]["template"]["metadata"][
        "labels"
    ]
    from_operator, from_workflows = callers["from"]
    assert set(from_operator) == {"podSelector"}, "operator pods: the release namespace only"
    selected = from_operator["podSelector"]["matchLabels"]
    assert selected.items() <= operator_labels.items()
    assert selected["app.kubernetes.io/component"] == "operator"
    assert from_workflows == {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {LABEL_MANAGED_BY: "qorch"}},
    }
    assert callers["ports"] == [{"protocol": "TCP", "port": 9443}]
    assert scrapers == {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"protocol": "TCP", "port": 9443}],
    }
    closed = docs_of(
        render(helm, "--set", "gateway.networkPolicy.prometheusNamespaceSelector=null").stdout
    )
    assert len(one(closed, "NetworkPolicy", "qorch-gateway")["spec"]["ingress"]) == 1
    off = docs_of(
        render(
            helm,
            "--set",
            "gateway.networkPolicy.enabled=false",
            "--set",
            "gateway.serviceAccount.create=false",
        ).stdout
    )
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]
    assert not [d for d in off if d["metadata"]["name"] == "qorch-gateway"]


def operator_args(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The operator container's args as the real `qorch operator` parses them."""
    parsed: list[argparse.Namespace] = []

    def capture(args: argparse.Namespace) -> int:
        parsed.append(args)
        return 0

    monkeypatch.setattr(cli, "_operator", capture)
    assert cli.main(container["args"]) == 0
    return parsed[0]


def test_operator_probes_ask_kopfs_health_endpoint(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kopf serves one endpoint (--liveness), opened once the startup handler is done: the
    startupProbe gives that minutes, readiness and liveness ask the same endpoint."""
    _, container = operator_container(docs_of(render(helm).stdout))
    liveness = urllib.parse.urlsplit(operator_args(container, monkeypatch).liveness)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert liveness.port == ports["health"] == 8081
    assert liveness.hostname == "0.0.0.0", "the kubelet probes the pod IP, not loopback"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": liveness.path, "port": "health"}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["readinessProbe"]["timeoutSeconds"] >= 5
    assert container["livenessProbe"]["timeoutSeconds"] >= 5


def test_operator_writes_only_to_an_emptydir_at_tmp_and_home_is_there(helm: Path) -> None:
    pod, container = operator_container(docs_of(render(helm).stdout))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    tmp = mounts["/tmp"]
    assert tmp.get("readOnly") is not True
    [volume] = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert volume == {"name": tmp["name"], "emptyDir": {}}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] == "/tmp"
    # Every other mount is read-only: /tmp is the one place the operator can write.
    assert [m["mountPath"] for m in mounts.values() if not m.get("readOnly")] == ["/tmp"]


def test_metrics_service_selects_the_operator_on_its_exporter_port(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = docs_of(render(helm, "--set", "metricsPort=9102").stdout)
    pod_labels = one(docs, "Deployment", "qorch-operator")["spec"]["template"]["metadata"]["labels"]
    _, container = operator_container(docs)
    service = one(docs, "Service", "qorch-operator-metrics")
    assert service["metadata"]["namespace"] == "qorch-system"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    [port] = service["spec"]["ports"]
    assert port == {"name": "metrics", "port": 9102, "targetPort": "metrics", "protocol": "TCP"}
    assert {"name": "metrics", "containerPort": 9102} in container["ports"]
    # The port the operator's exporter really listens on (settings read from the env).
    for e in container["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    assert OperatorSettings.from_env().metrics_port == 9102


def test_service_monitors_are_off_by_default_one_per_metrics_service_when_on(
    helm: Path, tmp_path: Path
) -> None:
    backends = [
        {"name": "aer", "provider": "aer"},
        {"name": "twin", "provider": "fake", "backendName": "fake_manila"},
    ]
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"backends": backends, "gateway": {"port": 9443}}))
    off = docs_of(render(helm, "-f", str(values)).stdout)
    assert not [d for d in off if d["kind"] == "ServiceMonitor"]

    on = docs_of(
        render(
            helm, "-f", str(values), "--set", "serviceMonitor.enabled=true",
            "--set", "serviceMonitor.interval=45s",
            "--set", "serviceMonitor.labels.release=kube-prometheus-stack",
        ).stdout
    )  # fmt: skip
    services = [d for d in on if d["kind"] == "Service"]
    monitors = [d for d in on if d["kind"] == "ServiceMonitor"]
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        "qorch-gateway-aer",
        "qorch-gateway-twin",
        "qorch-operator",
    ]
    scraped: dict[str, tuple[str, int]] = {}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == "qorch-system"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        assert spec["namespaceSelector"] == {"matchNames": ["qorch-system"]}
        selector = spec["selector"]["matchLabels"]
        [service] = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        [endpoint] = spec["endpoints"]
        assert endpoint["interval"] == "45s" and endpoint["path"] == "/metrics"
        [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        scraped[service["metadata"]["name"]] = (port["name"], port["port"])
    assert scraped == {
        "qorch-operator-metrics": ("metrics", 8080),
        "qorch-gateway-aer": ("http", 9443),
        "qorch-gateway-twin": ("http", 9443),
    }
    # Every scraped Service reaches pods that serve that port.
    deployments = [d for d in on if d["kind"] == "Deployment"]
    for name, (port_name, number) in scraped.items():
        selector = one(on, "Service", name)["spec"]["selector"]
        [deployment] = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]}[port_name] == number

    default_interval = docs_of(
        render(
            helm, "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.interval="
        ).stdout
    )
    [monitor] = [d for d in default_interval if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics"}]


def test_the_development_operator_runs_with_the_charts_settings(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make demo`` and the benchmarks run the operator with ``devenv.operator.CHART_ENV``:
    each value is the chart's where the chart sets it, else the operator's own default."""
    _, container = operator_container(docs_of(render(helm).stdout))
    chart_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The peering priority is the start time, different at each start.
    defaults = dataclasses.replace(OperatorSettings(), priority=0)
    for name, value in CHART_ENV.items():
        if name in chart_env:
            assert chart_env[name] == value, name
            continue
        monkeypatch.setenv(name, value)
        settings = dataclasses.replace(OperatorSettings.from_env(), priority=0)
        assert settings == defaults, f"{name}={value} is not the default"
        monkeypatch.delenv(name)
