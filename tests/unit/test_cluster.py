"""The cluster-wide decision pass (``orchestrator/cluster.py``): placements see each other
(twenty identical workflows spread by predicted completion), a queue spike or a degraded
calibration moves still-queued work away with the numbers in the reason, nothing moves when
nothing changed (also after moves), the move cap, hysteresis and ``enabled`` hold, pool
capacity is respected and infeasible pairs are never chosen."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qorch.api.backend import Provider
from qorch.api.workflow import (
    BudgetSpec,
    CircuitSpec,
    ClassicalPool,
    ClassicalResources,
    ClassicalSpec,
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ObjectivePreset,
    ObjectiveSpec,
    PauliTerm,
    ReallocationSpec,
    ResourceKind,
    ResourcesSpec,
    SubtaskSpec,
    VariationalSpec,
)
from qorch.orchestrator.cluster import (
    CANCEL_ROUND_TRIP_SECONDS,
    RECENT_MOVE_INTERVALS,
    BackendLoad,
    ClusterDecision,
    ClusterSnapshot,
    PoolCapacity,
    Stage,
    SubtaskEntry,
    WorkflowEntry,
    capacity_key,
    decide,
    pod_request,
    quantity,
    relative_gain,
)
from qorch.orchestrator.cost import usable
from qorch.orchestrator.prediction import MODEL, POOL, QPU, Prediction
from qorch.orchestrator.snapshot import BackendInfo
from qorch.orchestrator.text import SHORT_LIMIT

NOW = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)
QASM = "OPENQASM 3.0; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"
RUN = 60.0  # QPU seconds of every test job
GIB = float(1 << 30)

Predictions = dict[tuple[str, str], Prediction]


def qpu(
    subtask: str, backend: str, wait: float, run: float = RUN, fidelity: float = 0.9
) -> Prediction:
    return Prediction(
        subtask, backend, QPU, True,
        wait * 0.5 + run, wait + run, wait * 2 + run,
        wait * 0.5, wait, wait * 2,
        run, fidelity, run * 1.6, 0, MODEL,
    )  # fmt: skip


def sim(subtask: str, pool: str, seconds: float, usd: float = 0.01) -> Prediction:
    return Prediction(
        subtask, pool, POOL, True, seconds, seconds, seconds, 0.0, 0.0, 0.0, seconds, 1.0,
        usd, 1 << 28, MODEL,
    )  # fmt: skip


def infeasible(subtask: str, resource: str) -> Prediction:
    """Unusable, yet with tempting finite figures: a pass that ignored ``feasible`` would
    pick it."""
    return qpu(subtask, resource, 0.0, run=0.1, fidelity=1.0)._replace(feasible=False)


def circuit(name: str, *deps: str) -> SubtaskSpec:
    return SubtaskSpec(name=name, dependsOn=list(deps), circuit=CircuitSpec(qasm=QASM))


CPU = ClassicalPool(name="cpu", nodeSelector={"pool": "cpu"}, maxQubits=28)
CPU2 = ClassicalPool(name="cpu2", nodeSelector={"pool": "cpu2"}, maxQubits=28)
GPU = ClassicalPool(name="gpu", nodeSelector={"pool": "gpu"}, gpu=True, maxQubits=32)


def spec(
    subtasks: list[SubtaskSpec] | None = None,
    backends: tuple[str, ...] = ("qa", "qb", "qc"),
    pools: tuple[ClassicalPool, ...] = (),
    preset: ObjectivePreset = ObjectivePreset.SPEED,
    realloc: ReallocationSpec | None = None,
    budget: BudgetSpec | None = None,
) -> HybridWorkflowSpec:
    return HybridWorkflowSpec(
        subtasks=subtasks or [circuit("a")],
        resources=ResourcesSpec(quantumBackends=list(backends), classicalPools=list(pools)),
        objective=ObjectiveSpec(preset=preset),
        reallocation=realloc or ReallocationSpec(),
        budget=budget or BudgetSpec(),
    )


def entry(
    key: str,
    wf: HybridWorkflowSpec,
    subtasks: list[SubtaskEntry],
    predictions: Predictions,
) -> WorkflowEntry:
    return WorkflowEntry(
        key, wf, HybridWorkflowStatus(), {s.name: s for s in subtasks}, predictions, started=NOW
    )


def load(name: str, jobs: int = 0, healthy: bool = True) -> BackendLoad:
    return BackendLoad(BackendInfo(name, Provider.FAKE, 127, healthy=healthy), jobs, jobs * RUN)


# ---- a toy world: one-job workflows over backends whose queues Qorch's jobs lengthen ----

EXTERNAL = {"qa": 100.0, "qb": 200.0, "qc": 300.0}  # others' queue wait per backend


@dataclasses.dataclass
class Job:
    """Where one workflow's only subtask stands in the toy world."""

    stage: Stage = Stage.READY
    backend: str | None = None
    moves: int = 0
    last_moved: dt.datetime | None = None
    moved_from: str | None = None


def world(
    jobs: Mapping[str, Job],
    external: Mapping[str, float] = EXTERNAL,
    *,
    fidelity: Mapping[str, float] | None = None,
    wf: HybridWorkflowSpec | None = None,
) -> ClusterSnapshot:
    """A perfect predictor: a backend's wait is others' wait plus Qorch's jobs queued there."""
    ours = Counter(j.backend for j in jobs.values() if j.stage is Stage.QUEUED)
    wf = wf or spec(backends=tuple(external))
    fid = fidelity or {}
    entries = []
    for key, j in jobs.items():
        predictions = {
            ("a", b): qpu("a", b, w + RUN * ours[b], fidelity=fid.get(b, 0.9))
            for b, w in external.items()
        }
        sub = SubtaskEntry(
            "a", j.stage, j.backend, since=NOW, moves=j.moves, last_moved=j.last_moved,
            moved_from=j.moved_from,
        )  # fmt: skip
        entries.append(entry(key, wf, [sub], predictions))
    return ClusterSnapshot(NOW, entries, {b: load(b, ours[b]) for b in external})


