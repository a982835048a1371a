"""A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KWOK managing fake node pools.

Binaries come from ``hack/build-control-plane.sh`` (built from Go modules, cached
outside the repository). Everything else (PKI, data, kubeconfig) lives in a
per-session directory. ``python -m devenv.controlplane`` starts one by hand
and prints the kubeconfig path for debugging.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devenv import pki as pki_mod
from devenv.nodes import DEFAULT_NODES, NodeSpec, node_manifest

REPO = Path(__file__).resolve().parents[1]
STAGES = Path(__file__).with_name("kwok-stages.yaml")


def control_plane_bin_dir() -> Path:
    """Build (or find cached) binaries and return their directory."""
    out = subprocess.run(
        [str(REPO / "hack" / "build-control-plane.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ControlPlane:
    workdir: Path
    bin_dir: Path
    kubeconfig: Path
    server: str
    pki: pki_mod.Pki
    components: dict[str, Component] = field(default_factory=dict)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            text=True,
            capture_output=True,
            check=check,
        )

    def admin_tls(self) -> ssl.SSLContext:
        """Trusts the session CA and presents the admin client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def get_json(self, path: str) -> Any:
        """GET an apiserver path with the admin client certificate."""
        with urllib.request.urlopen(
            self.server + path, context=self.admin_tls(), timeout=5
        ) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        # The apiserver goes before etcd: with etcd gone first it lingers on SIGTERM.
        for name in ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            comp = self.components.get(name)
            if comp is not None:
                comp.stop()

    def describe_failure(self) -> str:
        return "\n".join(
            f"--- {n} (pid {c.pid}, alive={c.alive()})\n{c.tail()}"
            for n, c in self.components.items()
        )

    def restart(self, name: str, *, kill: bool = False, timeout: float = 60.0) -> float:
        """Stop component ``name`` and start it again in place: the same binary, flags, ports,
        certificates and data (its log is appended to). ``kill``: SIGKILL instead of SIGTERM.
        Waits until it is back (``/readyz`` for kube-apiserver, ``/health`` for etcd) and
        returns the seconds it was away."""
        old = self.components[name]
        argv = [str(a) for a in old.process.args]  # type: ignore[union-attr]
        started = time.monotonic()
        if kill and old.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(old.process.pid, signal.SIGKILL)
            old.process.wait(10)
        old.stop()
        log = old.log_path.open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.components[name] = Component(name, proc, old.log_path, log)
        if name == "kube-apiserver":
            _wait("kube-apiserver /readyz after restart", self, lambda: _api_ready(self), timeout)
        elif name == "etcd":
            url = argv[argv.index("--listen-client-urls") + 1]
            _wait("etcd after restart", self, lambda: _http_ok(f"{url}/health"), timeout)
        return time.monotonic() - started

    def restart_apiserver(self, *, kill: bool = False, timeout: float = 60.0) -> float:
        """kube-apiserver down and up again on the same port with the same certificates;
        returns the seconds until ``/readyz`` answered again. On SIGTERM it stops listening
        at once but lingers until ``Component.stop`` kills it 10 s later (~12 s away in all);
        ``kill`` makes it 2-4 s."""
        return self.restart("kube-apiserver", kill=kill, timeout=timeout)


def _spawn(cp: ControlPlane, name: str, args: list[str]) -> Component:
    log_path = cp.workdir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(cp.bin_dir / name), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: teardown kills children too
    )
    comp = Component(name, proc, log_path, log)
    cp.components[name] = comp
    return comp


