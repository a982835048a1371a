"""The classical side of a local run: each worker pod the planner asks for is a process here.

The planner's actions are the operator's: ``CreatePod`` makes a gated pod (the manifest
``build_pod`` writes for the cluster, kept to start from), ``ReleasePod`` starts it (this
machine is the node of every pool it can hold), ``DeletePod`` stops it (SIGTERM, then
SIGKILL), ``RoutePod`` rewrites the route file a variational worker reads before each batch.
A process is started as the pod's container would be: its command, and its env with what
the cluster would mount turned into files of the pod's own directory (results of the
dependencies under ``$QORCH_INPUTS_DIR``, the worker's result at ``$QORCH_RESULT_PATH``,
the route at ``$QORCH_ROUTE_FILE``). ``qorch`` and ``python`` resolve to this installation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qorch.api.workflow import Placement, VariationalProgress
from qorch.operator.podspec import (
    POOL_ANNOTATION,
    POOL_MOVES_ANNOTATION,
    ROUTE_ANNOTATION,
    pod_state,
)
from qorch.orchestrator.plan import DependencyResult
from qorch.orchestrator.snapshot import PodPhase, PodState

STOP_GRACE_SECONDS = 5.0
PROGRESS_TIMEOUT_SECONDS = 0.5
# The fields of a variational progress that a worker reports (the spend is the planner's).
_REPORTED = frozenset(VariationalProgress.model_fields) - {"spentUSD"}


@dataclass
class LocalPod:
    name: str
    manifest: dict[str, Any]
    directory: Path
    released: bool = False
    pool: str | None = None
    pool_moves: int = 0
    route: str = ""  # the route JSON (variational)
    process: subprocess.Popen[bytes] | _Exited | None = None
    started: float | None = None  # monotonic
    ended: float | None = None
    exit_code: int | None = None
    deleted: bool = False
    progress_port: int = 0
    progress: VariationalProgress | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.exit_code is None

    def body(self) -> dict[str, Any]:
        """The pod as the apiserver would show it: its manifest, released to this machine's
        node of its pool, with the status its process gives it."""
        body: dict[str, Any] = json.loads(json.dumps(self.manifest))
        meta = body["metadata"]
        annotations = meta.setdefault("annotations", {})
        if self.released:
            body["spec"].pop("schedulingGates", None)
            body["spec"]["nodeName"] = local_node(self.pool or "")
            if self.pool is not None:
                annotations[POOL_ANNOTATION] = self.pool
                annotations[POOL_MOVES_ANNOTATION] = str(self.pool_moves)
        if self.route:
            annotations[ROUTE_ANNOTATION] = self.route
        body["status"] = self._status()
        return body

    def state(self) -> PodState:
        """The pod as the operator reads a real one (``pod_state``)."""
        state = pod_state(self.body())
        if state.variational and state.phase is PodPhase.RUNNING and self.progress is not None:
            state = replace(state, progress=self.progress)
        return state

    def _status(self) -> dict[str, Any]:
        if not self.released or self.process is None:
            return {"phase": "Pending"}
        if self.exit_code is None:
            return {"phase": "Running", "podIP": "127.0.0.1"}
        result_path = self.directory / "result"
        message = result_path.read_text() if result_path.exists() else ""
        if self.exit_code != 0 and not message:
            message = _tail(self.directory / "log", 1024)
        terminated = {"exitCode": self.exit_code, "message": message}
        if self.exit_code != 0:
            terminated["reason"] = "Error"
        return {
            "phase": "Succeeded" if self.exit_code == 0 else "Failed",
            "containerStatuses": [{"name": "subtask", "state": {"terminated": terminated}}],
        }


class LocalPods:
    """The run's pods, by name; ``poll()`` notes the processes that ended."""

    def __init__(self, workdir: Path, config_maps: Mapping[str, Mapping[str, str]]) -> None:
        self.workdir = workdir.resolve()
        self.config_maps = config_maps
        self.pods: dict[str, LocalPod] = {}
        # Results stored apart (``StoreResult``: too large to inline), by ConfigMap name.
        self.stored: dict[str, dict[str, Any]] = {}

    # -- the planner's actions ---------------------------------------------------------
    def create(
        self,
        manifest: dict[str, Any],
        inputs: tuple[DependencyResult, ...],
        route: str | None,
    ) -> None:
        name = manifest["metadata"]["name"]
        if name in self.pods:
            return  # a replayed plan
        directory = self.workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        if inputs:
            folder = directory / "inputs"
            folder.mkdir(exist_ok=True)
            for dep in inputs:
                result = dep.result if dep.config_map is None else self.stored.get(dep.config_map)
                (folder / f"{dep.subtask}.json").write_text(
                    json.dumps(result, separators=(",", ":"))
                )
        self.pods[name] = LocalPod(name, manifest, directory, route=route or "")

    def release(self, name: str, pool: str, moves: int) -> None:
        pod = self.pods.get(name)
        if pod is None or pod.released:
            return
        pod.released, pod.pool, pod.pool_moves = True, pool, moves
        if pod.route:
            (pod.directory / "route").write_text(pod.route)
        pod.progress_port = _free_port() if pod.route else 0
        env = self._env(pod)
        container = pod.manifest["spec"]["containers"][0]
        argv = [*container.get("command", []), *container.get("args", [])]
        if not argv:
            raise ValueError(f"pod {name}: a classical step needs a command to run locally")
        argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        log = (pod.directory / "log").open("wb")
        try:
            pod.process = subprocess.Popen(
                argv,
                env=env,
                cwd=pod.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.write(f"cannot start {argv[0]}: {exc}\n".encode())
            pod.process = _Exited(127)
        finally:
            log.close()
        pod.started = time.monotonic()

    def delete(self, name: str) -> None:
        pod = self.pods.get(name)
        if pod is None or pod.deleted:
            return
        pod.deleted = True
        _stop(pod)

    def route(self, name: str, route: str) -> None:
        pod = self.pods.get(name)
        if pod is None:
            return
        pod.route = route
        if pod.released:
            # Written whole, then renamed: the worker never reads half a route.
            tmp = pod.directory / "route.tmp"
            tmp.write_text(route)
            tmp.replace(pod.directory / "route")

    def store(self, config_map: str, result: dict[str, Any]) -> None:
        self.stored[config_map] = result

    # -- what the planner reads ----------------------------------------------------------
    def poll(self) -> bool:
        """Note the processes that ended; True when any did."""
        changed = False
        for pod in self.pods.values():
            if pod.process is not None and pod.exit_code is None:
                code = pod.process.poll()
                if code is not None:
                    pod.exit_code, pod.ended, changed = code, time.monotonic(), True
        return changed

    def states(self) -> list[PodState]:
        return [p.state() for p in self.pods.values() if not p.deleted]

    def read_progress(self) -> None:
        """The progress each running variational worker serves (``/progress``)."""
        for pod in self.pods.values():
            if pod.running and pod.progress_port:
                pod.progress = _progress(pod.progress_port) or pod.progress

    def running(self) -> list[LocalPod]:
        return [p for p in self.pods.values() if p.running and not p.deleted]

    def log_tail(self, name: str, limit: int = 4096) -> str:
        """The end of what the pod's process printed (stdout and stderr)."""
        pod = self.pods.get(name)
        return _tail(pod.directory / "log", limit) if pod is not None else ""

    def stop_all(self) -> None:
        for pod in self.pods.values():
            if pod.running:
                _stop(pod)

    # -- helpers -----------------------------------------------------------------------
    def _env(self, pod: LocalPod) -> dict[str, str]:
        env = dict(os.environ)
        here = str(Path(sys.executable).parent)
        env["PATH"] = here + os.pathsep + env.get("PATH", "")
        container = pod.manifest["spec"]["containers"][0]
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
            else:
                ref = (item.get("valueFrom") or {}).get("configMapKeyRef") or {}
                env[item["name"]] = self.config_maps.get(ref.get("name", ""), {}).get(
                    ref.get("key", ""), ""
                )
        env["QORCH_RESULT_PATH"] = str(pod.directory / "result")
        if (pod.directory / "inputs").is_dir():
            env["QORCH_INPUTS_DIR"] = str(pod.directory / "inputs")
        if "QORCH_ROUTE_FILE" in env:
            env["QORCH_ROUTE_FILE"] = str(pod.directory / "route")
        env.pop("QORCH_GATEWAY_TOKEN_FILE", None)  # the local gateways check no token
        env["QORCH_METRICS_ADDR"] = "127.0.0.1"
        env["QORCH_METRICS_PORT"] = str(pod.progress_port)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


class _Exited:
    """A process that could not start: it has ended, with ``code``."""

    def __init__(self, code: int) -> None:
        self.returncode = code

    def poll(self) -> int:
        return self.returncode


def local_node(pool: str) -> str:
    """The node that stands for this machine in ``pool`` (one per pool: pools select
    their nodes by labels that exclude each other, e.g. qorch.io/pool=cpu or =gpu)."""
    return f"local-{pool}"


def route_json(route: Placement, moves: int, url: str | None, backend_name: str | None) -> str:
    """The ``qorch.io/route`` document, as the operator's applier writes it."""
    doc: dict[str, str | int] = {"kind": route.kind.value, "name": route.name, "moves": moves}
    if url is not None and backend_name is not None:
        doc.update(url=url, backendName=backend_name)
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _stop(pod: LocalPod) -> None:
    process = pod.process
    if process is None or not isinstance(process, subprocess.Popen) or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _progress(port: int) -> VariationalProgress | None:
    url = f"http://127.0.0.1:{port}/progress"
    try:
        with urllib.request.urlopen(url, timeout=PROGRESS_TIMEOUT_SECONDS) as resp:
            doc = json.loads(resp.read(64 * 1024))
        return VariationalProgress.model_validate({k: v for k, v in doc.items() if k in _REPORTED})
    except (OSError, ValueError):
        return None


def _tail(path: Path, limit: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")
