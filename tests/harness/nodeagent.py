"""A test-only node agent: a tiny kubelet that runs the pods bound to its node as local
processes and reports their status, so workflows applied with kubectl really compute.

It registers its Node (Ready, with a heartbeat and a Lease), watches pods bound to it,
runs each container's command on this machine (the image is ignored: the repository's
virtual environment provides ``qorch`` and ``python``), and writes the pod status the
way a kubelet does: Running, then Succeeded/Failed with the exit code and the
termination message read from the file the container wrote. Deleted pods are killed
and removed.

Like a kubelet it also gives each pod its own IP (a loopback address 127.0.0.N, passed
as ``QORCH_METRICS_ADDR`` so the worker listens there) and materialises the pod's
volumes under its run directory: emptyDir, downwardAPI (annotations, rewritten when
they change) and projected/configMap volumes (ConfigMap keys; ServiceAccount tokens are
not minted). Environment values that name a path under a volume's mountPath are
rewritten to the materialised path.

    python -m tests.harness.nodeagent --kubeconfig K --node agent-0 --pool local --workdir D
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kubernetes import client, config, watch

log = logging.getLogger("nodeagent")
TERMINATION_LIMIT = 4096


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeAgent:
    def __init__(
        self, api: client.ApiClient, node: str, pool: str, workdir: Path, bin_dir: Path
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.node = node
        self.pool = pool
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.mounts: dict[str, Path] = {}  # pod key -> its materialised volumes
        self.next_ip = 2
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    # ---- node -------------------------------------------------------------------------

    def register(self) -> None:
        capacity = {"cpu": "8", "memory": "16Gi", "pods": "50"}
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "qorch.io/pool": self.pool,
                    "qorch.io/node-agent": "true",
                },
            },
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": self._conditions(),
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "nodeInfo": _node_info(),
            },
        }
        try:
            self.core.create_node(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        self.heartbeat()

    def _conditions(self) -> list[dict[str, str]]:
        t = now()
        return [
            {
                "type": "Ready",
                "status": "True",
                "reason": "NodeAgentReady",
                "message": "test node agent is running",
                "lastHeartbeatTime": t,
                "lastTransitionTime": t,
            }
        ]

    def heartbeat(self) -> None:
        self.core.patch_node_status(self.node, {"status": {"conditions": self._conditions()}})
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": 40,
                "renewTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coord.patch_namespaced_lease(self.node, "kube-node-lease", {"spec": lease["spec"]})
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", lease)

    def heartbeat_forever(self) -> None:
        while not self.stopping.wait(5):
            try:
                self.heartbeat()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    # ---- pods -------------------------------------------------------------------------

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while not self.stopping.is_set():
            try:
                for ev in watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    timeout_seconds=5,
                ):
                    self.handle(ev["object"])
            except Exception as exc:
                log.warning("watch failed: %s", exc)
                time.sleep(1)

    def handle(self, pod: client.V1Pod) -> None:
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        if pod.metadata.deletion_timestamp is not None:
            self.kill(key)
            try:
                self.core.delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                )
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
            return
        if (pod.status.phase or "Pending") != "Pending":
            if key in self.mounts and key in self.procs:
                self._downward(pod, self.mounts[key])  # annotations may have changed
            return
        with self.lock:
            if key in self.procs:
                return
            self.start(pod, key)

    def start(self, pod: client.V1Pod, key: str) -> None:
        container = pod.spec.containers[0]
        command = [*(container.command or []), *(container.args or [])]
        run_dir = self.workdir / pod.metadata.uid
        run_dir.mkdir(parents=True, exist_ok=True)
        result_file = run_dir / "termination-log"
        ip = f"127.0.0.{self.next_ip}"
        self.next_ip = self.next_ip % 250 + 2
        env = {
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(run_dir),
            "PYTHONUNBUFFERED": "1",
            "QORCH_RESULT_PATH": str(result_file),
            "QORCH_METRICS_ADDR": ip,
        }
        mounts = run_dir / "volumes"
        try:
            own = self._env(pod, container)
            paths = self._volumes(pod, container, mounts)
        except (client.ApiException, KeyError) as exc:
            why = exc.reason if isinstance(exc, client.ApiException) else f"missing key {exc}"
            self._finish(pod, 1, f"CreateContainerConfigError: {why}", "Error")
            return
        for name, value in own.items():  # the pod's own paths, not the agent's
            for mount_path, local in paths.items():
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    own[name] = str(local) + value[len(mount_path.rstrip("/")) :]
        # The kubelet mounts the termination message file at the container's
        # terminationMessagePath; here that path is the run directory's file.
        message_path = container.termination_message_path or "/dev/termination-log"
        own = {k: str(result_file) if v == message_path else v for k, v in own.items()}
        env.update(own)
        self.mounts[key] = mounts
        if not command:
            self._finish(pod, 1, "the test node agent needs an explicit command", "Error")
            return
        log_file = (run_dir / "output.log").open("wb")
        try:
            proc = subprocess.Popen(
                command,
                env=env,
                cwd=run_dir,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            self._finish(pod, 127, f"cannot start {command[0]!r}: {exc}", "StartError")
            return
        self.procs[key] = proc
        started = now()
        self.core.patch_namespaced_pod_status(
            pod.metadata.name,
            pod.metadata.namespace,
            {
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "hostIP": "127.0.0.1",
                    "startTime": started,
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": started}
                    ],
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "image": container.image,
                            "imageID": "",
                            "ready": True,
                            "restartCount": 0,
                            "started": True,
                            "state": {"running": {"startedAt": started}},
                        }
                    ],
                }
            },
        )
        threading.Thread(
            target=self._wait, args=(pod, key, proc, result_file, started), daemon=True
        ).start()

    def _env(self, pod: client.V1Pod, container: client.V1Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.value_from and var.value_from.config_map_key_ref:
                ref = var.value_from.config_map_key_ref
                cm = self.core.read_namespaced_config_map(ref.name, pod.metadata.namespace)
                env[var.name] = (cm.data or {})[ref.key]
        return env

    def _volumes(
        self, pod: client.V1Pod, container: client.V1Container, root: Path
    ) -> dict[str, Path]:
        """Materialise the container's volumes; returns mountPath -> local directory."""
        by_name = {v.name: v for v in pod.spec.volumes or []}
        paths: dict[str, Path] = {}
        for mount in container.volume_mounts or []:
            volume = by_name.get(mount.name)
            if volume is None:
                continue
            where = root / mount.name
            where.mkdir(parents=True, exist_ok=True)
            sources = []
            if volume.config_map is not None:
                sources.append(volume.config_map)
            if volume.projected is not None:
                sources.extend(
                    src.config_map for src in volume.projected.sources or [] if src.config_map
                )
            for cm_ref in sources:
                cm = self.core.read_namespaced_config_map(cm_ref.name, pod.metadata.namespace)
                data = cm.data or {}
                items = cm_ref.items or [client.V1KeyToPath(key=k, path=k) for k in sorted(data)]
                for item in items:
                    (where / item.path).write_text(data[item.key])
            paths[mount.mount_path] = where
        self._downward(pod, root)
        return paths

    def _downward(self, pod: client.V1Pod, root: Path) -> None:
        """downwardAPI files of annotations, written atomically as the kubelet does."""
        annotations = pod.metadata.annotations or {}
        for volume in pod.spec.volumes or []:
            if volume.downward_api is None:
                continue
            where = root / volume.name
            where.mkdir(parents=True, exist_ok=True)
            for item in volume.downward_api.items or []:
                field = item.field_ref.field_path if item.field_ref else ""
                match = re.fullmatch(r"metadata\.annotations\['(.+)'\]", field)
                if not match:
                    continue
                text = annotations.get(match.group(1), "")
                target = where / item.path
                if target.exists() and target.read_text() == text:
                    continue
                tmp = target.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.replace(target)

    def _wait(
        self,
        pod: client.V1Pod,
        key: str,
        proc: subprocess.Popen[bytes],
        result_file: Path,
        started: str,
    ) -> None:
        code = proc.wait()
        with self.lock:
            self.mounts.pop(key, None)
            if self.procs.pop(key, None) is None:
                return  # killed by a deletion
        message = (
            result_file.read_text(errors="replace")[:TERMINATION_LIMIT]
            if result_file.exists()
            else ""
        )
        self._finish(pod, code, message, "Completed" if code == 0 else "Error", started)

    def _finish(
        self, pod: client.V1Pod, code: int, message: str, reason: str, started: str | None = None
    ) -> None:
        container = pod.spec.containers[0]
        t = now()
        try:
            self.core.patch_namespaced_pod_status(
                pod.metadata.name,
                pod.metadata.namespace,
                {
                    "status": {
                        "phase": "Succeeded" if code == 0 else "Failed",
                        "conditions": [
                            {"type": "Ready", "status": "False", "lastTransitionTime": t}
                        ],
                        "containerStatuses": [
                            {
                                "name": container.name,
                                "image": container.image,
                                "imageID": "",
                                "ready": False,
                                "restartCount": 0,
                                "started": False,
                                "state": {
                                    "terminated": {
                                        "exitCode": code,
                                        "reason": reason,
                                        "message": message,
                                        "startedAt": started or t,
                                        "finishedAt": t,
                                    }
                                },
                            }
                        ],
                    }
                },
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def kill(self, key: str) -> None:
        with self.lock:
            proc = self.procs.pop(key, None)
            self.mounts.pop(key, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        self.stopping.set()
        for key in list(self.procs):
            self.kill(key)


def _node_info() -> dict[str, str]:
    return {
        "architecture": "amd64",
        "operatingSystem": "linux",
        "osImage": "qorch-node-agent",
        "kernelVersion": os.uname().release,
        "containerRuntimeVersion": "local://0",
        "kubeletVersion": "v0.0.0-qorch-agent",
        "kubeProxyVersion": "",
        "machineID": "",
        "systemUUID": "",
        "bootID": "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", default="agent-0")
    parser.add_argument("--pool", default="local")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s nodeagent %(message)s")
    agent = NodeAgent(
        config.new_client_from_config(args.kubeconfig),
        args.node,
        args.pool,
        args.workdir,
        args.bin_dir,
    )
    agent.register()
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    threading.Thread(target=agent.heartbeat_forever, daemon=True).start()
    threading.Thread(target=agent.watch_pods, daemon=True).start()
    log.info("node %s (pool %s) ready", args.node, args.pool)
    agent.stopping.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
