"""E2E fixtures: a real operator process against the session's control plane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import operator as operator_mod
from tests.harness.controlplane import ControlPlane
from tests.harness.rbac import least_privilege_kubeconfig


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
