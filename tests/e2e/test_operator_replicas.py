"""Restart safety and leader election of the operator on the real control plane. This
module starts its own operator processes (and no shared one), so each test knows exactly
which replicas exist."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devenv.cluster import Cluster, wait_for
from devenv.controlplane import ControlPlane
from tests.e2e.test_workflow_lifecycle import wait_phase
from tests.harness import operator as operator_mod

pytestmark = pytest.mark.controlplane


FAN_OUT = {
    "apiVersion": "qorch.io/v1alpha1",
    "kind": "HybridWorkflow",
    "metadata": {"name": "fan"},
    "spec": {
        "subtasks": [
            {
                "name": n,
                "dependsOn": d,
                "classical": {
                    "image": "busybox",
                    "annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "2s"},
                },
            }
            for n, d in [("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]), ("e", ["d"])]
        ]
    },
}


def test_operator_killed_mid_run_and_restarted_still_succeeds_without_duplicates(
    cluster: Cluster, namespace: str, control_plane: ControlPlane, session_dir: Path
) -> None:
    log = session_dir / "operator-sigkill.log"
    op = operator_mod.start(control_plane, log)
    try:
        cluster.apply(json.dumps(FAN_OUT), namespace)
        kills = 0
        seen_progress: set[str] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            wf = cluster.get("hwf", "fan", namespace) or {}
            status = wf.get("status", {})
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            progress = status.get("progress")
            # Kill the operator each time the workflow has moved on, at most three times.
            if (
                progress
                and progress not in seen_progress
                and kills < 3
                and (status.get("phase") == "Running")
            ):
                seen_progress.add(progress)
                op.kill()
                kills += 1
                op = operator_mod.start(control_plane, log)
            time.sleep(0.3)
        assert kills >= 2, f"the workflow finished before the operator could be killed: {kills}"
        wf = wait_phase(cluster, "fan", namespace, {"Succeeded", "Failed"}, 120)
        assert wf["status"]["phase"] == "Succeeded", wf["status"]
        pods = cluster.list("pods", namespace)
        assert len(pods) == len(FAN_OUT["spec"]["subtasks"]), [p["metadata"]["name"] for p in pods]
        assert all(s["attempts"] == 1 for s in wf["status"]["subtasks"])
    finally:
        op.stop()


def test_two_replicas_only_the_higher_priority_one_acts(
    cluster: Cluster, namespace: str, control_plane: ControlPlane, session_dir: Path
) -> None:
    high_log, low_log = session_dir / "operator-high.log", session_dir / "operator-low.log"
    low = operator_mod.start(control_plane, low_log, priority=10)
    high = operator_mod.start(control_plane, high_log, priority=20)
    try:
        # Both replicas announce themselves in the peering object; the low one stays paused
        # (Kopf starts paused and logs only transitions, so its log is no signal here).
        def both_registered() -> bool:
            peering = cluster.get("clusterkopfpeering", "qorch") or {}
            priorities = {p.get("priority") for p in (peering.get("status") or {}).values()}
            return {10, 20} <= priorities

        wait_for("both replicas in the peering object", both_registered, 60)
        manifest = json.loads(json.dumps(FAN_OUT))
        manifest["metadata"]["name"] = "peered"
        manifest["spec"]["subtasks"] = manifest["spec"]["subtasks"][:2]
        cluster.apply(json.dumps(manifest), namespace)
        wf = wait_phase(cluster, "peered", namespace, {"Succeeded", "Failed"})
        assert wf["status"]["phase"] == "Succeeded"
        assert f"{namespace}/peered" in high.log()
        assert f"{namespace}/peered" not in low.log()

        # The leader leaves; the standby resumes and serves the next workflow.
        high.stop()
        wait_for("standby to resume", lambda: "Resuming operations" in low.log(), 60)
        manifest["metadata"]["name"] = "after-failover"
        cluster.apply(json.dumps(manifest), namespace)
        wf = wait_phase(cluster, "after-failover", namespace, {"Succeeded", "Failed"})
        assert wf["status"]["phase"] == "Succeeded"
        assert f"{namespace}/after-failover" in low.log()
    finally:
        high.stop()
        low.stop()
