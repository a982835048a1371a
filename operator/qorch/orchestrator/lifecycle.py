"""The subtask lifecycle as an explicit table of valid transitions (checked on every write)."""

from __future__ import annotations

from qorch.api.workflow import SubtaskPhase as P

VALID_TRANSITIONS: dict[P, frozenset[P]] = {
    P.PENDING: frozenset({P.LAUNCHING, P.SKIPPED, P.FAILED}),
    P.LAUNCHING: frozenset({P.SCHEDULED, P.RUNNING, P.SUCCEEDED, P.RETRYING, P.FAILED}),
    # SCHEDULED -> LAUNCHING: a move (a queued job or an unbound pod started elsewhere).
    P.SCHEDULED: frozenset({P.LAUNCHING, P.RUNNING, P.SUCCEEDED, P.RETRYING, P.FAILED}),
    # RUNNING -> LAUNCHING: a relaunch (a running simulation pod stopped, started elsewhere).
    P.RUNNING: frozenset({P.LAUNCHING, P.SUCCEEDED, P.RETRYING, P.FAILED}),
    P.RETRYING: frozenset({P.LAUNCHING, P.FAILED}),
    P.SUCCEEDED: frozenset(),
    P.FAILED: frozenset(),
    P.SKIPPED: frozenset(),
}

ACTIVE = frozenset({P.LAUNCHING, P.SCHEDULED, P.RUNNING})
TERMINAL = frozenset({P.SUCCEEDED, P.FAILED, P.SKIPPED})


class InvalidTransitionError(ValueError):
    pass


def check_transition(subtask: str, old: P, new: P) -> None:
    if old != new and new not in VALID_TRANSITIONS[old]:
        raise InvalidTransitionError(
            f"subtask {subtask!r}: {old} -> {new} is not a valid transition"
        )
