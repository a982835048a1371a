"""The operator's pod informer (``operator.pod_cache``): the views it keeps as events come,
checked event by event (the list and watch against a real apiserver run in the e2e tests:
every workflow there is planned from these views)."""

from __future__ import annotations

import copy
from typing import Any

from qorch.api.workflow import SubtaskSpec, default_pools
from qorch.operator.pod_cache import PodCache
from qorch.operator.podspec import build_pod, release_patch, workflow_label
from qorch.orchestrator.snapshot import PodPhase

CPU = default_pools()[0]
STEP = SubtaskSpec.model_validate(
    {"name": "c", "classical": {"image": "busybox", "resources": {"cpu": "2"}}}
)


def qorch_pod(workflow: str = "wf", name: str = "wf-c-1") -> dict[str, Any]:
    pod = build_pod(
        workflow={"metadata": {"name": workflow, "namespace": "ns", "uid": "u"}},
        subtask=STEP,
        attempt=1,
        pod_name=name,
        worker_image="img",
        pool=CPU,
    )
    pod["metadata"]["namespace"] = "ns"
    pod["metadata"]["uid"] = f"uid-{name}"
    return pod


def released(pod: dict[str, Any], node: str, phase: str = "Running") -> dict[str, Any]:
    """The pod after its release (the patch Qorch sends), bound to ``node``, in ``phase``."""
    out = copy.deepcopy(pod)
    for op in release_patch(out, CPU):
        if op["op"] in ("add", "replace"):
            out["spec"][op["path"].rsplit("/", 1)[-1]] = op["value"]
    out["spec"].pop("schedulingGates", None)
    out["spec"]["nodeName"] = node
    out["status"] = {"phase": phase}
    return out


def cache() -> tuple[PodCache, list[tuple[str, str]]]:
    woken: list[tuple[str, str]] = []
    return PodCache(None, lambda ns, wf: woken.append((ns, wf))), woken  # type: ignore[arg-type]


def test_a_pod_through_its_life() -> None:
    pods, woken = cache()
    gated = qorch_pod()
    pods.apply("ADDED", gated)
    (state,) = pods.workflow_pods("ns", workflow_label("wf"))
    assert state.name == "wf-c-1" and state.phase is PodPhase.GATED
    view = pods.gated_view("ns", "wf-c-1")
    assert view is not None and view["metadata"]["uid"] == "uid-wf-c-1"
    assert dict(pods.usage_by_node) == {}  # not bound: takes no room

    pods.apply("MODIFIED", released(gated, "n1"))
    (state,) = pods.workflow_pods("ns", workflow_label("wf"))
    assert state.phase is PodPhase.RUNNING and state.node == "n1"
    assert pods.gated_view("ns", "wf-c-1") is None  # released: nothing to release again
    (usage,) = pods.usage_by_node["n1"]
    assert usage.cpu_cores == 2.0

    pods.apply("MODIFIED", released(gated, "n1", "Succeeded"))
    assert pods.workflow_pods("ns", workflow_label("wf"))[0].phase is PodPhase.SUCCEEDED
    assert "n1" not in pods.usage_by_node  # finished: its room is free

    # An event that changes nothing the workflow plans from (a condition, a relist of the
    # pod as it was) wakes nobody.
    done = released(gated, "n1", "Succeeded")
    done["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    pods.apply("MODIFIED", done)
    pods.apply("ADDED", done)
    assert woken == [("ns", "wf")] * 3

    pods.apply("DELETED", released(gated, "n1", "Succeeded"))
    assert pods.workflow_pods("ns", workflow_label("wf")) == []
    assert woken == [("ns", "wf")] * 4  # created, released and running, succeeded, deleted


def test_anyones_bound_pod_takes_room_and_wakes_nobody() -> None:
    pods, woken = cache()
    other = {
        "metadata": {"namespace": "team", "name": "web-1", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "n2",
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}],
        },
        "status": {"phase": "Running"},
    }
    pods.apply("ADDED", other)
    assert [u.cpu_cores for u in pods.usage_by_node["n2"]] == [0.5]
    assert woken == [] and pods.workflow_pods("team", "web") == []
    moved = copy.deepcopy(other)
    moved["spec"]["nodeName"] = "n3"  # (as if) re-created elsewhere under the same name
    pods.apply("MODIFIED", moved)
    assert list(pods.usage_by_node) == ["n3"]


def test_a_relist_drops_what_was_deleted_while_the_watch_was_down() -> None:
    pods, woken = cache()
    a, b = qorch_pod("wf", "wf-c-1"), qorch_pod("wf", "wf-c-2")
    pods.apply("ADDED", released(a, "n1"))
    pods.apply("ADDED", b)
    assert not pods.synced.is_set()
    before = len(woken)
    pods.relisted({("ns", "wf-c-1")})  # the list that followed named only a
    assert pods.synced.is_set()
    assert [p.name for p in pods.workflow_pods("ns", workflow_label("wf"))] == ["wf-c-1"]
    assert pods.gated_view("ns", "wf-c-2") is None
    assert woken[before:] == [("ns", "wf")]  # its workflow hears of the deletion


def test_per_namespace_scopes_sync_apart_and_relist_only_their_own() -> None:
    woken: list[tuple[str, str]] = []
    pods = PodCache(None, lambda ns, wf: woken.append((ns, wf)), ["ns", "other"])  # type: ignore[arg-type]
    there = qorch_pod("wf", "wf-c-1")
    elsewhere = copy.deepcopy(there)
    elsewhere["metadata"]["namespace"] = "other"
    pods.apply("ADDED", there)
    pods.apply("ADDED", elsewhere)
    pods.relisted(set(), "ns")  # "ns" listed empty: its pod went; "other" untouched
    assert not pods.synced.is_set()  # "other" has not listed yet
    assert pods.workflow_pods("ns", workflow_label("wf")) == []
    assert len(pods.workflow_pods("other", workflow_label("wf"))) == 1
    pods.relisted({("other", "wf-c-1")}, "other")
    assert pods.synced.is_set()


def test_a_pod_that_cannot_be_read_keeps_what_was_known() -> None:
    pods, _ = cache()
    pod = qorch_pod()
    pods.apply("ADDED", pod)
    broken = copy.deepcopy(pod)
    broken["metadata"]["labels"]["qorch.io/attempt"] = "not-a-number"
    pods.apply("MODIFIED", broken)
    (state,) = pods.workflow_pods("ns", workflow_label("wf"))
    assert state.attempt == 1 and pods.gated_view("ns", "wf-c-1") is not None
