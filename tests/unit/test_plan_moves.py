"""Moves in the pure planner: intent first, then cancel, then the new attempt; each step
survives a restart, a cancelled attempt is not a failure, and nothing runs twice."""

from __future__ import annotations

import dataclasses
from typing import Any

from qorch.api.backend import Provider
from qorch.api.workflow import Placement, ResourceKind, SubtaskPhase
from qorch.orchestrator import (
    BackendInfo,
    CancelJob,
    CreatePod,
    DeletePod,
    JobPhase,
    JobState,
    Plan,
    SubmitJob,
    WorkflowSnapshot,
)
from qorch.orchestrator.snapshot import MoveRequest
from tests.unit.test_plan import World, circuit, spec

TO_B = MoveRequest(
    Placement(kind=ResourceKind.BACKEND, name="qpu-b"), "queue spiked: 900 s here vs 40 s there"
)


class MovingWorld(World):
    """The planner's fake cluster, with the cluster pass's move requests stood in for."""

    moves: dict[str, MoveRequest] = {}

    def snapshot(self) -> WorkflowSnapshot:
        return dataclasses.replace(super().snapshot(), moves=dict(self.moves))


def two_backends(**spec_extra: Any) -> MovingWorld:
    backends = {
        "qpu-a": BackendInfo("qpu-a", Provider.FAKE, 27),
        "qpu-b": BackendInfo("qpu-b", Provider.FAKE, 27, queue_length=5),
    }
    s = spec(circuit("q"), resources={"quantumBackends": ["qpu-a", "qpu-b"]}, **spec_extra)
    return MovingWorld(s, backends)


def actions(p: Plan, kind: type) -> list[Any]:
    return [a for a in p.actions if isinstance(a, kind)]


def test_a_queued_job_moves_in_three_steps_without_spending_a_retry() -> None:
    w = two_backends()
    w.step()
    st = w.sub("q")
    assert st.placement.name == "qpu-a" and w.jobs["ns.wf.q.1"].phase is JobPhase.QUEUED
    w.step()  # seen queued
    w.moves = {"q": TO_B}
    intent = w.step()
    assert not intent.actions  # the intent is stored before anything is cancelled
    assert w.sub("q").moving is not None and w.sub("q").moving.to.name == "qpu-b"
    assert [e.reason for e in intent.events] == ["Moving"]
    cancel = w.step()
    assert actions(cancel, CancelJob) == [CancelJob("ns.wf.q.1", "qpu-a", "moving")]
    assert not actions(cancel, SubmitJob)
    moved = w.step()
    assert actions(moved, SubmitJob) == [SubmitJob("q", 2, "ns.wf.q.2", "qpu-b")]
    st = w.sub("q")
    assert (st.attempts, st.failures, st.moves, st.moving) == (2, 0, 1, None)
    assert st.placement.name == "qpu-b" and w.status.moves == 1
    moved_event = next(e for e in moved.events if e.reason == "Moved")
    assert "from qpu-a to qpu-b" in moved_event.message and "900 s" in moved_event.message
    assert any(h.event == "Moved" and "900 s" in h.message for h in st.history)
    # The request stays up (the pass has not run again): no second move.
    w.jobs["ns.wf.q.2"] = JobState("ns.wf.q.2", JobPhase.DONE, result={"counts": {"0": 1}})
    w.step()
    assert w.sub("q").phase is SubtaskPhase.SUCCEEDED and w.sub("q").moves == 1


def test_a_restart_after_the_cancel_finishes_the_move_from_the_status_alone() -> None:
    w = two_backends()
    w.step()
    w.step()
    w.moves = {"q": TO_B}
    w.step()  # intent stored
    w.step()  # old job cancelled
    w.moves = {}  # a new operator: no cluster pass has run yet
    p = w.step()
    assert actions(p, SubmitJob) == [SubmitJob("q", 2, "ns.wf.q.2", "qpu-b")]
    assert w.sub("q").failures == 0  # the cancelled attempt is not a failed one


def test_a_job_that_starts_before_it_is_cancelled_stays_where_it_is() -> None:
    w = two_backends()
    w.step()
    w.step()
    w.moves = {"q": TO_B}
    w.step()
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.RUNNING)  # the QPU took it first
    p = w.step()
    assert not actions(p, CancelJob) and not actions(p, SubmitJob)
    assert [e.reason for e in p.events if e.reason.startswith("Move")] == ["MoveAbandoned"]
    st = w.sub("q")
    assert (st.moving, st.moves, st.attempts, st.phase) == (None, 0, 1, SubtaskPhase.RUNNING)


def test_an_unbound_pod_moves_to_another_pool() -> None:
    w = MovingWorld(spec(circuit("q")))
    w.step()
    pod = w.sub("q").podName
    assert w.sub("q").placement.name == "cpu" and pod in w.pods
    w.step()
    w.moves = {"q": MoveRequest(Placement(kind=ResourceKind.POOL, name="gpu"), "cpu pool full")}
    w.step()
    delete = w.step()
    assert actions(delete, DeletePod) == [DeletePod(pod, "moving to gpu")]
    create = w.step()
    assert [(a.pod_name, a.pool) for a in actions(create, CreatePod)] == [("wf-q-2", "gpu")]
    assert w.sub("q").moves == 1 and w.sub("q").failures == 0


def test_no_move_when_disabled_capped_or_pointless() -> None:
    for extra in (
        {"reallocation": {"enabled": False}},
        {"reallocation": {"maxMovesPerSubtask": 0}},
    ):
        w = two_backends(**extra)
        w.step()
        w.step()
        w.moves = {"q": TO_B}
        assert not w.step().events and w.sub("q").moving is None
    w = two_backends()
    w.step()
    w.moves = {"q": MoveRequest(Placement(kind=ResourceKind.BACKEND, name="qpu-a"), "same")}
    w.step()
    assert w.sub("q").moving is None


def test_the_move_cap_holds_over_several_requests() -> None:
    w = two_backends(reallocation={"maxMovesPerSubtask": 1})
    w.step()
    w.step()
    w.moves = {"q": TO_B}
    for _ in range(3):
        w.step()
    assert w.sub("q").placement.name == "qpu-b"
    w.moves = {"q": MoveRequest(Placement(kind=ResourceKind.BACKEND, name="qpu-a"), "back")}
    for _ in range(4):
        w.step()
    assert w.sub("q").placement.name == "qpu-b" and w.sub("q").moves == 1
