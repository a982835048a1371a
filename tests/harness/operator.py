"""Run ``qorch operator`` as a real process against the test control plane.

``gateway="scripted"`` (the default) runs it through ``tests.harness.scripted_operator``:
the same operator, in one process, with the in-memory ``ScriptedGateway`` test double in
place of the HTTP client (how long its jobs queue and run:
``QORCH_TEST_SCRIPTED_QUEUE_SECONDS`` / ``QORCH_TEST_SCRIPTED_RUN_SECONDS`` in
``extra_env``). ``gateway="http"`` runs the real ``qorch operator`` command, which talks to
the QuantumBackends' gateways.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.harness.controlplane import ControlPlane, environ_for, free_port

REPO = Path(__file__).resolve().parents[2]
Gateway = Literal["scripted", "http"]
GATEWAYS: tuple[Gateway, ...] = ("scripted", "http")
PEERING = """
apiVersion: kopf.dev/v1
kind: ClusterKopfPeering
metadata: {name: qorch}
"""


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start(
    plane: ControlPlane,
    log_path: Path,
    priority: int | None = None,
    extra_env: dict[str, str] | None = None,
    kubeconfig: Path | None = None,
    gateway: Gateway | None = None,
) -> OperatorProcess:
    """``kubeconfig``: the identity the operator runs as (default: the cluster admin).
    ``gateway``: "scripted" (default) or "http" (see the module's doc)."""
    mode = gateway or "scripted"
    if mode not in GATEWAYS:
        raise ValueError(f"gateway {mode!r}: expected one of {', '.join(GATEWAYS)}")
    plane.kubectl("apply", "-f", "-", input=PEERING)
    metrics_port = free_port()
    env = environ_for(plane)
    env.update(
        {
            "QORCH_RETRY_BACKOFF_SECONDS": "1",
            "QORCH_RESYNC_SECONDS": "2",
            "QORCH_PEERING_LIFETIME_SECONDS": "10",
            # Short bounds so tests see what happens after them.
            "QORCH_SOURCE_WAIT_SECONDS": "6",
            "QORCH_GATEWAY_UNKNOWN_GRACE_SECONDS": "15",
            "QORCH_METRICS_PORT": str(metrics_port),
            # The models the image ships, as a deployment serves them.
            "QORCH_MODELS_DIR": str(REPO / "models"),
            "PYTHONUNBUFFERED": "1",
            **({"QORCH_PRIORITY": str(priority)} if priority is not None else {}),
            **(extra_env or {}),
        }
    )
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    if mode == "scripted":
        # The launcher imports ``tests``: the repository root goes on the path, after what
        # is there (a run that put a copy of ``qorch`` first keeps it first).
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = os.pathsep.join([*([path] if path else []), str(REPO)])
        module = "tests.harness.scripted_operator"
        command = [sys.executable, "-m", module, "--liveness", ""]
    else:
        command = [sys.executable, "-m", "qorch.cli", "operator", "--liveness", ""]
    log = log_path.open("ab")
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return OperatorProcess(proc, log_path, metrics_port)


@contextlib.contextmanager
def running(plane: ControlPlane, log_path: Path, **kwargs: object) -> Iterator[OperatorProcess]:
    op = start(plane, log_path, **kwargs)  # type: ignore[arg-type]
    try:
        yield op
    finally:
        op.stop()
