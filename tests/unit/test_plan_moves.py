"""Moves in the pure planner: intent first, then cancel, then the new attempt; each step
survives a restart, a cancelled attempt is not a failure, and nothing runs twice."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

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
    PodPhase,
    ReleasePod,
    SubmitJob,
)
from qorch.orchestrator.prices import CPU_POD_USD_PER_HOUR
from qorch.orchestrator.snapshot import MoveRequest
from tests.unit.test_plan import World, circuit, classical, spec

TO_B = MoveRequest(
    Placement(kind=ResourceKind.BACKEND, name="qpu-b"), "queue spiked: 900 s here vs 40 s there"
)


def two_backends(**spec_extra: Any) -> World:
    backends = {
        "qpu-a": BackendInfo("qpu-a", Provider.FAKE, 27),
        "qpu-b": BackendInfo("qpu-b", Provider.FAKE, 27, queue_length=5),
    }
    s = spec(circuit("q"), resources={"quantumBackends": ["qpu-a", "qpu-b"]}, **spec_extra)
    return World(s, backends)


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
    w = World(spec(circuit("q")))
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


def pool(name: str) -> Placement:
    return Placement(kind=ResourceKind.POOL, name=name)


def test_under_a_cluster_pass_a_pod_leaves_the_gate_only_where_the_pass_commits_it() -> None:
    w = World(spec(classical("c")))
    w.cluster_pass = True
    w.placements = {"c": pool("cpu")}  # the pass placed it: created and released at once
    first = w.step()
    pod = w.sub("c").podName
    assert actions(first, ReleasePod) == [ReleasePod(pod, "cpu")]

    # A pod found still gated (its release failed) while the pass holds it back (its pool
    # has no room now): it stays gated, saying why, once.
    w.pods[pod] = dataclasses.replace(w.pods[pod], phase=PodPhase.GATED)
    w.placements = {}
    w.held = {"c": "no allowed pool has room for the pod"}
    held = w.step()
    assert actions(held, ReleasePod) == []
    assert "kept gated: no allowed pool has room" in w.sub("c").message
    assert [e.reason for e in held.events] == ["Held"]
    assert [e.reason for e in w.step().events] == []  # said once
    # The pass commits it: released.
    w.held, w.placements = {}, {"c": pool("cpu")}
    assert actions(w.step(), ReleasePod) == [ReleasePod(pod, "cpu")]
    # Without a pass (the rule) a gated pod is released straight away.
    w.pods[pod] = dataclasses.replace(w.pods[pod], phase=PodPhase.GATED)
    w.cluster_pass, w.placements = False, {}
    assert actions(w.step(), ReleasePod) == [ReleasePod(pod, "cpu")]


def test_a_gated_pod_whose_requests_fit_the_new_pool_is_narrowed_not_replaced() -> None:
    w = World(spec(classical("c")))
    w.cluster_pass = True
    w.held = {"c": "waiting for room"}
    w.step()  # placed by the rule fallback, not committed by the pass: created gated
    pod = w.sub("c").podName
    assert w.pods[pod].phase is PodPhase.GATED
    w.moves = {"c": MoveRequest(pool("cpu2"), "cpu2 has room sooner", how="narrow")}
    w.spec = spec(
        classical("c"),
        resources={"classicalPools": [{"name": "cpu"}, {"name": "cpu2"}]},
    )
    p = w.step()
    assert actions(p, ReleasePod) == [ReleasePod(pod, "cpu2", moves=1)]
    assert actions(p, DeletePod) == [] and actions(p, CreatePod) == []
    st = w.sub("c")
    assert st.placement == pool("cpu2") and st.moves == 1 and st.attempts == 1
    assert st.movedFrom == "cpu"  # a move back needs the hysteresis too
    assert st.history[-1].event == "Moved" and "narrowed" in st.history[-1].message


def test_a_narrow_whose_status_write_was_lost_is_read_back_from_the_pod_once() -> None:
    w = World(
        spec(classical("c"), resources={"classicalPools": [{"name": "cpu"}, {"name": "cpu2"}]})
    )
    w.cluster_pass = True
    w.held = {"c": "waiting for room"}
    w.step()
    pod = w.sub("c").podName
    before = w.status.model_copy(deep=True)
    w.moves = {"c": MoveRequest(pool("cpu2"), "cpu2 has room sooner", how="narrow")}
    w.step()  # released to cpu2 ...
    assert w.pods[pod].pool == "cpu2"
    w.status = before  # ... and the operator died before its status write
    w.moves, w.held = {}, {}
    p = w.step()
    st = w.sub("c")
    assert st.placement == pool("cpu2") and st.moves == 1 and st.attempts == 1
    moved = [h.message for h in st.history if h.event == "Moved"]
    assert len(moved) == 1 and "read back from pod" in moved[0], st.history
    assert any(e.reason == "Moved" for e in p.events)
    assert actions(p, ReleasePod) == [] and actions(p, DeletePod) == []
    w.step()
    assert w.sub("c").moves == 1  # counted once


def test_a_pod_released_by_a_start_whose_status_write_was_lost_counts_no_move() -> None:
    w = World(
        spec(classical("c"), resources={"classicalPools": [{"name": "cpu"}, {"name": "cpu2"}]})
    )
    w.step()
    pod = w.sub("c").podName
    # It went to cpu by the start; the status says cpu2 (another cycle's placement, stored
    # after the write that said cpu was lost): the pod's pool wins, and nothing moved.
    w.sub("c").placement = pool("cpu2")
    w.pods[pod] = dataclasses.replace(w.pods[pod], phase=PodPhase.PENDING, pool="cpu")
    p = w.step()
    st = w.sub("c")
    assert st.placement == pool("cpu") and st.moves == 0
    assert not any(e.reason == "Moved" for e in p.events)


def test_a_running_simulation_is_relaunched_without_counting_a_failure() -> None:
    w = World(spec(circuit("q")))  # no backends: simulated on the cpu pool
    w.step()
    pod = w.sub("q").podName
    w.pod_phase(pod, PodPhase.RUNNING)
    w.step()
    assert w.sub("q").phase is SubtaskPhase.RUNNING
    w.now += dt.timedelta(seconds=120)  # it ran two minutes before the pass moved it
    w.moves = {"q": MoveRequest(pool("gpu"), "600 s here vs 30 s there", how="relaunch")}
    w.step()  # the intent, stored first
    assert w.sub("q").moving is not None and w.sub("q").moving.relaunch
    running = w.pods[pod]
    stop = w.step()
    assert actions(stop, DeletePod) == [DeletePod(pod, "moving to gpu")]
    # The kubelet stops it: Failed while its deletion completes. Not a failed attempt.
    w.pods[pod] = dataclasses.replace(running, phase=PodPhase.FAILED, deleting=True)
    again = w.step()
    assert actions(again, DeletePod) == [] and w.sub("q").failures == 0
    w.pods.pop(pod)
    start = w.step()
    assert [(a.pod_name, a.pool) for a in actions(start, CreatePod)] == [("wf-q-2", "gpu")]
    st = w.sub("q")
    assert st.moves == 1 and st.failures == 0 and st.attempts == 2 and st.moving is None
    assert st.movedFrom == "cpu"
    # The stopped pod's two minutes on the CPU pool are billed (it reported no usage).
    assert w.status.costUSD == pytest.approx(120 * CPU_POD_USD_PER_HOUR / 3600, abs=1e-6)


def test_a_simulation_that_finishes_before_its_relaunch_keeps_its_result() -> None:
    w = World(spec(circuit("q")))
    w.step()
    pod = w.sub("q").podName
    w.pod_phase(pod, PodPhase.RUNNING)
    w.step()
    w.moves = {"q": MoveRequest(pool("gpu"), "faster there", how="relaunch")}
    w.step()
    w.pod_phase(pod, PodPhase.SUCCEEDED, result={"counts": {"000": 1}})
    p = w.step()
    assert [e.reason for e in p.events if e.reason.startswith("Move")] == ["MoveAbandoned"]
    w.step()
    st = w.sub("q")
    assert st.phase is SubtaskPhase.SUCCEEDED and st.attempts == 1 and st.moves == 0