def apply(jobs: dict[str, Job], decision: ClusterDecision) -> None:
    """What the operator would do: placed jobs are queued, moved ones queued elsewhere."""
    for p in decision.places:
        jobs[p.workflow] = Job(Stage.QUEUED, p.placement.name)
    for m in decision.moves:
        old = jobs[m.workflow]
        jobs[m.workflow] = Job(Stage.QUEUED, m.target.name, old.moves + 1, NOW, m.source.name)


def twenty() -> dict[str, Job]:
    return {f"ns/w{i:02d}": Job() for i in range(20)}


# ---- placements see each other -------------------------------------------------------


def test_twenty_identical_workflows_spread_over_backends_by_predicted_completion() -> None:
    decision = decide(world(twenty()))
    assert len(decision.places) == 20 and not decision.moves and not decision.waits
    counts = Counter(p.placement.name for p in decision.places)
    # Greedy by predicted completion: qa takes jobs until its wait passes qb's, and so on.
    assert counts == {"qa": 8, "qb": 7, "qc": 5}
    seen: Counter[str] = Counter()
    for p in decision.places:
        b = p.placement.name
        assert p.prediction is not None
        # Each saw the run time of the jobs placed there before it in its queue wait.
        assert p.prediction.seconds_p50 == pytest.approx(EXTERNAL[b] + RUN * seen[b] + RUN)
        # ... and no other backend would have finished it sooner at that point.
        for other, w in EXTERNAL.items():
            assert p.prediction.seconds_p50 <= w + RUN * seen[other] + RUN + 1e-9
        seen[b] += 1
    last = max(p.prediction.seconds_p50 for p in decision.places if p.prediction)
    assert last <= 620 < EXTERNAL["qa"] + 20 * RUN  # all on the shortest queue: 1,300 s


def test_stationary_world_makes_no_moves_after_placing_or_after_moving() -> None:
    jobs = twenty()
    apply(jobs, decide(world(jobs)))
    for _ in range(3):  # the same world, decided again and again: nothing moves
        again = decide(world(jobs))
        assert again.moves == () and again.places == () and again.waits == ()
    # A newcomer sees each queue as it is: others' wait plus Qorch's 20 jobs, counted once.
    counts = Counter(j.backend for j in jobs.values())
    (newcomer,) = decide(world({**jobs, "ns/zz": Job()})).places
    assert newcomer.prediction is not None
    soonest = min(w + RUN * counts[b] for b, w in EXTERNAL.items()) + RUN
    assert newcomer.prediction.seconds_p50 == pytest.approx(soonest)
    # The literal same snapshot twice: same (empty) answer.
    snap = world(jobs)
    assert decide(snap) == decide(snap)
    assert decide(snap).moves == ()

    # A queue spike on qa moves its jobs; once moved, the changed world is stationary again.
    spiked = {**EXTERNAL, "qa": 20_000.0}
    first = decide(world(jobs, spiked))
    assert first.moves and {m.source.name for m in first.moves} == {"qa"}
    apply(jobs, first)
    for _ in range(3):
        assert decide(world(jobs, spiked)).moves == ()


# ---- moves -----------------------------------------------------------------------------


def queued_at(
    backend: str,
    waits: Mapping[str, float],
    *,
    fidelity: Mapping[str, float] | None = None,
    preset: ObjectivePreset = ObjectivePreset.SPEED,
    realloc: ReallocationSpec | None = None,
    waited: float = 60.0,
    moves: int = 0,
    last_moved: dt.datetime | None = None,
    moved_from: str | None = None,
) -> ClusterSnapshot:
    """One workflow whose only job waits at ``backend`` since ``waited`` seconds."""
    wf = spec(backends=tuple(waits), preset=preset, realloc=realloc)
    fid = fidelity or {}
    predictions = {("a", b): qpu("a", b, w, fidelity=fid.get(b, 0.9)) for b, w in waits.items()}
    since = NOW - dt.timedelta(seconds=waited)
    s = SubtaskEntry(
        "a", Stage.QUEUED, backend, since=since, moves=moves, last_moved=last_moved,
        moved_from=moved_from,
    )  # fmt: skip
    loads = {b: load(b, 1 if b == backend else 0) for b in waits}
    return ClusterSnapshot(NOW, [entry("ns/w", wf, [s], predictions)], loads)


def test_a_queue_spike_moves_a_still_queued_job_away_saying_both_costs() -> None:
    calm = decide(queued_at("qa", {"qa": 300.0, "qb": 400.0}))
    assert calm.moves == () and calm.places == ()

    decision = decide(queued_at("qa", {"qa": 5000.0, "qb": 400.0}))
    (move,) = decision.moves
    assert (move.source.name, move.target.name, move.how) == ("qa", "qb", "cancel-job")
    assert move.target.kind is ResourceKind.BACKEND
    assert move.score_here is not None and move.score_there < move.score_here
    assert move.gain > move.required == pytest.approx(0.2)
    # The price: 60 s waited is lost (qa counts only what is left), plus the cancel.
    assert move.price_seconds == pytest.approx(60.0 + CANCEL_ROUND_TRIP_SECONDS)
    assert move.prediction.seconds_p50 == pytest.approx(400 + RUN + CANCEL_ROUND_TRIP_SECONDS)
    for text in (f"{move.score_here:.3f}", f"{move.score_there:.3f}", "qa", "qb"):
        assert text in move.reason
    assert "price of moving 65s" in move.reason and len(move.reason) <= SHORT_LIMIT
    assert decision.scores[("ns/w", "a")] == move.score_there


