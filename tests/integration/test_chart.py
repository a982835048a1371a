"""The Helm chart renders, its values are typed, and what it renders is accepted by the
real apiserver (server-side dry run). Its RBAC rules are the file the e2e tests run
the operator under."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness.controlplane import REPO, ControlPlane
from tests.harness.rbac import RULES

pytestmark = pytest.mark.controlplane
CHART = REPO / "charts" / "qorch"


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
        "ServiceAccount",
    ]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role["rules"] == yaml.safe_load(RULES.read_text())
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
    ],
)
def test_values_schema_rejects_bad_values(helm: Path, values: list[str], message: str) -> None:
    out = render(helm, *values, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
