"""Start the test node agent (``tests.harness.nodeagent``) as a process."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from devenv.cluster import Cluster, wait_for
from devenv.controlplane import REPO


@contextlib.contextmanager
def running(
    cluster: Cluster, workdir: Path, node: str = "agent-0", pool: str = "local"
) -> Iterator[subprocess.Popen[bytes]]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / f"{node}.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.harness.nodeagent",
            "--kubeconfig",
            str(cluster.plane.kubeconfig),
            "--node",
            node,
            "--pool",
            pool,
            "--workdir",
            str(workdir),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:

        def ready() -> bool:
            n = cluster.get("node", node)
            if not n:
                return False
            conds = {c["type"]: c["status"] for c in n["status"].get("conditions", [])}
            taints = {t["key"] for t in n["spec"].get("taints") or []}
            return conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

        wait_for(f"node {node} Ready and untainted", ready, 60)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        cluster.plane.kubectl("delete", "node", node, "--wait=false", check=False)
