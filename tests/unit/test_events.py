"""Routine Events of one cycle are posted as one per reason (``orchestrator.events``)."""

from __future__ import annotations

from qorch.orchestrator.events import coalesce
from qorch.orchestrator.plan import Event


def test_routine_events_of_a_cycle_merge_per_reason_in_place() -> None:
    events = [
        Event("Validated", "3 subtasks planned"),
        Event("Placed", "a attempt 1: pod w-a-1 on pool cpu"),
        Event("Placed", "b attempt 1: pod w-b-1 on pool cpu"),
        Event("Moved", "c: from qa to qb: queue spike"),
        Event("Placed", "c attempt 2: job j on quantum backend qb"),
        Event("SubtaskSucceeded", "d: done"),
    ]
    out = coalesce(events)
    # The merged Placed comes after the move that led to one of them.
    assert [e.reason for e in out] == ["Validated", "Moved", "Placed", "SubtaskSucceeded"]
    placed = out[2]
    assert (
        placed.message.startswith("3 subtasks: a attempt 1") and "; c attempt 2" in placed.message
    )
    assert out[1] == events[3] and out[3] == events[5]  # a decision, and a lone one: as they were


def test_warnings_and_decisions_stay_one_event_each() -> None:
    events = [
        Event("Moved", "a: from qa to qb"),
        Event("Moved", "b: from qa to qb"),
        Event("AttemptFailed", "a: exit 1", warning=True),
        Event("AttemptFailed", "b: exit 1", warning=True),
        Event("Placed", "x", warning=True),  # a Warning under a routine reason
        Event("Placed", "y", warning=True),
    ]
    assert coalesce(events) == events


def test_a_long_merge_is_cut_to_the_event_limit_and_says_so() -> None:
    events = [Event("Started", f"s{i:03d}: running on node kwok-cpu-{i % 20}") for i in range(100)]
    (merged,) = coalesce(events, limit=1024)
    assert len(merged.message) <= 1024
    assert merged.message.startswith("100 subtasks: s000: running")
    assert "more characters]" in merged.message


def test_the_last_successes_are_named_by_the_workflows_success() -> None:
    events = [
        Event("SubtaskSucceeded", "b: pod w-b-1 completed"),
        Event("SubtaskSucceeded", "c: pod w-c-1 completed"),
        Event("WorkflowSucceeded", "all 3 subtasks succeeded"),
    ]
    (done,) = coalesce(events)
    assert done.reason == "WorkflowSucceeded"
    assert done.message == (
        "all 3 subtasks succeeded; last: b: pod w-b-1 completed; c: pod w-c-1 completed"
    )
    # Without the workflow's success, each cycle's successes stay their own Event.
    assert [e.reason for e in coalesce(events[:2])] == ["SubtaskSucceeded"]
