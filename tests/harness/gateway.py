"""Run ``qorch gateway`` as a real process on a free loopback port.

Without ``auth`` the gateway runs with ``--auth none`` (said explicitly: its default refuses
every caller); tests of authentication pass ``--auth tokenreview ...`` and the ``kubeconfig``
of an identity that may create TokenReviews."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.controlplane import free_port


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start(
    log_path: Path,
    *args: str,
    auth: Sequence[str] = ("--auth", "none"),
    kubeconfig: Path | None = None,
) -> GatewayProcess:
    port = free_port()
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qorch.cli",
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *auth,
            *args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    gw = GatewayProcess(proc, port, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log_path.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{gw.url}/healthz", timeout=1):
            return gw
        time.sleep(0.2)
    gw.stop()
    raise TimeoutError(f"gateway not healthy after 60 s: {log_path.read_text()[-2000:]}")


@contextlib.contextmanager
def running(
    log_path: Path,
    *args: str,
    auth: Sequence[str] = ("--auth", "none"),
    kubeconfig: Path | None = None,
) -> Iterator[GatewayProcess]:
    gw = start(log_path, *args, auth=auth, kubeconfig=kubeconfig)
    try:
        yield gw
    finally:
        gw.stop()


def call(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One JSON request to a gateway: status, response headers and the decoded body (the
    text itself when it is not JSON), for error answers too."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status, got = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, got, payload
