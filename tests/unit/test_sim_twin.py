"""The digital twin (``qorch.sim.twin``): the operator's plan, predictor and cluster pass on
a simulated clock. Small hand-built worlds; the shipped models predict."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from qorch.api.backend import CalibrationSummary, Provider
from qorch.api.workflow import HybridWorkflowSpec, SubtaskPhase
from qorch.orchestrator.prices import CPU_POD_USD_PER_HOUR
from qorch.orchestrator.snapshot import BackendInfo
from qorch.runtime.policy import CyclePolicy
from qorch.sim.backend import SimBackend
from qorch.sim.policies import POLICIES, _perfect, make_policy
from qorch.sim.pool import SimPool
from qorch.sim.records import SpanEnd
from qorch.sim.replay import load_scenario
from qorch.sim.scenario import Scenario
from qorch.sim.twin import Twin, TwinBackend, TwinPool, TwinWorkflow, make_predictor
from tests.integration.test_gateway_calibration import MIRROR, QUBITS

REPO = Path(__file__).resolve().parents[2]
PREDICTOR = make_predictor(str(REPO / "models"))
GIB = 2.0**30
# fake_perth's medians, roughly: both devices of the e2e serve the same fake device.
PERTH = CalibrationSummary(
    medianTwoQubitError=0.0085,
    medianSingleQubitError=2.8e-4,
    medianReadoutError=0.025,
    medianT1Seconds=150e-6,
    medianT2Seconds=110e-6,
    updatedAt="2023-03-01T00:00:00Z",
)
WORSE = PERTH.model_copy(update={"medianTwoQubitError": 0.03, "medianReadoutError": 0.06})


def _policy(name: str, **kw: Any) -> CyclePolicy:
    return make_policy(name, **kw)


def _backend(
    name: str,
    *,
    others: int = 0,
    burst_at: float = math.inf,
    job_seconds: float = 4.0,
    calibration: CalibrationSummary = PERTH,
    refresh: float = 0.0,
) -> TwinBackend:
    """A device whose others' queue is ``others`` jobs, plus a burst that arrives at
    ``burst_at``; each of the others' jobs holds it ``job_seconds``."""

    def length(t: float) -> int:
        if t < burst_at:
            return 0 if burst_at < math.inf else others
        return max(others - int((t - burst_at) // job_seconds), 0)

    def wait(t: float) -> float:
        return length(t) * job_seconds

    info = BackendInfo(name, Provider.FAKE, QUBITS, backend_name="fake_perth")
    sim = SimBackend(name, QUBITS, others_wait=wait, others_length=length)
    return TwinBackend(
        info,
        sim,
        lambda t: calibration,
        average_job_seconds=job_seconds,
        metrics_refresh_seconds=refresh,
    )


def _pools() -> list[TwinPool]:
    return [
        TwinPool(SimPool("cpu", 16, 64 * GIB), {"qorch.io/pool": "cpu"}),
        TwinPool(SimPool("gpu", 16, 64 * GIB, 2), {"qorch.io/pool": "gpu"}, gpu=True),
    ]


def _workflow(
    name: str, backends: list[str], *, reallocate: bool = True, preset: str = "speed",
    prepare: float = 6.0, circuits: int = 4,
) -> TwinWorkflow:  # fmt: skip
    """The e2e's workflow (``test_reallocation_gain.workflow``): a GPU step, then four
    7-qubit mirror circuits that may run on either device (the pool may not simulate)."""
    names = [f"c{i}" for i in range(circuits)]
    spec = HybridWorkflowSpec.model_validate(
        {
            "subtasks": [
                {"name": "prepare", "classical": {"image": "busybox", "resources": {"gpu": 1}}},
                *(
                    {
                        "name": c,
                        "dependsOn": ["prepare"],
                        "circuit": {"qasm": MIRROR, "shots": 2000},
                    }
                    for c in names
                ),
            ],
            "resources": {
                "quantumBackends": backends,
                "classicalPools": [
                    {
                        "name": "gpu",
                        "nodeSelector": {"qorch.io/pool": "gpu"},
                        "gpu": True,
                        "maxQubits": QUBITS - 1,
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                    }
                ],
            },
            "objective": {"preset": preset},
            "reallocation": {"enabled": reallocate},
        }
    )
    return TwinWorkflow(name, "spike", 0.0, spec, {c: MIRROR for c in names}, {"prepare": prepare})


def _moves(wf: TwinWorkflow) -> list[tuple[str, str, str]]:
    """(subtask, from, to) of each move in the history."""
    out = []
    for st in wf.status.subtasks:
        for h in st.history:
            if h.event == "Moved":
                where = h.message.split(":")[0].split()
                out.append((st.name, where[1], where[3]))
    return out


def _placed(wf: TwinWorkflow) -> dict[str, str]:
    out = {}
    for st in wf.status.subtasks:
        for h in st.history:
            if h.event == "Placed":
                out[st.name] = h.message.rsplit(" ", 1)[-1]
                break
    return out


def test_the_e2e_queue_spike_makes_the_same_moves_in_the_twin() -> None:
    """``test_reallocation_gain``'s spike on the real control plane (run at 3fba110 and
    since): both workflows place c0 and c2 on device A and c1 and c3 on B from a reading
    without the burst; 18 of other clients' jobs (4 s each) reach A while the first step
    runs; at the next reading (every 12 s) the pass moves the moving workflow's c0 and c2
    from A to B; the other workflow makes no move and finishes later."""
    a = _backend("perth-a", others=18, burst_at=3.0, refresh=12.0)
    b = _backend("perth-b", refresh=12.0)
    moving = _workflow("spike-moves", ["perth-a", "perth-b"])
    staying = _workflow("spike-stays", ["perth-a", "perth-b"], reallocate=False)
    twin = Twin(
        [a, b],
        _pools(),
        [moving, staying],
        _policy("qorch", pass_seconds=15.0),
        predictor=PREDICTOR,
        step_seconds=1.0,
        run_noise=0.0,
        min_job_seconds=4.0,
        recent_waits={"perth-a": [0.0], "perth-b": [0.0]},
    )
    result = twin.run(600.0)
    assert all(w.finished is not None for w in result.workflows), result.workflows
    assert _placed(moving) == {
        "prepare": "gpu", "c0": "perth-a", "c1": "perth-b", "c2": "perth-a", "c3": "perth-b"
    }, _placed(moving)  # fmt: skip
    assert _placed(staying) == _placed(moving)
    assert sorted(_moves(moving)) == [("c0", "perth-a", "perth-b"), ("c2", "perth-a", "perth-b")]
    assert _moves(staying) == []
    assert moving.status.moves == 2 and staying.status.moves == 0
    assert moving.finished is not None and staying.finished is not None
    assert moving.finished < staying.finished
    moved = [s for s in result.spans if s.outcome is SpanEnd.MOVED]
    assert {(s.workflow, s.subtask, s.resource) for s in moved} == {
        ("twin/spike-moves", "c0", "perth-a"),
        ("twin/spike-moves", "c2", "perth-a"),
    }


def _two_devices() -> tuple[TwinBackend, TwinBackend]:
    """A: better calibration, 30 jobs of others queued; B: worse calibration, empty."""
    return (
        _backend("good", others=30, job_seconds=10.0),
        _backend("idle", calibration=WORSE),
    )


def _run(policy: str, workflows: list[TwinWorkflow], **kw: Any) -> Twin:
    twin = Twin(
        list(_two_devices()),
        _pools(),
        workflows,
        _policy(policy),
        predictor=PREDICTOR,
        run_noise=0.0,
        **kw,
    )
    twin.run(3600.0)
    return twin


def test_static_takes_the_best_calibration_and_least_busy_the_shortest_queue() -> None:
    static = _run("static", [_workflow("w", ["good", "idle"], prepare=1.0)])
    busy = _run("least-busy", [_workflow("w", ["good", "idle"], prepare=1.0)])
    assert set(_placed(static.done[0]).values()) == {"gpu", "good"}
    assert set(_placed(busy.done[0]).values()) == {"gpu", "idle"}
    s, b = static.result.summary(), busy.result.summary()
    # The good device's queue costs 300 s; its fidelity is better.
    assert s.mean_jct > b.mean_jct + 250
    assert s.mean_fidelity > b.mean_fidelity
    assert s.moves == b.moves == 0


def test_the_oracle_decides_on_what_will_really_happen() -> None:
    """Its predictions are the truth: the wait the replayed queue gives a job submitted now,
    the fidelity on the calibration of the day the job will start on."""
    good, idle = _two_devices()
    wf = _workflow("w", ["good", "idle"], prepare=1.0)
    twin = Twin([good, idle], _pools(), [wf], _policy("oracle"), predictor=PREDICTOR)
    twin.clock.t = 5.0
    asyncio.run(twin.runtime.cycle())  # admits the workflow and predicts
    built = {wf.key: twin._snapshot(wf, 5.0)}
    snap = asyncio.run(twin.predictions.predict(built, {wf.key: wf.sources}))[wf.key]
    perfect = _perfect(snap, twin)
    for name, backend in (("good", good), ("idle", idle)):
        p, q = snap.predictions[("c0", name)], perfect[("c0", name)]
        assert q.queue_seconds_p50 == backend.sim.others_wait(5.0) == q.queue_seconds_p90
        assert q.fidelity == twin.fidelity_at(backend, MIRROR, 2000, 5.0 + q.queue_seconds_p50)
        assert q.seconds_p50 == pytest.approx(q.queue_seconds_p50 + q.run_seconds)
        assert p.queue_seconds_p50 != q.queue_seconds_p50 or name == "idle"
    assert perfect[("c0", "good")].queue_seconds_p50 == 300.0
    twin.run(3600.0)
    assert twin.done and twin.done[0].status.moves == 0


def test_qonductor_places_circuits_only_at_its_rounds_and_never_moves() -> None:
    twin = _run("qonductor", [_workflow("w", ["good", "idle"], prepare=1.0)])
    wf = twin.done[0]
    for st in wf.status.subtasks:
        if st.name.startswith("c"):
            assert st.launchedAt is not None
            seconds = int(st.launchedAt[-3:-1]) + 60 * int(st.launchedAt[-6:-4])
            assert seconds % 120 == 0, st.launchedAt  # the round at 0 s had nothing ready
            assert st.moves == 0


LOOP_ANSATZ = (
    'OPENQASM 3.0; include "stdgates.inc"; input float[64] t0; input float[64] t1; '
    "qubit[2] q; ry(t0) q[0]; ry(t1) q[1]; cx q[0], q[1];"
)


def _loop(name: str, resources: dict[str, Any], **variational: Any) -> TwinWorkflow:
    """A workflow of one two-qubit variational loop (``variational``: its other fields)."""
    spec = HybridWorkflowSpec.model_validate(
        {
            "subtasks": [
                {
                    "name": "vqe",
                    "variational": {
                        "qasm": LOOP_ANSATZ,
                        "hamiltonian": [{"pauli": "ZZ", "coefficient": -1.0}],
                        **variational,
                    },
                }
            ],
            "resources": resources,
        }
    )
    return TwinWorkflow(name, "vqe", 0.0, spec, {"vqe": LOOP_ANSATZ})


def test_a_variational_loop_sends_its_batches_and_is_billed_for_them() -> None:
    cpu = {"name": "cpu", "nodeSelector": {"qorch.io/pool": "cpu"}, "maxQubits": 1}
    loop = _loop(
        "loop",
        {"quantumBackends": ["idle"], "classicalPools": [cpu]},
        maxIterations=5,
        shots=1000,
    )
    good, idle = _two_devices()
    idle.info = BackendInfo("idle", Provider.IBM, QUBITS, price_per_qpu_second=1.6)
    twin = Twin(
        [good, idle],
        _pools(),
        [loop],
        _policy("qorch"),
        predictor=PREDICTOR,
        run_noise=0.0,
        min_job_seconds=4.0,
    )
    result = twin.run(3600.0)
    wf = twin.done[0]
    st = wf.status.subtasks[0]
    assert st.phase is SubtaskPhase.SUCCEEDED, st.message
    assert st.progress is not None and st.progress.batches == {"idle": 5}
    assert st.progress.qpuSeconds["idle"] == pytest.approx(5 * 4.0)
    pod = twin.pools["cpu"].sim.pods[st.podName or ""]
    pod_usd = pod.run_seconds * CPU_POD_USD_PER_HOUR / 3600
    assert wf.status.costUSD == pytest.approx(5 * 4.0 * 1.6 + pod_usd, abs=1e-5)
    jobs = [j for j in idle.sim.jobs if j.startswith("twin.loop.vqe.1.e")]
    assert len(jobs) == 5
    assert len(wf.fidelities["vqe"]) == 5
    assert result.workflows[0].fidelity is not None


def test_a_replay_is_deterministic() -> None:
    def once() -> Any:
        return _run(
            "qorch",
            [_workflow(f"w{i}", ["good", "idle"], prepare=1.0 + i) for i in range(3)],
        ).result.summary()

    first, second = once(), once()
    assert (first.mean_jct, first.mean_fidelity, first.usd, first.moves) == (
        second.mean_jct,
        second.mean_fidelity,
        second.usd,
        second.moves,
    )


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_finishes_a_mixed_load(name: str) -> None:
    twin = _run(
        name,
        [
            _workflow("a", ["good", "idle"], prepare=1.0),
            _workflow("b", ["good", "idle"], prepare=30.0, preset="accuracy"),
        ],
    )
    summary = twin.result.summary()
    assert summary.finished == 2 and summary.failed == 0
    assert summary.passes > 0 and summary.decision_median >= 0
    assert 0 < summary.mean_fidelity <= 1


def test_a_scenario_file_with_an_unknown_field_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hours: 2\nworkflowz: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*workflowz"):
        load_scenario(bad)
    bad.write_text("mix: {sampling: 1, quantum-magic: 2}\n")
    with pytest.raises(ValueError, match="quantum-magic"):
        load_scenario(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_scenario(bad)
    good = tmp_path / "good.yaml"
    good.write_text("name: t\nhours: 2\nworkflows: 3\nstationary: true\n")
    assert load_scenario(good) == Scenario(name="t", hours=2, workflows=3, stationary=True)


def test_a_lost_gpu_node_fails_its_pod_and_the_plan_retries_the_step() -> None:
    pools = _pools()
    gpu = pools[1].sim
    gpu.outages = ((10.0, 100.0, 1.0),)  # every GPU node gone from 10 s to 100 s
    wf = _workflow("w", ["good", "idle"], prepare=30.0)
    twin = Twin(
        list(_two_devices()), pools, [wf], _policy("qorch"), predictor=PREDICTOR, run_noise=0.0
    )
    result = twin.run(3600.0)
    prepare = next(st for st in wf.status.subtasks if st.name == "prepare")
    assert prepare.phase is SubtaskPhase.SUCCEEDED
    assert prepare.attempts == 2 and prepare.failures == 1, prepare.history
    assert "left pool gpu" in " ".join(h.message for h in prepare.history)
    assert wf.finished is not None and wf.finished >= 100.0 + 30.0  # after the nodes came back
    assert [s.outcome for s in result.spans if s.subtask == "prepare"] == [
        SpanEnd.FAILED,
        SpanEnd.DONE,
    ]


def test_a_loop_simulated_in_its_pod_runs_its_batches_one_after_another() -> None:
    """No backend: the loop's batches are simulated in its own pod, one after the other,
    whatever the twin's cycles; the pod ends after the last."""
    cpu = {"name": "cpu", "nodeSelector": {"qorch.io/pool": "cpu"}}
    loop = _loop("sim", {"quantumBackends": [], "classicalPools": [cpu]}, maxIterations=20)
    twin = Twin(
        list(_two_devices()),
        _pools(),
        [loop],
        _policy("qorch"),
        predictor=PREDICTOR,
        run_noise=0.0,
        step_seconds=1.0,
    )
    twin.run(3600.0)
    wf = twin.done[0]
    st = wf.status.subtasks[0]
    assert st.phase is SubtaskPhase.SUCCEEDED and st.progress is not None
    assert st.progress.batches == {"cpu": 20}
    pod = twin.pools["cpu"].sim.pods[st.podName or ""]
    one = twin.expected_simulation_seconds(wf.truths["vqe"], False)
    assert pod.run_seconds == pytest.approx(20 * one)  # not shortened by the cycles
    assert wf.finished is not None and wf.finished >= pod.start + 20 * one


def test_queue_observations_learn_per_job_ahead_and_forget_what_will_not_run() -> None:
    from qorch.orchestrator.plan import CancelJob, SubmitJob
    from qorch.predictor.workflow import SUBMISSIONS_MAX, QueueObservations

    obs = QueueObservations()
    backends = {"b": BackendInfo("b", Provider.IBM, 27, queue_length=9)}
    # Three jobs sent in one plan: each finds the queue the plan read plus those before it.
    obs.note_plan(backends, [SubmitJob("s", 1, f"j{i}", "b") for i in range(3)])
    for i, wait in enumerate((90.0, 100.0, 110.0)):
        obs.waited("b", wait, f"j{i}")
    # 300 s for 30 jobs ahead, and the analytic 66 s for ten more jobs of 10 ahead each.
    learned = pytest.approx((300.0 + 100 * 66.0) / (30 + 100))
    assert obs.service_seconds() == {"b": learned}
    assert obs.recent_waits() == {"b": (90.0, 100.0, 110.0)}
    # A cancelled (moved) job teaches nothing, even if a wait is reported for it later.
    obs.note_plan(backends, [SubmitJob("s", 2, "moved", "b")])
    obs.note_plan(backends, [CancelJob("moved", "b", "moved away")])
    obs.waited("b", 5000.0, "moved")
    assert obs.service_seconds() == {"b": learned}
    # Bounded: the oldest submissions age out.
    for i in range(SUBMISSIONS_MAX + 5):
        obs.submitted(f"x{i}", 1)
    obs.waited("b", 1.0, "x0")  # aged out: a wait, but no rate
    assert len(obs._submitted) == SUBMISSIONS_MAX
    assert obs.service_seconds() == {"b": learned}


def test_a_learned_service_time_weighs_each_job_by_the_jobs_it_found_ahead() -> None:
    """Jobs that found one or two ahead and started at once (a queue emptied in bulk) must
    not teach that a backend serves a job in seconds while those that found 80 ahead
    waited 80 x 75 s: the median of ``w / n`` did (it learned 1 s here); waits over jobs
    ahead, summed, does not. The analytic 66 s counts as ten jobs, so a rate learned from
    twenty jobs is mostly theirs."""
    from qorch.predictor.workflow import QueueObservations

    obs = QueueObservations()
    found = [1, 2, 1, 80, 1, 2, 80, 1, 80, 2, 1, 80, 1, 2, 80, 1, 2, 80, 1, 2]
    for i, ahead in enumerate(found):
        obs.submitted(f"j{i}", ahead)
        obs.waited("b", 75.0 * ahead if ahead >= 80 else 1.0, f"j{i}")
    (rate,) = obs.service_seconds().values()
    assert 70.0 < rate < 75.0
    # Twenty jobs that each waited 30 s a job ahead: the rate is theirs, pulled a third of
    # the way toward the analytic 66 s.
    for i in range(20):
        obs.submitted(f"k{i}", 10)
        obs.waited("b", 300.0, f"k{i}")
    assert obs.service_seconds()["b"] == pytest.approx((20 * 30.0 + 10 * 66.0) / 30)
