"""A real Prometheus server (Debian's package) on a free loopback port.

Targets are given through ``file_sd_configs`` so a test can add the processes it
starts (gateway, worker) while the server runs; the scrape interval is 1 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.controlplane import REPO, free_port


def prometheus_binary() -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "install-prometheus.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1]) / "prometheus"


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    targets_file: Path
    workdir: Path

    def set_targets(
        self, job: str, targets: list[str], labels: dict[str, str] | None = None
    ) -> None:
        """Replace the scrape targets of ``job`` (written atomically; picked up in ~1 s)."""
        current: list[dict[str, Any]] = []
        if self.targets_file.exists():
            current = [
                g
                for g in json.loads(self.targets_file.read_text())
                if g["labels"].get("job") != job
            ]
        current.append({"targets": targets, "labels": {"job": job, **(labels or {})}})
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(current))
        tmp.replace(self.targets_file)

    def query(self, promql: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as resp:
            body = json.loads(resp.read())
        return list(body["data"]["result"])

    def restart(self, *, kill: bool = False, timeout: float = 30.0) -> float:
        """Stop the server and start it again in place: same port, configuration, targets
        and TSDB directory (its log is appended to). ``kill``: SIGKILL instead of SIGTERM.
        Returns the seconds until ``/-/ready`` answered again."""
        argv = [str(a) for a in self.process.args]  # type: ignore[union-attr]
        started = time.monotonic()
        if kill and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.stop()
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_ready(self, timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start(workdir: Path) -> Prometheus:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    targets = workdir / "targets.json"
    targets.write_text("[]")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "- job_name: qorch\n"
        "  file_sd_configs:\n"
        f"  - files: ['{targets}']\n"
        "    refresh_interval: 1s\n"
    )
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            str(prometheus_binary()),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, targets, workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "prometheus.log").read_text())
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp,
        ):
            if resp.status == 200:
                return prom
        time.sleep(0.2)
    prom.stop()
    raise TimeoutError("prometheus not ready after 30 s")


def _wait_ready(prom: Prometheus, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.process.poll() is not None:
            raise RuntimeError((prom.workdir / "prometheus.log").read_text()[-4000:])
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"prometheus not ready {timeout} s after its restart")


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[Prometheus]:
    prom = start(workdir)
    try:
        yield prom
    finally:
        prom.stop()
