"""The operator as the tests run it: ``devenv.operator`` with the test settings, and by
default with the scripted gateway (a test double, ``tests.harness.scripted_operator``) in
place of the HTTP client: the same operator, in one process, whose jobs queue and run
for ``QORCH_TEST_SCRIPTED_QUEUE_SECONDS`` / ``QORCH_TEST_SCRIPTED_RUN_SECONDS`` (in
``extra_env``). ``gateway="http"`` runs the real ``qorch operator``, which talks to the
QuantumBackends' gateways."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from devenv import operator as devenv_operator
from devenv.controlplane import REPO, ControlPlane
from devenv.operator import PEERING, OperatorProcess

__all__ = ["GATEWAYS", "PEERING", "Gateway", "OperatorProcess", "running", "start"]
Gateway = Literal["scripted", "http"]
GATEWAYS: tuple[Gateway, ...] = ("scripted", "http")


def start(
    plane: ControlPlane,
    log_path: Path,
    priority: int | None = None,
    extra_env: dict[str, str] | None = None,
    kubeconfig: Path | None = None,
    gateway: Gateway | None = None,
) -> OperatorProcess:
    """``devenv.operator.start`` with the test settings; ``gateway``: "scripted" (default)
    or "http" (see the module's doc)."""
    mode = gateway or "scripted"
    if mode not in GATEWAYS:
        raise ValueError(f"gateway {mode!r}: expected one of {', '.join(GATEWAYS)}")
    env = dict(extra_env or {})
    launcher: tuple[str, ...] = ("-m", "qorch.cli")
    if mode == "scripted":
        # The launcher imports ``tests``: the repository root goes on the path, after what
        # is there (a run that put a copy of ``qorch`` first keeps it first).
        path = env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join([*([path] if path else []), str(REPO)])
        launcher = ("-m", "tests.harness.scripted_operator")
    return devenv_operator.start(
        plane,
        log_path,
        priority=priority,
        extra_env=env,
        kubeconfig=kubeconfig,
        settings="test",
        launcher=launcher,
    )


def running(plane: ControlPlane, log_path: Path, **kwargs: object) -> OperatorProcess:
    """``start``, as a context manager that stops the operator on leaving it."""
    return start(plane, log_path, **kwargs)  # type: ignore[arg-type]