def test_queued_jobs_are_decided_before_new_work_which_queues_behind_them() -> None:
    # ns/w1 waits at qb; qa is sooner: it moves there first, and the newcomer ns/w0 (first
    # by name) sees it ahead in qa's queue.
    jobs = {"ns/w0": Job(), "ns/w1": Job(Stage.QUEUED, "qb")}
    decision = decide(world(jobs, {"qa": 100.0, "qb": 200.0}))
    (move,) = decision.moves
    assert (move.workflow, move.target.name) == ("ns/w1", "qa")
    (place,) = decision.places
    assert place.prediction is not None and place.placement.name == "qa"
    assert place.prediction.queue_seconds_p50 == pytest.approx(100.0 + RUN)
    assert "counting 1 other job(s)" in place.reason


def test_the_time_already_waited_keeps_a_job_where_it_is() -> None:
    # qa predicts 900 s for a new job, qb 500 s: a NEW job would go to qb, but this one has
    # waited 600 s at qa already and has about 300 s left there.
    assert decide(queued_at("qa", {"qa": 900.0, "qb": 500.0}, waited=600)).moves == ()
    assert len(decide(queued_at("qa", {"qa": 900.0, "qb": 500.0}, waited=0)).moves) == 1


def test_a_degraded_calibration_moves_work_under_accuracy_not_under_speed() -> None:
    waits = {"qa": 300.0, "qb": 450.0}
    healthy = {"qa": 0.92, "qb": 0.90}
    degraded = {"qa": 0.60, "qb": 0.90}
    accuracy = ObjectivePreset.ACCURACY
    assert decide(queued_at("qa", waits, fidelity=healthy, preset=accuracy)).moves == ()
    (move,) = decide(queued_at("qa", waits, fidelity=degraded, preset=accuracy)).moves
    assert move.target.name == "qb"
    assert "1-fidelity 0.400" in move.reason and "1-fidelity 0.100" in move.reason
    # The same drop under ``speed``: qa is still sooner, and time is what counts there.
    assert decide(queued_at("qa", waits, fidelity=degraded)).moves == ()


def test_move_cap_and_disabled_reallocation_hold() -> None:
    spike = {"qa": 5000.0, "qb": 400.0}
    long_ago = NOW - dt.timedelta(hours=1)
    assert len(decide(queued_at("qa", spike, moves=1, last_moved=long_ago)).moves) == 1
    assert decide(queued_at("qa", spike, moves=2, last_moved=long_ago)).moves == ()
    capped = ReallocationSpec(maxMovesPerSubtask=0)
    assert decide(queued_at("qa", spike, realloc=capped)).moves == ()
    off = ReallocationSpec(enabled=False)
    assert decide(queued_at("qa", spike, realloc=off)).moves == ()
    # Disabled moves, not placements: new work is still placed (and spread).
    jobs = twenty()
    wf = spec(realloc=off)
    placed = decide(world(jobs, wf=wf))
    assert len(placed.places) == 20 and len({p.placement.name for p in placed.places}) == 3
    apply(jobs, placed)
    assert decide(world(jobs, {**EXTERNAL, "qa": 20_000.0}, wf=wf)).moves == ()


def test_hysteresis_a_recent_or_returning_move_needs_threshold_plus_hysteresis() -> None:
    waits = {"qa": 700.0, "qb": 400.0}
    (probe,) = decide(queued_at("qa", waits, waited=0)).moves
    gain = probe.gain
    assert 0.1 < gain < 1
    # A threshold just under the gain: a subtask that never moved moves...
    realloc = ReallocationSpec(threshold=gain - 0.02, hysteresis=0.05)
    fresh = decide(queued_at("qa", waits, realloc=realloc, waited=0))
    assert len(fresh.moves) == 1 and fresh.moves[0].required == pytest.approx(gain - 0.02)
    # ... one moved within the window does not, nor one that would go back where it was.
    interval = realloc.intervalSeconds
    recent = NOW - dt.timedelta(seconds=interval * RECENT_MOVE_INTERVALS - 1)
    old = NOW - dt.timedelta(seconds=interval * RECENT_MOVE_INTERVALS + 1)

    def moved_once(last_moved: dt.datetime, moved_from: str | None = None) -> ClusterDecision:
        return decide(
            queued_at(
                "qa", waits, realloc=realloc, waited=0, moves=1, last_moved=last_moved,
                moved_from=moved_from,
            )
        )  # fmt: skip

    assert moved_once(recent).moves == ()
    assert len(moved_once(old).moves) == 1
    assert moved_once(old, moved_from="qb").moves == ()
    # With a gain above threshold + hysteresis, the recent one moves too.
    wide = ReallocationSpec(threshold=gain - 0.06, hysteresis=0.05)
    moved = decide(queued_at("qa", waits, last_moved=recent, realloc=wide, waited=0, moves=1))
    assert len(moved.moves) == 1 and moved.moves[0].required == pytest.approx(gain - 0.01)


def test_a_deadline_breach_justifies_a_move_without_a_gain() -> None:
    # accuracy: qb's lower fidelity makes it worse by score, so staying on qa would win;
    # but qa's P90 (1860 s) misses the deadline and qb's (665 s) keeps it.
    wf = spec(
        backends=("qa", "qb"),
        preset=ObjectivePreset.ACCURACY,
        budget=BudgetSpec(deadlineSeconds=1500),
    )
    predictions = {
        ("a", "qa"): qpu("a", "qa", 900.0, fidelity=0.95),
        ("a", "qb"): qpu("a", "qb", 300.0, fidelity=0.9),
    }
    s = SubtaskEntry("a", Stage.QUEUED, "qa", since=NOW)
    snap = ClusterSnapshot(
        NOW, [entry("ns/w", wf, [s], predictions)], {"qa": load("qa", 1), "qb": load("qb")}
    )
    (move,) = decide(snap).moves
    assert move.target.name == "qb" and move.score_there > (move.score_here or 0)
    assert "deadline" in move.reason


# ---- pods: gated, released, capacity --------------------------------------------------


