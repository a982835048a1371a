"""E2E fixtures: a real operator process against the session's control plane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import operator as operator_mod
from tests.harness.controlplane import ControlPlane


@pytest.fixture(scope="module")
def operator_process(
    control_plane: ControlPlane, session_dir: Path, request: pytest.FixtureRequest
) -> Iterator[operator_mod.OperatorProcess]:
    log = session_dir / f"operator-{request.module.__name__.rsplit('.', 1)[-1]}.log"
    with operator_mod.running(control_plane, log) as op:
        yield op
