"""The operator's prediction pass with the shipped ONNX models (onnxruntime, real files),
its fallback when the model directory is broken, and the running error it exports."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from qorch.api.backend import CalibrationSummary, Provider
from qorch.api.workflow import (
    ActualOutcome,
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    Placement,
    PredictedOutcome,
    ResourceKind,
    SubtaskPhase,
    SubtaskStatus,
)
from qorch.operator.predictions import PredictionService
from qorch.orchestrator import BackendInfo, Plan, WorkflowSnapshot
from qorch.orchestrator.plan import SubmitJob
from qorch.orchestrator.prediction import Prediction
from qorch.orchestrator.snapshot import PredictorReport
from qorch.predictor.workflow import backend_input, placeable

REPO = Path(__file__).resolve().parents[2]
GHZ = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[3]; creg c[3]; h q[0]; cx q[0],q[1]; cx q[1],q[2]; measure q -> c;'  # noqa: E501
CALIBRATION = CalibrationSummary(
    medianTwoQubitError=0.008,
    medianSingleQubitError=0.0003,
    medianReadoutError=0.02,
    medianT1Seconds=1.1e-4,
    medianT2Seconds=9e-5,
    updatedAt="2026-11-25T06:00:00Z",
)
BACKENDS = [
    BackendInfo("ibm-a", Provider.IBM, 127, queue_length=4, price_per_qpu_second=1.6,
                calibration=CALIBRATION),
    BackendInfo("ibm-b", Provider.IBM, 27, queue_length=40, price_per_qpu_second=1.6),
]  # fmt: skip


def workflow(*names: str, deps: dict[str, list[str]] | None = None) -> HybridWorkflowSpec:
    deps = deps or {}
    return HybridWorkflowSpec.model_validate(
        {
            "resources": {"quantumBackends": ["ibm-a", "ibm-b"]},
            "subtasks": [
                {"name": n, "dependsOn": deps.get(n, []), "circuit": {"qasm": GHZ, "shots": 2000}}
                for n in names
            ],
        }
    )


def predict(
    service: PredictionService, spec: HybridWorkflowSpec, status: HybridWorkflowStatus
) -> tuple[dict[tuple[str, str], Prediction], PredictorReport | None]:
    sources = {s.name: GHZ for s in spec.subtasks}
    return asyncio.run(service.predict(spec, status, sources, BACKENDS, None))


def test_every_placeable_pair_is_predicted_by_the_shipped_models() -> None:
    service = PredictionService(str(REPO / "models"))
    service.refresh_models(force=True)
    spec = workflow("a", "b", "c", deps={"b": ["a"], "c": ["x"]})
    status = HybridWorkflowStatus(
        subtasks=[
            SubtaskStatus(name="a"),
            SubtaskStatus(name="b"),
            SubtaskStatus(name="c"),
            SubtaskStatus(name="x", phase=SubtaskPhase.FAILED),
        ]
    )
    predictions, report = predict(service, spec, status)
    assert report is not None
    # b may start in this very cycle if a finishes; c never will (x failed). Every pair of
    # a and b: both backends, both default pools.
    assert sorted(predictions) == [
        (s, r) for s in ("a", "b") for r in ("cpu", "gpu", "ibm-a", "ibm-b")
    ]
    assert report.pairs == 8
    assert report.fallbacks == (), report.fallbacks
    qpu = predictions["a", "ibm-a"]
    assert qpu.source == "model" and qpu.feasible
    assert 0 < qpu.queue_seconds_p10 <= qpu.queue_seconds_p50 <= qpu.queue_seconds_p90
    assert qpu.usd == pytest.approx(qpu.run_seconds * 1.6)
    assert 0.5 < qpu.fidelity < 1.0  # a 3-qubit GHZ under a good calibration
    assert predictions["a", "ibm-b"].fidelity < 1.0  # noisy hardware, even uncalibrated
    # 40 jobs ahead at ibm-b: the median wait is at least 40 typical jobs (66 s each, the
    # analytic service time), whatever the recent waits say (none here); the interval moves
    # with it and does not cross.
    busy = predictions["a", "ibm-b"]
    assert busy.queue_seconds_p50 >= 40 * 66 * 0.999
    assert busy.queue_seconds_p10 <= busy.queue_seconds_p50 <= busy.queue_seconds_p90
    spiked = [BACKENDS[0], dataclasses.replace(BACKENDS[1], queue_length=400)]
    again, _ = asyncio.run(
        service.predict(spec, status, {s.name: GHZ for s in spec.subtasks}, spiked, None)
    )
    after = again["a", "ibm-b"]
    assert after.queue_seconds_p50 >= 400 * 66 * 0.999
    assert after.queue_seconds_p50 > 2 * busy.queue_seconds_p50  # the spike shows at once
    assert after.queue_seconds_p10 <= after.queue_seconds_p50 <= after.queue_seconds_p90
    pool = predictions["a", "cpu"]
    assert pool.kind == "pool" and pool.fidelity == 1.0 and pool.peak_memory_bytes > 0


def test_nothing_to_place_means_no_pass() -> None:
    service = PredictionService(str(REPO / "models"))
    status = HybridWorkflowStatus(subtasks=[SubtaskStatus(name="a", phase=SubtaskPhase.RUNNING)])
    assert predict(service, workflow("a"), status) == ({}, None)


def test_a_circuit_a_pod_simulates_is_predicted_while_it_runs_so_it_may_be_relaunched() -> None:
    service = PredictionService(str(REPO / "models"))
    service.refresh_models(force=True)
    pod = Placement(kind=ResourceKind.POOL, name="cpu")
    job = Placement(kind=ResourceKind.BACKEND, name="ibm-a")
    status = HybridWorkflowStatus(
        subtasks=[
            SubtaskStatus(name="a", phase=SubtaskPhase.RUNNING, placement=pod),
            SubtaskStatus(name="b", phase=SubtaskPhase.RUNNING, placement=job),
        ]
    )
    predictions, _ = predict(service, workflow("a", "b"), status)
    # A running QPU job is never relaunched: only the simulated circuit is weighed.
    assert sorted(predictions) == [("a", r) for r in ("cpu", "gpu", "ibm-a", "ibm-b")]
    spec = workflow("a", "b")
    spec.reallocation.enabled = False  # nothing moves: nothing to weigh
    assert predict(service, spec, status) == ({}, None)


def test_launched_work_is_predicted_only_for_a_pass_that_weighs_it() -> None:
    """The cluster pass counts and moves queued jobs and simulating pods: they are predicted.
    A decision that never looks at launched work again (the twin's static and batch
    baselines: ``launched=False``) gets predictions for the work still to place only."""
    pod = Placement(kind=ResourceKind.POOL, name="cpu")
    job = Placement(kind=ResourceKind.BACKEND, name="ibm-a")
    status = HybridWorkflowStatus(
        subtasks=[
            SubtaskStatus(name="queued", phase=SubtaskPhase.SCHEDULED, placement=job),
            SubtaskStatus(name="sent", phase=SubtaskPhase.LAUNCHING, placement=job),
            SubtaskStatus(name="simulating", phase=SubtaskPhase.RUNNING, placement=pod),
            SubtaskStatus(name="retry", phase=SubtaskPhase.RETRYING),
        ]
    )
    spec = workflow("new", "queued", "sent", "simulating", "retry")
    sources = {s.name: GHZ for s in spec.subtasks}
    every = [(n, 2000) for n in ("new", "queued", "sent", "simulating", "retry")]
    assert placeable(spec, status, sources) == every
    assert placeable(spec, status, sources, launched=False) == [("new", 2000), ("retry", 2000)]
    service = PredictionService(str(REPO / "models"))
    predictions, _ = asyncio.run(
        service.predict(spec, status, sources, BACKENDS, None, launched=False)
    )
    assert {s for s, _ in predictions} == {"new", "retry"}
    # A running loop's next batches move only by a pass that weighs launched work.
    loop = HybridWorkflowSpec.model_validate(
        {
            "resources": {"quantumBackends": ["ibm-a"]},
            "subtasks": [
                {
                    "name": "vqe",
                    "variational": {
                        "qasm": "OPENQASM 3.0; input float[64] t; qubit[2] q; ry(t) q[0];",
                        "hamiltonian": [{"pauli": "ZZ", "coefficient": 1.0}],
                        "shots": 500,
                    },
                }
            ],
        }
    )
    running = HybridWorkflowStatus(
        subtasks=[SubtaskStatus(name="vqe", phase=SubtaskPhase.RUNNING, placement=pod)]
    )
    assert placeable(loop, running, {"vqe": "..."}) == [("vqe", 500)]
    assert placeable(loop, running, {"vqe": "..."}, launched=False) == []


def test_a_broken_model_directory_falls_back_and_says_why(tmp_path: Path) -> None:
    for f in (REPO / "models").glob("*.onnx"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "qpu_runtime.onnx").write_bytes(b"not a model")
    (tmp_path / "fidelity.onnx").unlink()
    service = PredictionService(str(tmp_path))
    service.refresh_models(force=True)
    predictions, report = predict(service, workflow("a"), HybridWorkflowStatus())
    assert report is not None
    text = "\n".join(report.fallbacks)
    assert "qpu_runtime/value" in text and "qpu_runtime.onnx rejected" in text
    assert "fidelity/value" in text and "no model file" in text
    assert predictions["a", "ibm-a"].source == "analytic"
    assert predictions["a", "ibm-a"].feasible  # the fallback still answers
    missing = PredictionService(str(tmp_path / "nowhere"))
    missing.refresh_models(force=True)
    _, report = predict(missing, workflow("a"), HybridWorkflowStatus())
    assert report is not None and "does not exist" in "\n".join(report.fallbacks)


def test_an_ideal_simulator_backend_is_exact() -> None:
    service = PredictionService(str(REPO / "models"))
    service.refresh_models(force=True)
    spec = HybridWorkflowSpec.model_validate(
        {
            "resources": {"quantumBackends": ["aer", "ibm-a"]},
            "subtasks": [{"name": "a", "circuit": {"qasm": GHZ}}],
        }
    )
    aer = BackendInfo("aer", Provider.AER, 30)
    predictions, _ = asyncio.run(
        service.predict(spec, HybridWorkflowStatus(), {"a": GHZ}, [aer, BACKENDS[0]], None)
    )
    assert predictions["a", "aer"].fidelity == 1.0
    assert predictions["a", "ibm-a"].fidelity < 1.0


def test_the_model_directory_is_re_read_in_the_background(tmp_path: Path) -> None:
    service = PredictionService(str(tmp_path), refresh_seconds=0.05)
    service.refresh_models(force=True)
    assert service.store is not None and not service.store.state().loaded

    async def scenario() -> None:
        task = asyncio.create_task(service.keep_models_fresh())
        shutil.copy(REPO / "models" / "qpu_runtime.onnx", tmp_path / "qpu_runtime.onnx")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if service.store is not None and service.store.model("qpu_runtime", "value"):
                break
        task.cancel()

    asyncio.run(scenario())
    assert service.store.model("qpu_runtime", "value") is not None


def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    return REGISTRY.get_sample_value(name, labels or {})


def test_outcomes_feed_the_queue_history_and_the_running_error() -> None:
    service = PredictionService(None)
    spec = workflow("a")
    predicted = PredictedOutcome(
        source="model", queueSecondsP10=10, queueSecondsP50=20, queueSecondsP90=40,
        runSeconds=2.0, fidelity=0.9, costUSD=3.2,
    )  # fmt: skip
    before = HybridWorkflowStatus(
        subtasks=[SubtaskStatus(name="a", phase=SubtaskPhase.RUNNING, predicted=predicted)]
    )
    after = before.model_copy(deep=True)
    st = after.subtasks[0]
    st.phase = SubtaskPhase.SUCCEEDED
    st.placement = Placement(kind=ResourceKind.BACKEND, name="ibm-a")
    st.actual = ActualOutcome(queueSeconds=30.0, runSeconds=2.5)
    snap = WorkflowSnapshot("ns", "wf", 1, spec, before, dt.datetime.now(dt.UTC))
    count = sample(
        "qorch_prediction_relative_error_count", {"quantity": "qpu_run_seconds", "source": "model"}
    )
    service.record_outcomes(snap, Plan(status=after))
    assert list(service.recent_waits["ibm-a"]) == [30.0]
    assert (
        sample(
            "qorch_prediction_relative_error_count",
            {"quantity": "qpu_run_seconds", "source": "model"},
        )
        == (count or 0) + 1
    )
    assert sample(
        "qorch_prediction_median_relative_error", {"quantity": "qpu_run_seconds"}
    ) == pytest.approx(0.2)
    assert sample("qorch_prediction_queue_interval_coverage") == 1.0  # 30 s within 10-40 s
    # Counted once: the same plan again (a resync, or a write refused and re-planned) does
    # not count it twice ...
    service.record_outcomes(snap, Plan(status=after))
    service.record_outcomes(WorkflowSnapshot("ns", "wf", 1, spec, after, snap.now), Plan(after))
    assert list(service.recent_waits["ibm-a"]) == [30.0]
    # ... and a success somebody else stored (seen only as already Succeeded) still counts.
    other = PredictionService(None)
    other.record_outcomes(WorkflowSnapshot("ns", "wf", 1, spec, after, snap.now), Plan(after))
    assert list(other.recent_waits["ibm-a"]) == [30.0]
    # The waits it saw become the backend's history in the next pass.
    seen: list[tuple[float, ...]] = []
    service._predict = lambda *args: seen.append(args[-2]["ibm-a"]) or ({}, None)  # type: ignore[method-assign]
    predict(service, spec, HybridWorkflowStatus())
    assert seen == [(30.0,)]
    backend = backend_input(BACKENDS[0], None, seen[0])
    assert backend.history.recent_waits_s == (30.0,)


def test_a_backends_service_time_is_learned_from_the_waits_per_job_ahead() -> None:
    """Each job the plan submits is noted with the queue its backend showed; when it has
    waited, it waited that long for that many jobs ahead. From three on, the waits summed
    over the jobs ahead summed (with the analytic 66 s counting as ten more such jobs)
    reach the predictor as the backend's service time, and the median wait of a queue of
    20 becomes 20 x that instead of 20 x the analytic 66 s."""
    service = PredictionService(None)
    spec = workflow("a")
    backend = dataclasses.replace(BACKENDS[0], queue_length=10)
    for i, wait in enumerate((300.0, 250.0, 400.0)):
        job = f"ns.wf.a.{i + 1}"
        before = HybridWorkflowStatus(subtasks=[SubtaskStatus(name="a")])
        snap = WorkflowSnapshot(
            "ns", "wf", 1, spec, before, dt.datetime.now(dt.UTC), backends={"ibm-a": backend}
        )
        service.record_outcomes(
            snap, Plan(status=before, actions=(SubmitJob("a", i + 1, job, "ibm-a"),))
        )
        assert service.queues.service_seconds() == {}  # fewer than three samples yet
        done = before.model_copy(deep=True)
        st = done.subtasks[0]
        st.phase, st.attempts, st.jobId = SubtaskPhase.SUCCEEDED, i + 1, job
        st.placement = Placement(kind=ResourceKind.BACKEND, name="ibm-a")
        st.actual = ActualOutcome(queueSeconds=wait, runSeconds=2.0)
        service.record_outcomes(snap, Plan(status=done))
    # 950 s for 30 jobs ahead, and the analytic 66 s for ten jobs of 10 ahead each.
    learned_seconds = (950.0 + 100 * 66.0) / (30 + 100)
    assert service.queues.service_seconds() == {"ibm-a": pytest.approx(learned_seconds)}
    assert sample(
        "qorch_backend_learned_service_seconds", {"quantum_backend": "ibm-a"}
    ) == pytest.approx(learned_seconds)
    # A wait without its submission seen (another replica submitted it) teaches no rate.
    service.queues.waited("ibm-b", 500.0, "unknown-job")
    assert "ibm-b" not in service.queues.service_seconds()
    busy = dataclasses.replace(BACKENDS[0], queue_length=20)
    learned = backend_input(busy, None, (), service.queues.service_seconds()["ibm-a"])
    assert learned.service_seconds == pytest.approx(learned_seconds)
    from qorch.predictor import PredictionContext, Predictor, SubtaskInput

    parsed = service.circuits.parse(GHZ)
    predictor = Predictor(None)
    for b, median in ((learned, 20 * learned_seconds), (backend_input(busy, None, ()), 20 * 66.0)):
        context = PredictionContext.of([SubtaskInput("a", parsed, 100)], [b])
        (p,) = predictor.predict([("a", "ibm-a")], context)
        assert p.queue_seconds_p50 == pytest.approx(median)
