"""The Kustomize base (deploy/kustomize/base) is what the Helm chart renders, builds with
the kustomize inside kubectl, and the example overlay moves everything to its namespace and
image and is accepted by the real apiserver (server-side dry run).

Rendering needs helm and kubectl, built from Go modules into the cache like the chart
tests' (hack/install-helm.sh, hack/build-control-plane.sh): the whole module is marked
``controlplane``, as the chart tests are."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from devenv.controlplane import REPO, ControlPlane, control_plane_bin_dir

pytestmark = pytest.mark.controlplane
KUSTOMIZE = REPO / "deploy" / "kustomize"
RENDER = KUSTOMIZE / "render_base.py"
OVERLAY = KUSTOMIZE / "overlays" / "example"
OVERLAY_NAMESPACE = "qorch"
OVERLAY_IMAGE = "registry.example.com/qorch/qorch:0.1.0"
# Kustomize knows the scope of built-in kinds only; the overlay takes the namespace off
# the one cluster-scoped custom kind (ClusterKopfPeering) itself.
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
}

Key = tuple[str, str, str | None]


@pytest.fixture(scope="module")
def kubectl() -> Path:
    return control_plane_bin_dir() / "kubectl"


@pytest.fixture(scope="module")
def helm() -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "install-helm.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / "helm"


def render_base() -> ModuleType:
    """deploy/kustomize/render_base.py (a script, not a package), for its helm call."""
    spec = importlib.util.spec_from_file_location("render_base", RENDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kustomize(kubectl: Path, path: Path) -> str:
    out = subprocess.run(
        [str(kubectl), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


class Yaml12Loader(yaml.SafeLoader):
    """Reads ``1e-12`` as a float, as Go's YAML (kubectl, the apiserver, Argo CD) does:
    kustomize re-emits the CRDs' ``1.0e-12`` so, which YAML 1.1 (PyYAML) takes for a string."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def docs_of(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(manifest, Loader=Yaml12Loader) if d]


def key(doc: dict[str, Any]) -> Key:
    return doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")


def test_the_committed_base_is_what_the_chart_renders(helm: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(RENDER), "--check", "--helm", str(helm)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_base_builds_to_the_charts_objects(kubectl: Path, helm: Path) -> None:
    rendered = render_base().helm_template(helm)
    chart = {key(d): d for d in docs_of(rendered)}
    base = {key(d): d for d in docs_of(kustomize(kubectl, KUSTOMIZE / "base"))}
    assert sorted(base, key=str) == sorted(chart, key=str)
    assert base == chart, "kustomize changed an object of the chart's"


def test_the_example_overlay_moves_namespace_and_image(kubectl: Path) -> None:
    manifest = kustomize(kubectl, OVERLAY)
    assert "qorch-system" not in manifest
    docs = docs_of(manifest)
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    assert namespaces == {OVERLAY_NAMESPACE}
    for doc in docs:
        where = doc["metadata"].get("namespace")
        if doc["kind"] in CLUSTER_SCOPED:
            assert where is None, f"{key(doc)}: a cluster-scoped object with a namespace"
        else:
            assert where == OVERLAY_NAMESPACE, key(doc)
    bindings = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert bindings
    for binding in bindings:
        for subject in binding["subjects"]:
            assert subject["namespace"] == OVERLAY_NAMESPACE, key(binding)
    (operator,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == OVERLAY_IMAGE
    assert env["QORCH_WORKER_IMAGE"] == OVERLAY_IMAGE


def test_the_example_overlay_is_accepted_by_the_apiserver(
    kubectl: Path, control_plane: ControlPlane
) -> None:
    manifest = kustomize(kubectl, OVERLAY)
    # A server-side dry run creates no namespace: the namespaced objects need it to exist.
    control_plane.kubectl("create", "namespace", OVERLAY_NAMESPACE, check=False)
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert out.returncode == 0, out.stderr