def pool_world(
    stages: Mapping[str, tuple[Stage, str | None]],
    capacity: Mapping[str, PoolCapacity],
    *,
    pools: tuple[ClassicalPool, ...] = (CPU, GPU),
    backends: Mapping[str, float] | None = None,
    seconds: Mapping[str, float] | None = None,
) -> ClusterSnapshot:
    """One workflow per key: a 20-qubit circuit, fastest on the GPU pool."""
    backends = {"qa": 3000.0} if backends is None else backends
    seconds = seconds or {"gpu": 30.0, "cpu": 600.0, "cpu2": 600.0}
    wf = spec(backends=tuple(backends), pools=pools)
    entries = []
    for key, (stage, where) in stages.items():
        predictions: Predictions = {("a", b): qpu("a", b, w) for b, w in backends.items()}
        predictions.update({("a", p.name): sim("a", p.name, seconds[p.name]) for p in pools})
        sub = SubtaskEntry("a", stage, where, since=NOW, num_qubits=20)
        entries.append(entry(key, wf, [sub], predictions))
    return ClusterSnapshot(NOW, entries, {b: load(b) for b in backends}, keyed(capacity, pools))


def keyed(
    capacity: Mapping[str, PoolCapacity], pools: tuple[ClassicalPool, ...]
) -> dict[str, PoolCapacity]:
    """Free capacity by pool name, keyed as the pass reads it (``capacity_key``)."""
    return {capacity_key(p): capacity[p.name] for p in pools if p.name in capacity}


ROOMY = PoolCapacity(cpu_cores=64, memory_bytes=256 * GIB, gpus=0)


def test_pool_capacity_is_respected_and_released_pods_count_first() -> None:
    stages: dict[str, tuple[Stage, str | None]] = {
        f"ns/w{i}": (Stage.READY, None) for i in range(5)
    }
    gpus = {"cpu": ROOMY, "gpu": PoolCapacity(cpu_cores=64, memory_bytes=256 * GIB, gpus=2)}
    decision = decide(pool_world(stages, gpus))
    where = Counter(p.placement.name for p in decision.places)
    assert where == {"gpu": 2, "cpu": 3}  # two GPUs free; the CPU pool beats qa's queue
    # A released pod not bound yet holds one of the two GPUs.
    stages["ns/w0"] = (Stage.RELEASED, "gpu")
    decision = decide(pool_world(stages, gpus))
    assert Counter(p.placement.name for p in decision.places) == {"gpu": 1, "cpu": 3}
    # Nothing fits and no backend: they wait, saying why.
    full = {"cpu": PoolCapacity(0.5, GIB), "gpu": PoolCapacity(64, 256 * GIB, 0)}
    waiting = decide(pool_world({"ns/w": (Stage.READY, None)}, full, backends={}))
    assert waiting.places == () and len(waiting.waits) == 1
    assert "available" in waiting.waits[0].reason


def test_a_gated_pod_is_committed_narrowed_or_replaced() -> None:
    roomy = {"cpu": ROOMY, "cpu2": ROOMY, "gpu": PoolCapacity(64, 256 * GIB, 4)}
    # Gated on the GPU pool, its best: released there (a placement, no move).
    kept = decide(pool_world({"ns/w": (Stage.GATED, "gpu")}, roomy))
    assert [(p.placement.name, p.subtask) for p in kept.places] == [("gpu", "a")]
    assert kept.moves == ()
    # Gated on the CPU pool: the GPU pool needs another pod (a GPU request): replaced.
    (move,) = decide(pool_world({"ns/w": (Stage.GATED, "cpu")}, roomy)).moves
    assert (move.target.name, move.how) == ("gpu", "replace-pod")
    # Between two CPU pools the requests are the same: narrowed, for free.
    seconds = {"gpu": 30.0, "cpu": 900.0, "cpu2": 300.0}
    (move,) = decide(
        pool_world({"ns/w": (Stage.GATED, "cpu")}, roomy, pools=(CPU, CPU2), seconds=seconds)
    ).moves
    assert (move.target.name, move.how, move.price_seconds) == ("cpu2", "narrow", 0.0)
    # Its pool is full and moves are off: it stays gated, and the reason says so.
    full = {"cpu": PoolCapacity(0, 0), "cpu2": ROOMY}
    snap = pool_world({"ns/w": (Stage.GATED, "cpu")}, full, pools=(CPU, CPU2), seconds=seconds)
    off = [
        dataclasses.replace(
            e, spec=e.spec.model_copy(update={"reallocation": ReallocationSpec(enabled=False)})
        )
        for e in snap.workflows
    ]
    (wait,) = decide(dataclasses.replace(snap, workflows=off)).waits
    assert "no room" in wait.reason and "reallocation disabled" in wait.reason


def test_classical_steps_are_placed_by_rule_on_a_pool_with_room() -> None:
    step = SubtaskSpec(
        name="post",
        classical=ClassicalSpec(
            image="busybox", resources=ClassicalResources(cpu="2", memory="1Gi")
        ),
    )
    wf = spec(subtasks=[step], pools=(CPU, GPU))
    snap = ClusterSnapshot(
        NOW,
        [entry(f"ns/w{i}", wf, [SubtaskEntry("post", Stage.READY)], {}) for i in range(3)],
        {},
        keyed(
            {"cpu": PoolCapacity(cpu_cores=4, memory_bytes=8 * GIB), "gpu": PoolCapacity(0, 0, 0)},
            (CPU, GPU),
        ),
    )
    decision = decide(snap)
    assert [p.placement.name for p in decision.places] == ["cpu", "cpu"]
    assert len(decision.waits) == 1 and "room" in decision.waits[0].reason


def test_quantities_and_pod_requests_match_the_pod_spec() -> None:
    assert quantity("500m") == 0.5 and quantity("2") == 2 and quantity("1Gi") == GIB
    assert quantity("1.5G") == 1.5e9 and quantity("nonsense") == 0.0
    r = pod_request(circuit("a"), GPU, 20)
    assert r.cpu == 1 and r.gpus == 1 and r.memory == (512 << 20) + (16 << 20)
    assert pod_request(circuit("a"), CPU, 20).gpus == 0
    assert pod_request(circuit("a"), GPU, 31).gpus == 0  # matrix product state: CPU only


