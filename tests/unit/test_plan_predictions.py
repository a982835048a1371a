"""The planner records the prediction each placement used beside what the attempt took,
and says on a condition whether its predictions came from models or the fallback."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pytest

from qorch.api.backend import Provider
from qorch.orchestrator import BackendInfo, JobPhase, JobState, Plan, PodPhase, WorkflowSnapshot
from qorch.orchestrator.prediction import ANALYTIC, MODEL, POOL, QPU, Prediction
from qorch.orchestrator.prices import CPU_POD_USD_PER_HOUR
from qorch.orchestrator.snapshot import PredictorReport
from tests.unit.test_plan import World, circuit, spec


def prediction(subtask: str, resource: str, **over: object) -> Prediction:
    base = Prediction(
        subtask=subtask,
        resource=resource,
        kind=QPU,
        feasible=True,
        seconds_p10=12.0,
        seconds_p50=22.0,
        seconds_p90=62.0,
        queue_seconds_p10=10.0,
        queue_seconds_p50=20.0,
        queue_seconds_p90=60.0,
        run_seconds=2.0,
        fidelity=0.91,
        usd=3.2,
        peak_memory_bytes=0,
        source=MODEL,
    )
    return base._replace(**over)  # type: ignore[arg-type]


class PredictingWorld(World):
    """The planner's tiny fake cluster, with the operator's prediction pass stood in for."""

    predictions: dict[tuple[str, str], Prediction] = {}
    report: PredictorReport | None = None

    def snapshot(self) -> WorkflowSnapshot:
        return dataclasses.replace(
            super().snapshot(), predictions=self.predictions, predictor=self.report
        )


def step_with(
    world: PredictingWorld,
    predictions: dict[tuple[str, str], Prediction],
    report: PredictorReport | None,
) -> Plan:
    world.predictions, world.report = predictions, report
    return world.step()


def ibm_world() -> PredictingWorld:
    backends = {"ibm": BackendInfo("ibm", Provider.IBM, 127, price_per_qpu_second=1.6)}
    return PredictingWorld(spec(circuit("q"), resources={"quantumBackends": ["ibm"]}), backends)


def test_the_prediction_of_the_chosen_placement_is_recorded_beside_the_gateways_outcome() -> None:
    w = ibm_world()
    used = prediction("q", "ibm")
    other = prediction("q", "cpu", kind=POOL, run_seconds=99.0)
    step_with(w, {("q", "ibm"): used, ("q", "cpu"): other}, PredictorReport((), 2))
    st = w.status.subtasks[0]
    assert st.placement is not None and st.placement.name == "ibm"
    assert st.predicted is not None
    assert (st.predicted.source, st.predicted.runSeconds) == ("model", 2.0)
    assert (st.predicted.queueSecondsP10, st.predicted.queueSecondsP90) == (10.0, 60.0)
    assert st.actual is None
    w.jobs["ns.wf.q.1"] = JobState(
        "ns.wf.q.1", JobPhase.DONE, qpu_seconds=2.5, queue_seconds=31.0, execution_seconds=3.0
    )
    w.step()
    st = w.status.subtasks[0]
    assert st.actual is not None
    # IBM bills QPU seconds: that is what runSeconds predicts, not the wall time.
    assert (st.actual.queueSeconds, st.actual.runSeconds) == (31.0, 2.5)
    assert st.actual.costUSD == pytest.approx(4.0)
    assert st.predicted is not None and st.predicted.runSeconds == 2.0  # kept beside it


def test_a_simulator_jobs_run_time_is_its_execution_time() -> None:
    w = ibm_world()
    step_with(w, {("q", "ibm"): prediction("q", "ibm")}, PredictorReport((), 1))
    w.jobs["ns.wf.q.1"] = JobState(
        "ns.wf.q.1", JobPhase.DONE, queue_seconds=0.5, execution_seconds=0.2
    )
    w.step()
    actual = w.status.subtasks[0].actual
    assert actual is not None and (actual.runSeconds, actual.costUSD) == (0.2, 0.0)


def test_infeasible_or_absent_predictions_are_not_recorded() -> None:
    w = ibm_world()
    bad = prediction("q", "ibm", feasible=False, run_seconds=math.inf)
    step_with(w, {("q", "ibm"): bad}, PredictorReport((), 1))
    assert w.status.subtasks[0].predicted is None
    w2 = ibm_world()
    step_with(w2, {}, None)
    assert w2.status.subtasks[0].predicted is None


def test_a_pods_usage_is_its_outcome_and_its_cost() -> None:
    w = PredictingWorld(spec(circuit("q")))
    pred = prediction("q", "cpu", kind=POOL, queue_seconds_p10=0.0, queue_seconds_p50=0.0,
                      queue_seconds_p90=0.0, run_seconds=1.5, usd=0.00002,
                      peak_memory_bytes=600_000_000, fidelity=1.0)  # fmt: skip
    step_with(w, {("q", "cpu"): pred}, PredictorReport((), 1))
    st = w.status.subtasks[0]
    assert st.predicted is not None and st.predicted.peakMemoryBytes == 600_000_000
    w.now += dt.timedelta(seconds=9)
    pod = w.pods[st.podName or ""]
    w.pods[pod.name] = dataclasses.replace(
        pod,
        phase=PodPhase.SUCCEEDED,
        result={"counts": {"000": 1}},
        usage={"wallSeconds": 3.0, "peakMemoryBytes": 700_000_000, "cpuSeconds": 2.9},
    )
    w.step()
    st = w.status.subtasks[0]
    assert st.actual is not None
    assert st.actual.runSeconds == 3.0
    assert st.actual.queueSeconds == pytest.approx(6.0)  # 9 s since launch, 3 s of work
    assert st.actual.peakMemoryBytes == 700_000_000
    assert st.actual.costUSD == pytest.approx(3.0 * CPU_POD_USD_PER_HOUR / 3600, abs=1e-6)
    assert w.status.costUSD == pytest.approx(st.actual.costUSD, abs=1e-6)


def test_a_fallback_sets_the_condition_and_one_warning_until_models_serve_again() -> None:
    w = ibm_world()
    why = ("qpu_runtime/value: qpu_runtime.onnx rejected: not an ONNX model",)
    p = step_with(
        w, {("q", "ibm"): prediction("q", "ibm", source=ANALYTIC)}, PredictorReport(why, 1)
    )
    cond = {c.type: c for c in w.status.conditions}["Predicted"]
    assert (cond.status, cond.reason) == ("False", "AnalyticFallback")
    assert "qpu_runtime.onnx rejected" in cond.message
    assert [e.reason for e in p.events if e.warning] == ["PredictorFallback"]
    again = step_with(w, {}, PredictorReport(why, 1))
    assert not [e for e in again.events if e.reason == "PredictorFallback"]  # said once
    back = step_with(w, {}, PredictorReport((), 1))
    cond = {c.type: c for c in w.status.conditions}["Predicted"]
    assert (cond.status, cond.reason) == ("True", "ModelsServing")
    assert [e.reason for e in back.events] == ["PredictorModels"]


def test_no_prediction_pass_leaves_the_condition_alone() -> None:
    w = ibm_world()
    step_with(w, {}, None)
    assert "Predicted" not in {c.type for c in w.status.conditions}
    step_with(w, {}, PredictorReport((), 0))  # a pass with no pair says nothing either
    assert "Predicted" not in {c.type for c in w.status.conditions}
