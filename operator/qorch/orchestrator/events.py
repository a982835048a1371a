"""What a cycle's Events look like on the wire. A plan says each thing it did per subtask;
the routine ones (a subtask placed, started, succeeded) of one cycle are posted as ONE
Kubernetes Event per reason, naming every subtask, as client-go's event aggregation does
for similar events: a workflow of 100 subtasks then tells its story in a handful of Events
instead of 300 (and the apiserver takes a handful of writes). Each subtask's own record
is its status history. Decisions that change a plan (moves, re-routes, holds) and every
Warning stay one Event each. The subtasks that succeed in the cycle the workflow succeeds
in are named by its ``WorkflowSucceeded`` Event instead of one more Event (a workflow of
one subtask: 4 Events, not 5)."""

from __future__ import annotations

from collections.abc import Sequence

from qorch.orchestrator.plan import Event
from qorch.orchestrator.text import SHORT_LIMIT, bounded

ROUTINE = frozenset({"Placed", "Started", "SubtaskSucceeded"})
FINISHED = "WorkflowSucceeded"


def coalesce(events: Sequence[Event], limit: int = SHORT_LIMIT) -> list[Event]:
    """``events`` with the routine Normal ones merged per reason, at the place of the
    LAST of each (after any decision that led to one of them: "Moved c" comes before
    "Placed ... c attempt 2"); the merged message counts them and is cut to ``limit``."""
    finished = [i for i, ev in enumerate(events) if ev.reason == FINISHED and not ev.warning]
    if finished:
        events = _fold_last_successes(events, finished[-1], limit)
    groups: dict[str, list[str]] = {}
    last = {ev.reason: i for i, ev in enumerate(events) if ev.reason in ROUTINE and not ev.warning}
    order: list[Event | str] = []  # an Event as it is, or the reason of a group
    for i, ev in enumerate(events):
        if ev.reason in ROUTINE and not ev.warning:
            groups.setdefault(ev.reason, []).append(ev.message)
            if last[ev.reason] == i:
                order.append(ev.reason)
        else:
            order.append(ev)
    out = []
    for item in order:
        if isinstance(item, Event):
            out.append(item)
            continue
        messages = groups[item]
        if len(messages) == 1:
            out.append(Event(item, messages[0]))
        else:
            text = f"{len(messages)} subtasks: " + "; ".join(messages)
            out.append(Event(item, bounded(text, limit)))
    return out


def _fold_last_successes(events: Sequence[Event], at: int, limit: int) -> list[Event]:
    """``events`` with the Normal ``SubtaskSucceeded`` ones named by the workflow's
    ``WorkflowSucceeded`` (at ``at``) instead: "all 3 subtasks succeeded; last: c: ..."."""
    last = [ev.message for ev in events if ev.reason == "SubtaskSucceeded" and not ev.warning]
    if not last:
        return list(events)
    done = events[at]
    message = bounded(f"{done.message}; last: " + "; ".join(last), limit)
    return [
        Event(FINISHED, message) if i == at else ev
        for i, ev in enumerate(events)
        if not (ev.reason == "SubtaskSucceeded" and not ev.warning)
    ]