# ---- never an infeasible or unhealthy choice ------------------------------------------


def test_infeasible_pairs_and_unhealthy_backends_are_never_chosen() -> None:
    wf = spec(backends=("qa", "qb", "qz"))
    predictions = {
        ("a", "qa"): qpu("a", "qa", 900.0),
        ("a", "qb"): qpu("a", "qb", 0.0),  # best, but its backend is down
        ("a", "qz"): infeasible("a", "qz"),
    }
    loads = {"qa": load("qa"), "qb": load("qb", healthy=False), "qz": load("qz")}
    ready = entry("ns/r", wf, [SubtaskEntry("a", Stage.READY)], predictions)
    queued = entry(
        "ns/q",
        wf,
        [SubtaskEntry("a", Stage.QUEUED, "qa", since=NOW)],
        {**predictions, ("a", "qa"): qpu("a", "qa", 50_000.0)},
    )
    decision = decide(ClusterSnapshot(NOW, [ready, queued], loads))
    assert [p.placement.name for p in decision.places] == ["qa"]
    assert decision.moves == ()
    # Nothing usable at all: a wait with the cost function's reason.
    only_bad = entry(
        "ns/x", wf, [SubtaskEntry("a", Stage.READY)], {("a", "qz"): infeasible("a", "qz")}
    )
    (wait,) = decide(ClusterSnapshot(NOW, [only_bad], loads)).waits
    assert "infeasible" in wait.reason


def test_dag_order_and_running_work() -> None:
    """A blocked step is not placed; a running one is not moved but counts for the rest;
    the step with the longer path after it is decided first."""
    wf = spec(subtasks=[circuit("a"), circuit("b"), circuit("c", "b")], backends=("qa", "qb"))
    predictions = {
        (s, b): qpu(s, b, w) for s in "abc" for b, w in {"qa": 100.0, "qb": 160.0}.items()
    }
    subs = [
        SubtaskEntry("a", Stage.READY),
        SubtaskEntry("b", Stage.READY),
        SubtaskEntry("c", Stage.BLOCKED),
    ]
    decision = decide(
        ClusterSnapshot(
            NOW, [entry("ns/w", wf, subs, predictions)], {b: load(b) for b in ("qa", "qb")}
        )
    )
    assert [p.subtask for p in decision.places] == ["b", "a"]  # b has c after it
    assert decision.places[0].placement.name == "qa"  # the critical step gets the best
    running = [SubtaskEntry("b", Stage.RUNNING, "qa", since=NOW), SubtaskEntry("c", Stage.BLOCKED)]
    assert (
        decide(ClusterSnapshot(NOW, [entry("ns/w", wf, running, predictions)], {}))
        == ClusterDecision()
    )


# ---- properties ------------------------------------------------------------------------

BACKENDS = ("qa", "qb", "qc")
POOLS = (CPU, GPU)


@st.composite
def snapshots(draw: st.DrawFn) -> ClusterSnapshot:
    realloc = ReallocationSpec(
        enabled=draw(st.booleans()),
        threshold=draw(st.sampled_from([0.05, 0.2, 0.5])),
        hysteresis=0.05,
        maxMovesPerSubtask=draw(st.integers(0, 3)),
    )
    entries = []
    for w in range(draw(st.integers(1, 5))):
        names = [f"s{i}" for i in range(draw(st.integers(1, 4)))]
        subtasks = [
            circuit(n, *([names[i - 1]] if i and draw(st.booleans()) else []))
            for i, n in enumerate(names)
        ]
        wf = spec(
            subtasks=subtasks,
            backends=BACKENDS,
            pools=POOLS,
            preset=draw(st.sampled_from(list(ObjectivePreset))),
            realloc=realloc,
        )
        predictions: Predictions = {}
        subs = []
        for n in names:
            for b in BACKENDS:
                if draw(st.integers(0, 4)) == 0:
                    predictions[(n, b)] = infeasible(n, b)
                else:
                    wait = draw(st.floats(0, 5000))
                    predictions[(n, b)] = qpu(
                        n, b, wait, draw(st.floats(1, 300)), draw(st.floats(0.3, 1))
                    )
            for p in POOLS:
                if draw(st.booleans()):
                    predictions[(n, p.name)] = sim(n, p.name, draw(st.floats(1, 5000)))
            stage = draw(st.sampled_from(list(Stage)))
            where = None
            if stage in (Stage.GATED, Stage.RELEASED):
                where = draw(st.sampled_from([p.name for p in POOLS]))
            elif stage in (Stage.QUEUED, Stage.RUNNING):
                where = draw(st.sampled_from(BACKENDS))
            subs.append(
                SubtaskEntry(
                    n, stage, where,
                    since=NOW - dt.timedelta(seconds=draw(st.floats(0, 3000))),
                    num_qubits=draw(st.integers(2, 30)),
                    moves=draw(st.integers(0, 3)),
                )
            )  # fmt: skip
        entries.append(entry(f"ns/w{w}", wf, subs, predictions))
    loads = {b: load(b, draw(st.integers(0, 3)), healthy=draw(st.booleans())) for b in BACKENDS}
    pools = {
        capacity_key(p): PoolCapacity(
            draw(st.floats(0, 8)), draw(st.floats(0, 16)) * GIB, draw(st.integers(0, 3))
        )
        for p in POOLS
        if draw(st.booleans())
    }
    return ClusterSnapshot(NOW, entries, loads, pools)


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(snapshots())
def test_decide_is_deterministic_feasible_capped_and_within_capacity(snap: ClusterSnapshot) -> None:
    decision = decide(snap)
    assert decide(snap) == decision
    by_key = {e.key: e for e in snap.workflows}
    decided: Counter[tuple[str, str]] = Counter()

    def check_target(workflow: str, subtask: str, target: str, p: Prediction | None) -> None:
        e = by_key[workflow]
        s = e.subtasks[subtask]
        stored = e.predictions.get((subtask, target))
        assert stored is not None and usable(stored), "placed on an unusable pair"
        assert p is not None and p.resource == target
        if target in snap.backends:
            assert snap.backends[target].info.healthy or target == s.resource

    for p in decision.places:
        decided[(p.workflow, p.subtask)] += 1
        assert by_key[p.workflow].subtasks[p.subtask].stage in (Stage.READY, Stage.GATED)
        check_target(p.workflow, p.subtask, p.placement.name, p.prediction)
        assert len(p.reason) <= SHORT_LIMIT
    for m in decision.moves:
        decided[(m.workflow, m.subtask)] += 1
        e = by_key[m.workflow]
        s = e.subtasks[m.subtask]
        assert e.spec.reallocation.enabled and s.moves < e.spec.reallocation.maxMovesPerSubtask
        assert s.stage in (Stage.GATED, Stage.RELEASED, Stage.QUEUED)
        assert m.source.name == s.resource != m.target.name
        assert (
            m.gain > m.required
            or math.isinf(m.gain)
            or "deadline" in m.reason
            or "budget" in m.reason
        )
        check_target(m.workflow, m.subtask, m.target.name, m.prediction)
        assert len(m.reason) <= SHORT_LIMIT
    for w in decision.waits:
        decided[(w.workflow, w.subtask)] += 1
        assert len(w.reason) <= SHORT_LIMIT
    assert all(n == 1 for n in decided.values())
    for e in snap.workflows:  # every placeable subtask is answered
        for s in e.subtasks.values():
            if s.stage in (Stage.READY, Stage.GATED):
                assert decided[(e.key, s.name)] == 1
            if s.stage in (Stage.BLOCKED, Stage.RUNNING):
                assert decided[(e.key, s.name)] == 0
    _within_capacity(snap, decision)


