"""`make demo`: Qorch end to end on this machine, in about a minute.

Starts a real control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK
nodes), a real Prometheus, an Aer quantum-gateway process and the operator, all from the
development environment the tests and benchmarks share (``devenv``): the operator with the
chart's settings (``devenv.operator.CHART_ENV``) as the chart's ServiceAccount, with exactly
its RBAC (``devenv.rbac``). Registers the gateway as QuantumBackend `aer`; applies
examples/hybrid-bell-ghz.yaml with kubectl (its classical steps annotated for KWOK's fake
nodes to complete, ``devenv/overlays.py``); and prints the workflow as it runs and the
results that land in its status. Everything stops at the end (pass --keep to leave it
running and print the KUBECONFIG).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devenv import controlplane, gateway, operator, overlays, prometheus  # noqa: E402
from devenv.cluster import Cluster  # noqa: E402
from devenv.rbac import least_privilege_kubeconfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qorch-demo-"))
    print(f"[demo] logs in {work}")
    with ExitStack() as stack:
        t0 = time.monotonic()
        plane = stack.enter_context(controlplane.running(work / "cp", crds=REPO / "crds"))
        print(f"[demo] control plane up in {time.monotonic() - t0:.1f}s "
              f"(export KUBECONFIG={plane.kubeconfig})")
        prom = stack.enter_context(prometheus.running(work / "prometheus"))
        gw = stack.enter_context(gateway.running(work / "gateway.log", "--provider", "aer",
                                                 "--backend", "aer_simulator"))
        prom.set_targets("gateway", [f"127.0.0.1:{gw.port}"])
        stack.enter_context(operator.running(
            plane, work / "operator.log", settings="chart",
            kubeconfig=least_privilege_kubeconfig(plane, work / "operator-sa.yaml"),
            extra_env={"QORCH_PROMETHEUS_URL": prom.url}))
        cluster = Cluster(plane)
        cluster.apply(json.dumps({
            "apiVersion": "qorch.io/v1alpha1", "kind": "QuantumBackend",
            "metadata": {"name": "aer"},
            "spec": {"provider": "aer", "backendName": "aer_simulator", "numQubits": 30,
                     "gateway": {"url": gw.url}}}))
        # KWOK's fake nodes run no containers: the classical steps get its completion
        # annotation here, on top of the example as users apply it.
        print(plane.kubectl("apply", "-f", "-", input=overlays.kwok_example(
            "hybrid-bell-ghz.yaml", delay="1s")).stdout.strip())
        last = ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            table = plane.kubectl("get", "hwf", "hybrid-bell-ghz").stdout.strip()
            if table != last:
                print(table.splitlines()[-1] if last else table)
                last = table
            wf = cluster.get("hwf", "hybrid-bell-ghz", "default") or {}
            if wf.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(0.5)
        status = (cluster.get("hwf", "hybrid-bell-ghz", "default") or {}).get("status", {})
        print("\n[demo] placements and results:")
        for sub in status.get("subtasks", []):
            where = sub.get("placement") or {}
            print(f"  {sub['name']:<8} {sub['phase']:<10} {where.get('kind', '-')}/"
                  f"{where.get('name', '-'):<8} {json.dumps(sub.get('result'))}")
        print("\n[demo] events:")
        print(plane.kubectl("get", "events", "--field-selector",
                            "involvedObject.name=hybrid-bell-ghz", "--sort-by=.lastTimestamp",
                            "-o", "custom-columns=REASON:.reason,MESSAGE:.message").stdout)
        if args.keep:
            print(f"[demo] running; export KUBECONFIG={plane.kubeconfig}; Ctrl-C stops")
            with suppress(KeyboardInterrupt):
                signal.pause()
        return 0 if status.get("phase") == "Succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
