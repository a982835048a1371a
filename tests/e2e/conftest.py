"""E2E fixtures: a real operator process against the session's control plane."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devenv.cluster import Cluster
from devenv.controlplane import ControlPlane
from devenv.rbac import least_privilege_kubeconfig
from tests.harness import operator as operator_mod


@pytest.fixture(scope="module")
def operator_process(
    control_plane: ControlPlane, session_dir: Path, request: pytest.FixtureRequest
) -> Iterator[operator_mod.OperatorProcess]:
    """The operator runs as the chart's ServiceAccount: least-privilege RBAC must suffice."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    kubeconfig = least_privilege_kubeconfig(control_plane, session_dir / f"sa-{module}.yaml")
    with operator_mod.running(
        control_plane, session_dir / f"operator-{module}.log", kubeconfig=kubeconfig
    ) as op:
        yield op


@pytest.fixture
def own_operator(
    control_plane: ControlPlane, session_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """An operator this test may kill; extra settings come from the test's parameters.
    ``gateway``: "scripted" (the default: the harness's test double) or "http" (the real
    ``qorch operator`` and the QuantumBackends' gateways)."""
    started: list[operator_mod.OperatorProcess] = []

    def start(
        gateway: operator_mod.Gateway | None = None, **env: str
    ) -> operator_mod.OperatorProcess:
        kubeconfig = least_privilege_kubeconfig(control_plane, session_dir / "sa-trust.yaml")
        op = operator_mod.start(
            control_plane,
            session_dir / f"operator-{request.node.name}.log",
            kubeconfig=kubeconfig,
            extra_env=env,
            gateway=gateway,
        )
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def scripted_backend(name: str, **spec: Any) -> dict[str, Any]:
    """A QuantumBackend manifest for the harness's scripted gateway (which ignores the
    URL): an aer backend of 4 qubits unless ``spec`` says otherwise."""
    return {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "QuantumBackend",
        "metadata": {"name": name},
        "spec": {
            "provider": "aer",
            "numQubits": 4,
            "gateway": {"url": "http://127.0.0.1:9"},
            **spec,
        },
    }


@pytest.fixture
def backend(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A QuantumBackend for the harness's scripted gateway (which ignores the URL)."""
    name = f"qb-{namespace}"[:63].rstrip("-")
    cluster.apply(json.dumps(scripted_backend(name)))
    yield name
    cluster.plane.kubectl("delete", "qb", name, "--wait=false", check=False)
