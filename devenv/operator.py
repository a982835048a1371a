"""Run ``qorch operator`` as a real process against the development control plane.

``settings="chart"`` (``make demo``, the benchmarks): the chart's settings (``CHART_ENV``,
``charts/qorch/templates/deployment.yaml``; ``tests/integration/test_chart.py`` fails when
the two drift apart). ``settings="test"`` (the tests): short bounds, so that tests see what
happens after a resync, a lost gateway or a peering lease in seconds (``TEST_ENV``). Either
way the models are the repository's, as the image serves them, and ``kubeconfig`` is the
identity it runs as (``devenv.rbac.least_privilege_kubeconfig``: the chart's RBAC).
``launcher``: the Python arguments that start it (default ``-m qorch.cli``; the tests swap
in a launcher of their own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devenv.controlplane import ControlPlane, environ_for, free_port

REPO = Path(__file__).resolve().parents[1]
Settings = Literal["chart", "test"]
# The chart's operator settings (values.yaml, templates/deployment.yaml), and the
# operator's own defaults where the chart sets none.
CHART_ENV = {
    "QORCH_RETRY_BACKOFF_SECONDS": "10",
    "QORCH_METRICS_REFRESH_SECONDS": "15",
    "QORCH_MODEL_REFRESH_SECONDS": "30",
    "QORCH_WORKER_IMAGE": "ghcr.io/qorch/qorch:0.1.0",
    "QORCH_RESYNC_SECONDS": "10",
    "QORCH_PEERING_LIFETIME_SECONDS": "60",
    "QORCH_SOURCE_WAIT_SECONDS": "120",
    "QORCH_GATEWAY_UNKNOWN_GRACE_SECONDS": "60",
}
TEST_ENV = {
    "QORCH_RETRY_BACKOFF_SECONDS": "1",
    "QORCH_RESYNC_SECONDS": "2",
    "QORCH_PEERING_LIFETIME_SECONDS": "10",
    "QORCH_SOURCE_WAIT_SECONDS": "6",
    "QORCH_GATEWAY_UNKNOWN_GRACE_SECONDS": "15",
}
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

    def __enter__(self) -> OperatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    plane: ControlPlane,
    log_path: Path,
    priority: int | None = None,
    extra_env: dict[str, str] | None = None,
    kubeconfig: Path | None = None,
    settings: Settings = "test",
    launcher: Sequence[str] = ("-m", "qorch.cli"),
) -> OperatorProcess:
    """Start ``qorch operator`` (see the module's doc); ``extra_env`` goes last."""
    plane.kubectl("apply", "-f", "-", input=PEERING)
    metrics_port = free_port()
    env = environ_for(plane)
    env.update(
        {
            **(CHART_ENV if settings == "chart" else TEST_ENV),
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
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, *launcher, "operator", "--liveness", ""],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return OperatorProcess(proc, log_path, metrics_port)


def running(plane: ControlPlane, log_path: Path, **kwargs: object) -> OperatorProcess:
    """``start``, as a context manager that stops the operator on leaving it."""
    return start(plane, log_path, **kwargs)  # type: ignore[arg-type]
