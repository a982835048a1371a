"""What a cycle's Events look like on the wire. A plan says each thing it did per subtask;
the routine ones (a subtask placed, started, succeeded) of one cycle are posted as ONE
Kubernetes Event per reason, naming every subtask, as client-go's event aggregation does
for similar events: a workflow of 100 subtasks then tells its story in a handful of Events
instead of 300 (and the apiserver takes a handful of writes). Each subtask's own record
is its status history. Decisions that change a plan (moves, re-routes, holds) and every
Warning stay one Event each."""

from __future__ import annotations

from collections.abc import Sequence

from qorch.orchestrator.plan import Event
from qorch.orchestrator.text import SHORT_LIMIT, bounded

ROUTINE = frozenset({"Placed", "Started", "SubtaskSucceeded"})


def coalesce(events: Sequence[Event], limit: int = SHORT_LIMIT) -> list[Event]:
    """``events`` with the routine Normal ones merged per reason, at the place of the
    LAST of each (after any decision that led to one of them: "Moved c" comes before
    "Placed ... c attempt 2"); the merged message counts them and is cut to ``limit``."""
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
