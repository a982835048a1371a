"""What a workflow's daemon plans from: a plain copy of Kopf's body without the managed
fields (``handlers._plain``), copied on every cycle."""

from __future__ import annotations

import copy

from qorch.operator.handlers import _plain


def test_the_plain_copy_drops_only_the_managed_fields_and_shares_nothing() -> None:
    body = {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {
            "name": "wf",
            "namespace": "ns",
            "resourceVersion": "42",
            "labels": {"team": "q"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"subtasks": [{"name": "a", "classical": {"image": "busybox"}}]},
        "status": {"phase": "Running", "subtasks": [{"name": "a", "phase": "Running"}]},
    }
    before = copy.deepcopy(body)
    plain = _plain(body)
    expected = copy.deepcopy(body)
    del expected["metadata"]["managedFields"]
    assert plain == expected
    plain["metadata"]["labels"]["team"] = "x"
    plain["spec"]["subtasks"][0]["name"] = "b"
    plain["status"]["subtasks"].clear()
    assert body == before  # the body Kopf keeps is untouched
    assert _plain({"metadata": {"name": "wf"}}) == {"metadata": {"name": "wf"}}
