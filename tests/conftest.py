"""Session fixtures: a real control plane (etcd, kube-apiserver, controller-manager,
scheduler, KWOK) and a real Prometheus, both started on loopback on first use.

For manual debugging, the kubeconfig path is printed at start; or run
``python -m devenv.controlplane`` for a cluster that stays up.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.harness` importable whatever the rootdir

from devenv import controlplane as cp_mod  # noqa: E402
from devenv import prometheus as prom_mod  # noqa: E402
from devenv.cluster import Cluster  # noqa: E402


@pytest.fixture(scope="session")
def session_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Logs of every process the tests start; kept (and named on stderr) when a test fails."""
    path = Path(tempfile.mkdtemp(prefix="qorch-test-"))
    yield path
    if request.session.testsfailed or os.environ.get("QORCH_KEEP_TEST_DIR"):
        sys.stderr.write(f"\n[qorch] logs kept in {path}\n")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def control_plane(session_dir: Path) -> Iterator[cp_mod.ControlPlane]:
    plane = cp_mod.start(session_dir / "control-plane", crds=REPO / "crds")
    sys.stderr.write(f"\n[qorch] control plane up: export KUBECONFIG={plane.kubeconfig}\n")
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def cluster(control_plane: cp_mod.ControlPlane) -> Cluster:
    return Cluster(control_plane)


@pytest.fixture(scope="session")
def prometheus(session_dir: Path) -> Iterator[prom_mod.Prometheus]:
    with prom_mod.running(session_dir / "prometheus") as prom:
        yield prom


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, so tests cannot see each other's objects."""
    name = cluster.new_namespace(request.node.name)
    yield name
    if not os.environ.get("QORCH_KEEP_NAMESPACES"):
        cluster.plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
