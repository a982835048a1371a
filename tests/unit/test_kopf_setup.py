"""What Qorch skips of Kopf's per-event work (``qorch.operator.kopfsetup``) stays safe to
skip: no handler that reads Kopf's diff base, and only success lines are silenced."""

from __future__ import annotations

import logging

import kopf

import qorch.operator.handlers  # noqa: F401  (registers the handlers)
from qorch.operator.kopfsetup import NoDiffBase, QuietHandlerSuccesses


def test_no_registered_handler_needs_the_diff_base() -> None:
    registry = kopf.get_default_registry()
    # on.create / on.update / on.resume / on.field / on.delete read what changed since the
    # last handled essence, which NoDiffBase never builds.
    assert registry._changing.get_all_handlers() == []
    spawning = registry._spawning.get_all_handlers()
    assert {h.id for h in spawning} >= {"drive_workflow"}
    # An idle daemon or timer would be reset by changes the empty essence never shows.
    assert all(getattr(h, "idle", None) is None for h in spawning)


def test_the_diff_base_is_empty_and_unchanged_whatever_the_object() -> None:
    storage = NoDiffBase()
    body = kopf.Body({"metadata": {"name": "w"}, "spec": {"a": 1}, "status": {"b": 2}})
    assert storage.build(body=body) == storage.fetch(body=body) == {}


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None)


def test_only_kopfs_success_lines_are_silenced() -> None:
    quiet = QuietHandlerSuccesses()
    assert not quiet.filter(_record(logging.INFO, "Handler 'wake_on_pod_event' succeeded."))
    assert not quiet.filter(_record(logging.INFO, "Daemon 'drive_workflow' succeeded."))
    for kept in (
        _record(logging.ERROR, "Handler 'wake_on_pod_event' failed with an exception."),
        _record(logging.WARNING, "Handler 'x' succeeded."),  # not Kopf's INFO line
        _record(logging.INFO, "workflow ns/w Succeeded"),
        _record(logging.INFO, "Activity 'configure' succeeded."),
    ):
        assert quiet.filter(kept), kept.msg


def test_the_deletion_handler_is_invoked_only_for_workflows_being_deleted() -> None:
    """Kopf invokes an unfiltered on.event handler for every event of every workflow."""
    registry = kopf.get_default_registry()
    [handler] = [
        h for h in registry._watching.get_all_handlers() if h.id.startswith("cancel_gateway_jobs")
    ]
    assert handler.field == ("metadata", "deletionTimestamp")
    assert handler.value is kopf.PRESENT