def _within_capacity(snap: ClusterSnapshot, decision: ClusterDecision) -> None:
    """New pods (placements and moves onto pools) fit in what the released pods left."""
    by_key = {e.key: e for e in snap.workflows}
    moved = {(m.workflow, m.subtask) for m in decision.moves}
    for key, cap in snap.pools.items():
        pool = next(p for p in POOLS if capacity_key(p) == key)
        name = pool.name
        held = [0.0, 0.0, 0.0]
        for e in snap.workflows:
            for s in e.subtasks.values():
                if (
                    s.stage is Stage.RELEASED
                    and s.resource == name
                    and (e.key, s.name) not in moved
                ):
                    r = pod_request(
                        next(x for x in e.spec.subtasks if x.name == s.name), pool, s.num_qubits
                    )
                    held = [a + b for a, b in zip(held, r, strict=True)]
        new = [0.0, 0.0, 0.0]
        targets = [(p.workflow, p.subtask) for p in decision.places if p.placement.name == name]
        targets += [(m.workflow, m.subtask) for m in decision.moves if m.target.name == name]
        for wk, sn in targets:
            e = by_key[wk]
            r = pod_request(
                next(x for x in e.spec.subtasks if x.name == sn), pool, e.subtasks[sn].num_qubits
            )
            new = [a + b for a, b in zip(new, r, strict=True)]
        if new == [0.0, 0.0, 0.0]:
            continue
        free = (cap.cpu_cores - held[0], cap.memory_bytes - held[1], cap.gpus - held[2])
        for n, f in zip(new, free, strict=True):
            assert n <= max(f, 0.0) + 1e-6, f"pool {name} overdrawn"


@PROPERTY
@given(st.lists(st.floats(0, 3000), min_size=2, max_size=4), st.integers(1, 30))
def test_placing_then_deciding_again_never_moves(waits: list[float], n: int) -> None:
    """Whatever the queues, a pass over its own placements (the world unchanged) moves
    nothing."""
    external = {f"q{i}": w for i, w in enumerate(waits)}
    jobs = {f"ns/w{i:02d}": Job() for i in range(n)}
    apply(jobs, decide(world(jobs, external)))
    assert all(j.stage is Stage.QUEUED for j in jobs.values())
    assert decide(world(jobs, external)).moves == ()


def test_a_pool_is_never_chosen_for_a_circuit_larger_than_its_max_qubits() -> None:
    # The GPU pool is by far the fastest, but simulates at most 16 qubits: the 20-qubit
    # circuit goes to the CPU pool (28) instead.
    small_gpu = ClassicalPool(name="gpu", gpu=True, maxQubits=16)
    roomy = {"cpu": ROOMY, "gpu": PoolCapacity(64, 256 * GIB, 4)}
    decision = decide(pool_world({"ns/w": (Stage.READY, None)}, roomy, pools=(CPU, small_gpu)))
    assert [p.placement.name for p in decision.places] == ["cpu"]