def _wait(what: str, cp: ControlPlane, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        for comp in cp.components.values():
            if not comp.alive():
                raise RuntimeError(f"{comp.name} exited while waiting for {what}:\n{comp.tail()}")
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(
        f"{what} not ready after {timeout}s (last error: {last})\n{cp.describe_failure()}"
    )


def _write_kubeconfig(path: Path, server: str, pki: pki_mod.Pki) -> None:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: qorch-test
  cluster:
    server: {server}
    certificate-authority: {pki.ca_cert}
users:
- name: admin
  user:
    client-certificate: {pki.admin_cert}
    client-key: {pki.admin_key}
contexts:
- name: qorch-test
  context: {{cluster: qorch-test, user: admin, namespace: default}}
current-context: qorch-test
"""
    )


def start(
    workdir: Path,
    nodes: tuple[NodeSpec, ...] = DEFAULT_NODES,
    extra_kwok_args: tuple[str, ...] = (),
    crds: Path | None = None,
) -> ControlPlane:
    """Start every component, create the KWOK nodes, wait until they are Ready.

    ``crds`` are applied before kube-controller-manager starts: its garbage collector
    discovers new resource types only every 30 s, so owner references to a CRD created
    later would be honoured late.
    """
    bin_dir = control_plane_bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = pki_mod.generate(workdir / "pki")
    api_port, etcd_port, peer_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    cp = ControlPlane(workdir, bin_dir, workdir / "kubeconfig", server, pki)
    _write_kubeconfig(cp.kubeconfig, server, pki)
    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        _spawn(
            cp,
            "etcd",
            [
                "--name",
                "qorch-test",
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"qorch-test=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        _wait("etcd", cp, lambda: _http_ok(f"{etcd_url}/health"), 30)
        _spawn(
            cp,
            "kube-apiserver",
            [
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(api_port),
                "--tls-cert-file",
                str(pki.serving_cert),
                "--tls-private-key-file",
                str(pki.serving_key),
                "--client-ca-file",
                str(pki.ca_cert),
                "--service-account-key-file",
                str(pki.sa_pub),
                "--service-account-signing-key-file",
                str(pki.sa_key),
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--authorization-mode",
                "RBAC,Node",
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                "--allow-privileged=true",
                "--max-requests-inflight",
                "2000",
                "--max-mutating-requests-inflight",
                "1000",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "-v",
                "1",
            ],
        )
        _wait("kube-apiserver /readyz", cp, lambda: _api_ready(cp), 60)
        if crds is not None:
            cp.kubectl("apply", "--server-side", "-f", str(crds))
            cp.kubectl("wait", "--for", "condition=Established", "--timeout", "60s", "crd", "--all")
        common = [
            "--kubeconfig",
            str(cp.kubeconfig),
            "--leader-elect=false",
            "--kube-api-qps",
            "1000",
            "--kube-api-burst",
            "2000",
            "-v",
            "1",
        ]
        _spawn(
            cp,
            "kube-controller-manager",
            [
                *common,
                "--controllers",
                "*,-nodeipam",
                "--service-account-private-key-file",
                str(pki.sa_key),
                "--root-ca-file",
                str(pki.ca_cert),
                "--use-service-account-credentials=false",
                "--secure-port",
                "0",
                "--node-monitor-grace-period",
                "40s",
            ],
        )
        _spawn(cp, "kube-scheduler", [*common, "--secure-port", "0"])
        _spawn(
            cp,
            "kwok",
            [
                "--kubeconfig",
                str(cp.kubeconfig),
                "--config",
                str(STAGES),
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector",
                "kwok.x-k8s.io/node=fake",
                "--disregard-status-with-annotation-selector",
                "kwok.x-k8s.io/status=custom",
                "--node-lease-duration-seconds",
                "40",
                "--cidr",
                "10.244.0.0/16",
                "--node-ip",
                "10.10.0.1",
                "--server-address",
                f"127.0.0.1:{free_port()}",
                *extra_kwok_args,
            ],
        )
        for spec in nodes:
            cp.kubectl("apply", "-f", "-", input=node_manifest(spec))
        _wait("KWOK nodes Ready and untainted", cp, lambda: _nodes_ready(cp, len(nodes)), 90)
        _wait(
            "default ServiceAccount",
            cp,
            lambda: cp.kubectl("get", "sa", "default", check=False).returncode == 0,
            60,
        )
    except BaseException:
        cp.stop()
        raise
    return cp


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def _api_ready(cp: ControlPlane) -> bool:
    with urllib.request.urlopen(cp.server + "/readyz", context=cp.admin_tls(), timeout=2) as resp:
        return bool(resp.status == 200)


def _nodes_ready(cp: ControlPlane, expected: int) -> bool:
    out = cp.kubectl("get", "nodes", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    items = json.loads(out.stdout)["items"]
    ready = 0
    for node in items:
        conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        taints = {t["key"] for t in node.get("spec", {}).get("taints", []) or []}
        if conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints:
            ready += 1
    return ready >= expected


@contextlib.contextmanager
def running(workdir: Path, **kwargs: Any) -> Iterator[ControlPlane]:
    cp = start(workdir, **kwargs)
    try:
        yield cp
    finally:
        cp.stop()


def environ_for(cp: ControlPlane, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["KUBECONFIG"] = str(cp.kubeconfig)
    env["PATH"] = f"{cp.bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


if __name__ == "__main__":
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="qorch-cp-"))
    with running(work) as plane:
        print(f"control plane up: export KUBECONFIG={plane.kubeconfig}", flush=True)
        print(f"kubectl: {plane.bin_dir / 'kubectl'}   (Ctrl-C stops it)", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
