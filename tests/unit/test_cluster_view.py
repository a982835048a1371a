"""What a workflow's cycle tells the cluster pass, and what it gets back."""

from __future__ import annotations

import dataclasses

from qorch.api.backend import Provider
from qorch.api.workflow import Placement, PredictedOutcome, ResourceKind, SubtaskPhase
from qorch.orchestrator import BackendInfo, JobPhase, JobState, RulePolicy
from qorch.orchestrator.cluster import ClusterDecision, Move, Place, Stage, Wait
from qorch.orchestrator.cluster_view import backend_loads, requests_for, workflow_entry
from qorch.orchestrator.placement import DecidedPolicy, Infeasible
from qorch.orchestrator.prediction import MODEL, QPU, Prediction
from qorch.orchestrator.snapshot import MoveRequest, PodPhase
from tests.unit.test_plan import World, circuit, classical, spec

B = Placement(kind=ResourceKind.BACKEND, name="qpu-b")


def world() -> World:
    backends = {
        "qpu-a": BackendInfo("qpu-a", Provider.FAKE, 27),
        "qpu-b": BackendInfo("qpu-b", Provider.FAKE, 27),
    }
    s = spec(circuit("q"), circuit("r", "q"), resources={"quantumBackends": ["qpu-a", "qpu-b"]})
    return World(s, backends)


def test_a_new_workflow_is_all_there_before_its_first_plan() -> None:
    entry = workflow_entry(world().snapshot(), "ns/wf")
    assert {n: e.stage for n, e in entry.subtasks.items()} == {
        "q": Stage.READY,
        "r": Stage.BLOCKED,
    }


def test_stages_follow_jobs_and_queued_jobs_count_as_load() -> None:
    w = world()
    w.step()
    w.step()
    st = w.sub("q")
    st.predicted = PredictedOutcome(
        source="model", queueSecondsP10=1, queueSecondsP50=2, queueSecondsP90=3,
        runSeconds=40, fidelity=0.9, costUSD=1,
    )  # fmt: skip
    snap = w.snapshot()
    entry = workflow_entry(snap, "ns/wf")
    assert entry.subtasks["q"].stage is Stage.QUEUED and entry.subtasks["q"].resource == "qpu-a"
    loads = backend_loads([snap])
    assert (loads["qpu-a"].qorch_jobs, loads["qpu-a"].qorch_run_seconds) == (1, 40.0)
    assert loads["qpu-b"].qorch_jobs == 0
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.RUNNING)
    assert workflow_entry(w.snapshot(), "ns/wf").subtasks["q"].stage is Stage.RUNNING


def test_the_decision_reaches_the_planner_through_the_policy() -> None:
    p = Prediction("r", "qpu-b", QPU, True, 1, 2, 3, 0, 0, 0, 1, 0.9, 1.0, 0, MODEL)
    decision = ClusterDecision(
        places=(Place("ns/wf", "q", B, 0.1, None, "soonest"), Place("x/y", "q", B, 0, None, "")),
        moves=(Move("ns/wf", "r", B, B, "cancel-job", 1.0, 0.5, 0.5, 0.2, 5.0, p, "why"),),
        waits=(Wait("ns/wf", "s", "pool full"),),
    )
    places, moves, held = requests_for(decision, "ns/wf")
    assert places == {"q": B} and set(moves) == {"r"} and held == {"s": "pool full"}
    w = world()
    snap = dataclasses.replace(w.snapshot(), placements=places, held=held)
    policy = DecidedPolicy(RulePolicy())
    subs = {s.name: s for s in w.spec.subtasks}
    assert policy.place(subs["q"], snap) == B  # the rule would take qpu-a (name order)
    assert RulePolicy().place(subs["q"], snap) == Placement(kind=ResourceKind.BACKEND, name="qpu-a")
    held_sub = subs["r"].model_copy(update={"name": "s"})
    assert policy.place(held_sub, snap) == Infeasible("pool full")
    assert policy.place(subs["r"], snap) == RulePolicy().place(subs["r"], snap)  # undecided


