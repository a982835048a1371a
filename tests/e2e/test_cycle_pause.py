"""The pause between a workflow's cycles (``QORCH_MIN_CYCLE_SECONDS``, which lets a burst of
pod events be planned and written once) ends when the workflow's last pod finishes: the
cycle that records it, here the workflow's end, does not wait out the pause."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devenv.cluster import Cluster, wait_for

pytestmark = pytest.mark.controlplane


def step(name: str, seconds: int) -> dict[str, Any]:
    return {
        "name": name,
        "classical": {
            "image": "busybox",
            "annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": f"{seconds}s"},
        },
    }


def test_the_last_pod_finishing_ends_the_pause_before_the_next_cycle(
    cluster: Cluster, namespace: str, own_operator: Any
) -> None:
    # A pause far longer than the pods run; the resync must not cut it short either.
    own_operator(QORCH_MIN_CYCLE_SECONDS="12", QORCH_RESYNC_SECONDS="30")
    manifest = {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {"name": "quick"},
        "spec": {"subtasks": [step("a", 2), step("b", 3)]},
    }
    cluster.apply(json.dumps(manifest), namespace)

    def pods_succeeded() -> bool:
        pods = cluster.list("pods", namespace)
        phases = [(p.get("status") or {}).get("phase") for p in pods]
        return len(phases) == 2 and all(ph == "Succeeded" for ph in phases)

    wait_for("both pods Succeeded", pods_succeeded, 60, interval=0.1)
    finished = time.monotonic()

    def workflow_succeeded() -> bool:
        wf = cluster.get("hwf", "quick", namespace) or {}
        return (wf.get("status") or {}).get("phase") == "Succeeded"

    wait_for("the workflow Succeeded", workflow_succeeded, 60, interval=0.1)
    # Without the early end: up to 12 s after the launch cycle, ~9 s after the pods.
    assert time.monotonic() - finished < 4.0
