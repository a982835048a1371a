"""What the scheduling gate costs: N plain pods vs N gated pods released by one narrowing
patch each (what the operator does), on the real control plane, side by side in one run.

    .venv/bin/python bench/bench_gate_overhead.py [--pods 500] [--threads 16]

Prints the two wall times (create -> all bound) and their ratio. Reference (2 cores, the
notes in shared/notes/control-plane.md): 2,000 pods, ratio ~1.2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client, config  # noqa: E402

from devenv import controlplane  # noqa: E402


def pod(name: str, gated: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "image": "busybox"}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    }
    if gated:
        spec["schedulingGates"] = [{"name": "qorch.io/placement"}]
    else:
        spec["nodeSelector"] = {"qorch.io/pool": "cpu"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


RELEASE = [
    {"op": "add", "path": "/spec/nodeSelector", "value": {"qorch.io/pool": "cpu"}},
    {"op": "replace", "path": "/spec/schedulingGates", "value": []},
]


def run(core: client.CoreV1Api, ns: str, n: int, threads: int, gated: bool) -> float:
    core.create_namespace({"metadata": {"name": ns}})
    names = [f"p{i}" for i in range(n)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda name: core.create_namespaced_pod(ns, pod(name, gated)), names))
        if gated:
            list(pool.map(lambda name: core.patch_namespaced_pod(name, ns, RELEASE), names))
    while True:
        pods = core.list_namespaced_pod(ns).items
        if sum(1 for p in pods if p.spec.node_name) == n:
            return time.perf_counter() - started
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    nodes = tuple(controlplane.DEFAULT_NODES) + tuple(
        controlplane.NodeSpec(f"kwok-cpu-{i}", "cpu") for i in range(2, 20)
    )
    with controlplane.running(Path(tempfile.mkdtemp(prefix="qorch-bench-")), nodes=nodes) as cp:
        api = config.new_client_from_config(str(cp.kubeconfig))
        api.configuration.connection_pool_maxsize = args.threads
        core = client.CoreV1Api(api)
        plain = run(core, "plain", args.pods, args.threads, gated=False)
        gated = run(core, "gated", args.pods, args.threads, gated=True)
    print(f"pods={args.pods} threads={args.threads}")
    print(f"plain  create->bound: {plain:7.2f} s ({args.pods / plain:6.1f} pods/s)")
    print(f"gated  create+release->bound: {gated:7.2f} s ({args.pods / gated:6.1f} pods/s)")
    print(f"ratio gated/plain: {gated / plain:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