def test_a_running_variational_loop_is_rerouted_only_to_a_backend_or_its_own_pool() -> None:
    loop = SubtaskSpec(
        name="a",
        variational=VariationalSpec(qasm=QASM, hamiltonian=[PauliTerm(pauli="ZZ", coefficient=1)]),
    )
    wf = spec([loop], backends=("qa", "qb"), pools=(CPU, CPU2), preset=ObjectivePreset.SPEED)
    roomy = {"cpu": ROOMY, "cpu2": PoolCapacity(0.1, GIB)}  # cpu2: no room for another pod

    def decide_for(waits: dict[str, float], pool_seconds: dict[str, float]) -> ClusterDecision:
        predictions: Predictions = {("a", b): qpu("a", b, w) for b, w in waits.items()}
        predictions.update({("a", p): sim("a", p, s) for p, s in pool_seconds.items()})
        # Its batches go to qa; its optimizer pod runs on cpu (it is already there).
        sub = SubtaskEntry("a", Stage.QUEUED, "qa", since=NOW, num_qubits=2, pod_pool="cpu")
        snap = ClusterSnapshot(
            NOW,
            [entry("ns/w", wf, [sub], predictions)],
            {b: load(b) for b in waits},
            keyed(roomy, (CPU, CPU2)),
        )
        return decide(snap)

    # qa's queue spikes: the next batches go to qb.
    moved = decide_for({"qa": 5000.0, "qb": 10.0}, {"cpu": 9000.0, "cpu2": 1.0})
    assert [(m.source.name, m.target.name) for m in moved.moves] == [("qa", "qb")]
    # Both queues spike; cpu2 would be fastest but needs another pod: simulate on cpu,
    # whose pod exists already (its requests are not charged twice).
    local = decide_for({"qa": 5000.0, "qb": 5000.0}, {"cpu": 5.0, "cpu2": 1.0})
    assert [m.target.name for m in local.moves] == ["cpu"]


def test_a_loop_whose_optimizer_requests_gpus_is_only_simulated_on_a_gpu_pool() -> None:
    resources = ClassicalResources(gpu=1)
    loop = SubtaskSpec(
        name="a",
        variational=VariationalSpec(
            qasm=QASM, hamiltonian=[PauliTerm(pauli="ZZ", coefficient=1)], resources=resources
        ),
    )
    wf = spec([loop], backends=("qa",), pools=(CPU, GPU), preset=ObjectivePreset.SPEED)
    predictions: Predictions = {
        ("a", "qa"): qpu("a", "qa", 5000.0),
        ("a", "cpu"): sim("a", "cpu", 1.0),  # fastest, but the pod would get no GPU there
        ("a", "gpu"): sim("a", "gpu", 60.0),
    }
    sub = SubtaskEntry("a", Stage.READY, num_qubits=2)
    snap = ClusterSnapshot(NOW, [entry("ns/w", wf, [sub], predictions)], {"qa": load("qa")})
    assert [p.placement.name for p in decide(snap).places] == ["gpu"]


def test_a_running_simulation_is_relaunched_only_when_the_gain_pays_for_lost_progress() -> None:
    roomy = {"cpu": ROOMY, "gpu": PoolCapacity(64, 256 * GIB, 4)}

    def running_for(seconds: float, stage: Stage = Stage.RUNNING) -> ClusterDecision:
        snap = pool_world({"ns/w": (stage, "cpu")}, roomy, backends={})
        (e,) = snap.workflows
        sub = dataclasses.replace(e.subtasks["a"], since=NOW - dt.timedelta(seconds=seconds))
        return decide(
            dataclasses.replace(snap, workflows=[dataclasses.replace(e, subtasks={"a": sub})])
        )

    # 600 s on the CPU pool, 30 s on a free GPU: 10 s in, relaunching saves ~9 minutes.
    early = running_for(10)
    assert [(m.source.name, m.target.name, m.how) for m in early.moves] == [
        ("cpu", "gpu", "relaunch")
    ]
    assert "10s progress lost + 5s pod restart" in early.moves[0].reason
    # 590 s in, 10 s are left: the lost progress is not worth it.
    assert running_for(590).moves == ()
    # Nothing moves that is not a running simulation pod: a classical step, a QPU job.
    classical = SubtaskSpec(name="a", classical={"image": "busybox"})
    snap = pool_world({"ns/w": (Stage.RUNNING, "cpu")}, roomy, backends={})
    (e,) = snap.workflows
    steps = dataclasses.replace(e, spec=e.spec.model_copy(update={"subtasks": [classical]}))
    assert decide(dataclasses.replace(snap, workflows=[steps])).moves == ()


def test_a_spike_behind_a_job_whose_place_in_the_queue_is_known_does_not_move_it() -> None:
    # qa's queue spikes (5000 s for a new job), but those jobs arrived after ours: its
    # gateway says one job is ahead of it. It stays; with no position known, it moves.
    spiked = queued_at("qa", {"qa": 5000.0, "qb": 400.0})
    (e,) = spiked.workflows
    known = dataclasses.replace(e.subtasks["a"], jobs_ahead=1)
    stays = decide(dataclasses.replace(
        spiked, workflows=[dataclasses.replace(e, subtasks={"a": known})]))  # fmt: skip
    assert stays.moves == ()
    assert decide(spiked).moves != ()
    # Deep in the queue it is, and qb is sooner: it moves, the reason counting the queue
    # position it gives up (a fresh job's wait at qa minus its own).
    deep = dataclasses.replace(e.subtasks["a"], jobs_ahead=40)
    (move,) = decide(dataclasses.replace(
        spiked, workflows=[dataclasses.replace(e, subtasks={"a": deep})])).moves  # fmt: skip
    assert move.target.name == "qb" and "queue position given up" in move.reason


def test_a_new_pod_counts_its_start_before_its_simulation_runs() -> None:
    # Simulating takes 1 s, but the pod must be scheduled and started first: at one price,
    # a QPU that answers in 6 s (5 s queue, 1 s run) is sooner; one that needs 30 s is not.
    def placed(wait: float) -> str:
        snap = pool_world({"ns/w": (Stage.READY, None)}, {"cpu": ROOMY}, pools=(CPU,),
                          backends={"qa": wait}, seconds={"cpu": 1.0})  # fmt: skip
        (e,) = snap.workflows
        preds = dict(e.predictions)
        preds[("a", "qa")] = qpu("a", "qa", wait, run=1.0, fidelity=1.0)._replace(usd=0.01)
        (place,) = decide(dataclasses.replace(
            snap, workflows=[dataclasses.replace(e, predictions=preds)])).places  # fmt: skip
        return place.placement.name

    assert placed(5.0) == "qa"
    assert placed(30.0) == "cpu"