def test_a_dependency_that_finished_in_the_snapshot_makes_its_dependents_ready() -> None:
    """The plan of this cycle records the finished pod or job and starts the dependents at
    once, on the pass's placements: the pass must see them ready, not blocked (it would
    leave them to the static rule)."""
    s = spec(
        classical("prep"),
        circuit("q", "prep"),
        circuit("r", "q"),
        resources={"quantumBackends": ["qpu-a", "qpu-b"]},
    )
    w = World(s, world().backends)
    w.step()
    w.step()
    assert w.sub("prep").phase is not SubtaskPhase.SUCCEEDED
    stages = {n: e.stage for n, e in workflow_entry(w.snapshot(), "ns/wf").subtasks.items()}
    assert stages["q"] is Stage.BLOCKED

    w.pod_phase("wf-prep-1", PodPhase.FAILED)
    assert workflow_entry(w.snapshot(), "ns/wf").subtasks["q"].stage is Stage.BLOCKED
    w.pod_phase("wf-prep-1", PodPhase.SUCCEEDED)
    entry = workflow_entry(w.snapshot(), "ns/wf")
    assert entry.subtasks["q"].stage is Stage.READY  # the status still says otherwise
    assert entry.subtasks["r"].stage is Stage.BLOCKED
    assert w.sub("prep").phase is not SubtaskPhase.SUCCEEDED

    w.step()  # prep succeeds, q is placed and submitted
    assert w.sub("prep").phase is SubtaskPhase.SUCCEEDED
    job = w.sub("q").jobId
    assert workflow_entry(w.snapshot(), "ns/wf").subtasks["r"].stage is Stage.BLOCKED
    w.jobs[job] = JobState(job, JobPhase.DONE, result={"counts": {"000": 1}})
    assert workflow_entry(w.snapshot(), "ns/wf").subtasks["r"].stage is Stage.READY


def test_a_queued_job_carries_its_gateway_queue_position() -> None:
    w = world()
    w.step()
    job = w.sub("q").jobId
    assert workflow_entry(w.snapshot(), "ns/wf").subtasks["q"].jobs_ahead is None  # unknown
    w.jobs[job] = JobState(job, JobPhase.QUEUED, queue_position=7)
    w.step()
    entry = workflow_entry(w.snapshot(), "ns/wf").subtasks["q"]
    assert entry.stage is Stage.QUEUED and entry.jobs_ahead == 7


def test_a_reroute_counts_as_a_move_for_hysteresis_and_says_where_it_came_from() -> None:
    from tests.unit.test_plan_variational import backend, vqe
    from tests.unit.test_plan_variational import world as vqe_world

    w = vqe_world(vqe())
    w.step()
    w.pod_phase(w.sub("vqe").podName, PodPhase.RUNNING)
    w.step()
    assert workflow_entry(w.snapshot(), "ns/wf").subtasks["vqe"].last_moved is None
    w.moves = {"vqe": MoveRequest(backend("qb"), "cheaper")}
    w.step()
    entry = workflow_entry(w.snapshot(), "ns/wf").subtasks["vqe"]
    # Going back to qa needs the hysteresis too, and a recent move is recent.
    assert entry.resource == "qb" and entry.moved_from == "qa" and entry.moves == 1
    assert entry.last_moved == w.now


def test_one_pass_decides_for_every_published_workflow_and_reads_pool_capacity() -> None:
    from qorch.orchestrator.capacity import NodeInfo
    from qorch.orchestrator.cluster_view import decide_cluster

    assert decide_cluster({}) == ClusterDecision()
    steps = spec(classical("s"))  # the default pools: cpu and gpu, by node label
    snaps = {f"ns/w{i}": dataclasses.replace(World(steps).snapshot(), name=f"w{i}")
             for i in range(3)}  # fmt: skip
    unlimited = decide_cluster(snaps)
    assert sorted(p.workflow for p in unlimited.places) == ["ns/w0", "ns/w1", "ns/w2"]
    # One CPU node with room for two of the three steps' pods (500m each): one waits.
    node = NodeInfo("n0", {"qorch.io/pool": "cpu"}, cpu_cores=1.0, memory_bytes=8 << 30)
    limited = decide_cluster(snaps, [node], [])
    assert len(limited.places) == 2 and len(limited.waits) == 1
    assert "room" in limited.waits[0].reason
