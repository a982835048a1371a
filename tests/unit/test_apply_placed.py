"""The applier's one-write launch (a pod created and released by the same plan is
created placed), down its failure paths, with the API calls stood in for: the happy path
against the real apiserver is in ``tests/e2e/test_trust.py``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from kubernetes.client import ApiException

from qorch.api.workflow import HybridWorkflowSpec, HybridWorkflowStatus
from qorch.operator import kubeio
from qorch.operator.apply import Applier
from qorch.operator.podspec import GATE, POOL_ANNOTATION
from qorch.orchestrator.plan import CreatePod, Plan, ReleasePod

SPEC = HybridWorkflowSpec.model_validate(
    {"subtasks": [{"name": "s", "classical": {"image": "busybox"}}]}
)
BODY = {"metadata": {"name": "wf", "namespace": "ns", "uid": "u"}, "spec": {}}
LAUNCH = (
    CreatePod(subtask="s", attempt=1, pod_name="wf-s-1", pool="cpu"),
    ReleasePod("wf-s-1", "cpu"),
)


def run(applier: Applier) -> list[Any]:
    plan = Plan(HybridWorkflowStatus(), LAUNCH)
    return asyncio.run(applier.act(BODY, SPEC, plan, {}, logging.getLogger("test")))


class Api:
    """The pod calls the applier made, and what each answers (an exception raises)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Api:
    stood_in = Api()

    def stand_in(name: str) -> Any:
        def call(*args: Any) -> Any:
            stood_in.calls.append((name, args[-1]))
            answer = stood_in.answers.get(name)
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call

    for name in ("create_pod", "patch_pod", "read_pod"):
        monkeypatch.setattr(kubeio, name, stand_in(name))
    return stood_in


def applier() -> Applier:
    return Applier(None, None, gateway=None, worker_image="img")  # type: ignore[arg-type]


def test_a_launch_is_one_create_of_the_placed_pod(api: Api) -> None:
    api.answers["create_pod"] = {"metadata": {"name": "wf-s-1", "uid": "x"}, "spec": {}}
    events = run(applier())
    assert [e for e in events if e.warning] == []
    assert [name for name, _ in api.calls] == ["create_pod"]
    manifest = api.calls[0][1]
    assert GATE not in [g["name"] for g in manifest["spec"].get("schedulingGates") or []]
    assert manifest["metadata"]["annotations"][POOL_ANNOTATION] == "cpu"


def test_a_refused_create_is_refused_for_good_and_says_so_once(
    api: Api,
) -> None:
    api.answers["create_pod"] = ApiException(status=422, reason="Unprocessable Entity")
    a = applier()
    events = run(a)
    assert [name for name, _ in api.calls] == ["create_pod"]  # no release of a pod never made
    warnings = [e for e in events if e.warning]
    assert len(warnings) == 1 and "CreatePod failed" in warnings[0].message
    assert ("ns", "wf-s-1") in a.refused_pods  # the next cycle fails the attempt for good


def test_a_pod_that_exists_already_is_released_instead(api: Api) -> None:
    api.answers["create_pod"] = ApiException(status=409, reason="AlreadyExists")
    api.answers["read_pod"] = {
        "metadata": {"name": "wf-s-1", "uid": "old"},
        "spec": {"schedulingGates": [{"name": GATE}]},
    }
    events = run(applier())
    assert [e for e in events if e.warning] == []
    assert [name for name, _ in api.calls] == ["create_pod", "read_pod", "patch_pod"]
    patch = api.calls[-1][1]
    assert {"op": "replace", "path": "/spec/schedulingGates", "value": []} in patch