def test_a_loop_counts_one_batch_in_its_backends_queue_not_all_it_has_left() -> None:
    # A VQE with 100 batches to run and a circuit, both placed in one pass: the loop's
    # whole run weighs in its own cost, but at the backend it holds one batch at a time,
    # so the circuit still finds qa (100 s of others' queue + one 60 s batch) sooner than
    # qb (300 s).
    loop = SubtaskSpec(
        name="vqe",
        variational=VariationalSpec(
            qasm=QASM, hamiltonian=[PauliTerm(pauli="ZZ", coefficient=1)], maxIterations=100
        ),
    )
    wf = spec([loop, circuit("c")], backends=("qa", "qb"))
    predictions: Predictions = {
        (n, b): qpu(n, b, w) for n in ("vqe", "c") for b, w in (("qa", 100.0), ("qb", 300.0))
    }
    subs = [SubtaskEntry("vqe", Stage.READY), SubtaskEntry("c", Stage.READY)]
    snap = ClusterSnapshot(
        NOW, [entry("ns/w", wf, subs, predictions)], {"qa": load("qa"), "qb": load("qb")}
    )
    places = {p.subtask: p for p in decide(snap).places}
    assert places["vqe"].placement.name == "qa" and places["c"].placement.name == "qa"
    # The figures handed back for the loop are one batch's (what the planner records).
    assert places["vqe"].prediction is not None
    assert places["vqe"].prediction.run_seconds == pytest.approx(RUN)


def test_the_gain_is_relative_to_what_staying_costs_not_to_the_distance_from_the_ideal() -> None:
    # Time weighing 0.7 (speed) and the same fidelity and price everywhere. At qb the job
    # would finish 3% sooner (1065 s against 1100 s): qa's score is near zero (4% over the
    # best), and 3% of completion read as a gain of 65% of it, so the job moved. It stays.
    same = {"qa": 1.0, "qb": 1.0}
    slight = decide(queued_at("qa", {"qa": 1100.0, "qb": 1000.0}, fidelity=same, waited=0))
    assert slight.moves == ()
    # Twice as long at qa (its own job's run is not ahead of it): 2000 s against 1065 s,
    # 1 - (1065 / 2000) ** 0.7 = 36% > 20%, and the reason says so.
    (move,) = decide(queued_at("qa", {"qa": 2000.0, "qb": 1000.0}, fidelity=same, waited=0)).moves
    assert move.gain == pytest.approx(1 - (1065 / 2000) ** 0.7, rel=1e-6)
    assert move.gain == pytest.approx(relative_gain(move.score_here or 0.0, move.score_there))
    assert f"gain {move.gain:.0%} > required 20%" in move.reason


def test_relative_gain_reads_as_the_cost_factor_saved() -> None:
    assert relative_gain(0.5, 0.5) == 0.0
    assert relative_gain(1.0, 0.0) == pytest.approx(0.5)  # half the cost factor
    assert relative_gain(0.0, 1.0) == pytest.approx(-1.0)  # twice what staying costs
    assert relative_gain(3.0, 3.0 - math.log2(1.25)) == pytest.approx(0.2)


def test_a_loop_is_not_scored_behind_its_own_batch_so_it_does_not_move_back_and_forth() -> None:
    # qa and qb each have one job of others queued, served in 100 s. The loop's batch
    # queued at its route shows in that backend's queue (2 jobs, 200 s predicted), but the
    # loop's next batches will not wait behind it. Scored with it ahead, qa looked 1.6x
    # slower than qb for every batch; the loop moved to qb, and from there back to qa.
    loop = SubtaskSpec(
        name="a",
        variational=VariationalSpec(
            qasm=QASM, hamiltonian=[PauliTerm(pauli="ZZ", coefficient=1)], maxIterations=10
        ),
    )
    wf = spec([loop], backends=("qa", "qb"))

    def decide_at(route: str, others: Mapping[str, int]) -> ClusterDecision:
        shown = {b: n + (b == route) for b, n in others.items()}  # the queues as shown
        predictions: Predictions = {("a", b): qpu("a", b, 100.0 * n) for b, n in shown.items()}
        sub = SubtaskEntry("a", Stage.QUEUED, route, since=NOW, num_qubits=2, pod_pool="cpu")
        backends = {
            b: BackendLoad(BackendInfo(b, Provider.FAKE, 127, queue_length=n))
            for b, n in shown.items()
        }
        return decide(ClusterSnapshot(NOW, [entry("ns/w", wf, [sub], predictions)], backends))

    for route in ("qa", "qb"):
        assert decide_at(route, {"qa": 1, "qb": 1}).moves == ()
    # Where the others' queue really is longer, the loop's next batches go elsewhere.
    (move,) = decide_at("qa", {"qa": 6, "qb": 1}).moves
    assert (move.source.name, move.target.name) == ("qa", "qb")


def test_scores_thousands_of_units_apart_give_a_finite_gain_and_the_pass_does_not_raise() -> None:
    # A budget of a cent and a deadline of 10 s that nothing keeps: the ranking orders by
    # breach, and the best of it may score thousands of units over staying. 2 ** 1024
    # overflowed; the pass must never raise on its input.
    assert relative_gain(0.0, 5000.0) == pytest.approx(1.0 - 2.0**64)
    assert relative_gain(5000.0, 0.0) == pytest.approx(1.0)
    wf = spec(backends=("qa", "qb"), budget=BudgetSpec(maxCostUSD=0.01, deadlineSeconds=10))
    predictions: Predictions = {
        ("a", "qa"): qpu("a", "qa", 1e6, run=0.001),
        ("a", "qb"): qpu("a", "qb", 0.0, run=100.0),
    }
    sub = SubtaskEntry("a", Stage.QUEUED, "qa", since=NOW)
    snap = ClusterSnapshot(
        NOW, [entry("ns/w", wf, [sub], predictions)], {"qa": load("qa"), "qb": load("qb")}
    )
    decision = decide(snap)
    assert all(math.isfinite(m.gain) for m in decision.moves)
