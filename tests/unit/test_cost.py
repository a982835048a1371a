"""The cost function (``orchestrator/cost.py``): presets pull the choice their way, a subtask is
judged by its effect on the workflow's critical path, the budget and the deadline exclude
choices before they are breached (and say so when nothing keeps them), infeasible
predictions are never chosen, and the properties that make a weight mean what it says."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qorch.api.workflow import (
    BudgetSpec,
    CircuitSpec,
    ClassicalSpec,
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ObjectivePreset,
    ObjectiveSpec,
    ResourcesSpec,
    SubtaskPhase,
    SubtaskSpec,
    SubtaskStatus,
    VariationalProgress,
    Weights,
)
from qorch.orchestrator.cost import (
    DEFAULT_CLASSICAL_SECONDS,
    PRESETS,
    USD_NEGLIGIBLE,
    USD_SMOOTHING_FRACTION,
    CandidateScore,
    CostWeights,
    Objective,
    Ranking,
    Step,
    Workflow,
    WorkflowCost,
    batches_left,
    estimate_workflow,
    normalise_weights,
    rank_candidates,
    weights_for,
)
from qorch.orchestrator.prediction import MODEL, POOL, QPU, Prediction
from qorch.orchestrator.prices import (
    CPU_POD_USD_PER_HOUR,
    GPU_POD_USD_PER_HOUR,
    IBM_PAY_AS_YOU_GO_USD_PER_QPU_SECOND,
)

Predictions = dict[tuple[str, str], Prediction]


def pred(
    subtask: str,
    resource: str,
    seconds: float,
    usd: float,
    fidelity: float,
    *,
    p90: float | None = None,
    feasible: bool = True,
    kind: str = QPU,
) -> Prediction:
    p90 = seconds if p90 is None else p90
    return Prediction(
        subtask=subtask,
        resource=resource,
        kind=QPU if kind == QPU else POOL,
        feasible=feasible,
        seconds_p10=seconds,
        seconds_p50=seconds,
        seconds_p90=p90,
        queue_seconds_p10=0.0,
        queue_seconds_p50=0.0,
        queue_seconds_p90=0.0,
        run_seconds=seconds,
        fidelity=fidelity,
        usd=usd,
        peak_memory_bytes=0,
        source=MODEL,
    )


# A 30-qubit circuit followed by a one-minute classical step. Three ways to run it, priced
# like the defaults: a QPU (50 s queue + 10 s at the IBM price, fidelity 0.8, P90 queue 300 s),
# an exact statevector simulation on the GPU pool (30 min) or on the CPU pool (5.5 h).
QPU_USD = 10 * IBM_PAY_AS_YOU_GO_USD_PER_QPU_SECOND
GPU_USD = 1800 * GPU_POD_USD_PER_HOUR / 3600
CPU_USD = 20000 * CPU_POD_USD_PER_HOUR / 3600
WORKFLOW = Workflow(
    steps=(Step("sim"), Step("post", ("sim",), seconds=60.0)),
    resources=("qpu", "gpu", "cpu"),
)
PREDICTIONS: Predictions = {
    ("sim", "qpu"): pred("sim", "qpu", 60, QPU_USD, 0.80, p90=310),
    ("sim", "gpu"): pred("sim", "gpu", 1800, GPU_USD, 1.0, kind=POOL),
    ("sim", "cpu"): pred("sim", "cpu", 20000, CPU_USD, 1.0, kind=POOL),
}


def choice(objective: Objective, predictions: Predictions = PREDICTIONS) -> Ranking:
    return rank_candidates(WORKFLOW, "sim", {}, predictions, objective)


def order(ranking: Ranking) -> list[str]:
    return [c.resource for c in ranking.candidates]


def preset(name: ObjectivePreset, **kw: float) -> Objective:
    return Objective(weights=PRESETS[name], **kw)


# -- weights and presets ---------------------------------------------------------------


def test_presets_pull_the_choice_their_way() -> None:
    assert order(choice(preset(ObjectivePreset.SPEED)))[0] == "qpu"  # fast and expensive
    assert order(choice(preset(ObjectivePreset.COST)))[0] == "cpu"  # cheap and slow
    assert order(choice(preset(ObjectivePreset.ACCURACY)))[0] == "gpu"  # exact, sooner than cpu
    # Balanced: the GPU is 15x slower than the QPU but 30x cheaper and exact.
    assert order(choice(preset(ObjectivePreset.BALANCED)))[0] == "gpu"


def test_accuracy_picks_the_higher_fidelity_backend_speed_the_sooner() -> None:
    # Too wide to simulate: only two QPUs, one sooner, one better calibrated.
    predictions = {
        ("sim", "qpu-fast"): pred("sim", "qpu-fast", 60, QPU_USD, 0.80),
        ("sim", "qpu-good"): pred("sim", "qpu-good", 200, QPU_USD, 0.95),
        ("sim", "gpu"): pred("sim", "gpu", math.inf, math.inf, 0.0, feasible=False),
    }
    wf = Workflow(WORKFLOW.steps, ("qpu-fast", "qpu-good", "gpu"))
    acc = rank_candidates(wf, "sim", {}, predictions, preset(ObjectivePreset.ACCURACY))
    fast = rank_candidates(wf, "sim", {}, predictions, preset(ObjectivePreset.SPEED))
    assert order(acc) == ["qpu-good", "qpu-fast"]
    assert order(fast) == ["qpu-fast", "qpu-good"]
    assert acc.infeasible == ("gpu",)


def test_presets_weigh_their_named_term_most_and_sum_to_one() -> None:
    for name, w in PRESETS.items():
        assert sum(w) == pytest.approx(1.0)
        named = {"speed": w.time, "accuracy": w.error, "cost": w.usd}.get(name.value)
        if named is not None:
            assert named == max(w) and named > 4 * min(w) > 0  # strong, not absolute
    assert len(set(PRESETS[ObjectivePreset.BALANCED])) == 1


def test_explicit_weights_override_the_preset_and_are_normalised() -> None:
    spec = ObjectiveSpec(preset=ObjectivePreset.SPEED, weights=Weights(time=0, error=0, cost=0.5))
    assert weights_for(spec) == CostWeights(0.0, 0.0, 1.0)
    assert weights_for(ObjectiveSpec(preset=ObjectivePreset.COST)) == PRESETS[ObjectivePreset.COST]
    assert order(choice(Objective(weights=weights_for(spec))))[0] == "cpu"
    assert normalise_weights(2, 1, 1) == pytest.approx(CostWeights(0.5, 0.25, 0.25))
    assert normalise_weights(0, 0, 0) == PRESETS[ObjectivePreset.BALANCED]
    assert normalise_weights(-1, math.nan, 3) == CostWeights(0.0, 0.0, 1.0)


@given(st.tuples(*[st.floats(0, 1e6, allow_nan=False)] * 3), st.floats(1e-3, 1e3))
def test_weights_normalise_to_one_and_ignore_scale(raw: tuple[float, ...], k: float) -> None:
    w = normalise_weights(*raw)
    assert sum(w) == pytest.approx(1.0) and all(x >= 0 for x in w)
    if sum(raw) > 1e-300:
        assert normalise_weights(*(x * k for x in raw)) == pytest.approx(w)
        # Proportional to the input.
        for a, b in zip(w, raw, strict=True):
            assert a == pytest.approx(b / sum(raw), abs=1e-12)


def test_each_term_is_normalised_so_one_unit_means_the_same() -> None:
    def terms(objective: Objective) -> dict[str, CandidateScore]:
        return {c.resource: c for c in choice(objective).candidates}

    free = terms(Objective())
    # Time: doublings of the best achievable completion (the QPU's 60 s + the 60 s step).
    assert free["qpu"].time.normalised == 0
    assert free["gpu"].time.normalised == pytest.approx(math.log2(1860 / 120))
    # Error: tens of points of fidelity lost.
    assert free["qpu"].error.normalised == pytest.approx(2.0) and free["gpu"].error.raw == 0
    # USD without a budget: doublings of the cheapest plan (smoothed by 0.1 % of the priciest).
    s = 1e-3 * QPU_USD
    assert free["cpu"].usd.normalised == 0
    assert free["gpu"].usd.normalised == pytest.approx(math.log2((GPU_USD + s) / (CPU_USD + s)))
    assert free["gpu"].usd.normalised == pytest.approx(1.1, abs=0.01)  # 2.2x the cheapest
    # Fractions of a cent weigh next to nothing, whatever their ratio: a simulation for
    # $0.002 is not "infinitely" dearer than a free simulator backend.
    cheap = Workflow(steps=(Step("c"),), resources=("sim", "pool"))
    options = {
        ("c", "sim"): pred("c", "sim", 3600.0, 0.0, 1.0),
        ("c", "pool"): pred("c", "pool", 200.0, 0.002, 1.0),
    }
    ranked = WorkflowCost(cheap, options, Objective()).rank("c", {})
    assert ranked.best is not None and ranked.best.resource == "pool"
    assert ranked.best.usd.normalised == pytest.approx(math.log2(1.2))
    # USD with a budget: the share of the budget, what is already spent included.
    budget = terms(Objective(max_usd=40.0, spent_usd=4.0))
    assert budget["qpu"].usd.normalised == pytest.approx((4.0 + QPU_USD) / 40.0)


# -- the workflow, not the subtask alone -------------------------------------------------


def test_estimate_follows_the_critical_path_through_classical_steps() -> None:
    wf = Workflow(
        steps=(
            Step("prep", seconds=30.0, usd=0.01),
            Step("a", ("prep",)),
            Step("b", ("prep",)),
            Step("join", ("a", "b"), seconds=100.0),
        ),
        resources=("q1", "q2"),
    )
    predictions = {
        ("a", "q1"): pred("a", "q1", 50, 2.0, 0.9, p90=400),
        ("a", "q2"): pred("a", "q2", 10, 5.0, 0.7, p90=20),
        ("b", "q1"): pred("b", "q1", 200, 1.0, 0.8, p90=250),
    }
    objective = Objective(elapsed_seconds=5.0, spent_usd=1.5)
    est = estimate_workflow(wf, {"a": "q1", "b": "q1"}, predictions, objective)
    assert est.completion_p50 == pytest.approx(5 + 30 + 200 + 100)  # through b
    assert est.completion_p90 == pytest.approx(5 + 30 + 400 + 100)  # through a at P90
    assert est.usd == pytest.approx(1.5 + 0.01 + 2.0 + 1.0)
    assert est.error == pytest.approx(1 - (0.9 + 0.8) / 2)
    assert est.critical_path == ("prep", "b", "join")
    assert est.assumed == () and est.unplaceable == ()

    # Unassigned (or assigned to nothing usable): counted on the fastest feasible resource.
    est = estimate_workflow(wf, {"a": "nowhere"}, predictions, objective)
    assert est.assumed == ("a", "b") and est.usd == pytest.approx(1.5 + 0.01 + 5.0 + 1.0)


def test_a_slow_choice_off_the_critical_path_costs_no_time_on_it_it_does() -> None:
    def ranking(branch_seconds: float) -> dict[str, CandidateScore]:
        wf = Workflow(
            steps=(
                Step("q"),
                Step("other-branch", seconds=branch_seconds),
                Step("join", ("q", "other-branch"), seconds=30.0),
            ),
            resources=("fast", "slow"),
        )
        predictions = {
            ("q", "fast"): pred("q", "fast", 10, 4.0, 0.9),
            ("q", "slow"): pred("q", "slow", 500, 1.0, 0.9, kind=POOL),
        }
        r = rank_candidates(wf, "q", {}, predictions, preset(ObjectivePreset.SPEED))
        return {c.resource: c for c in r.candidates}

    # Off the critical path (another branch takes 1000 s): both finish the workflow at 1030 s,
    # so even `speed` takes the cheaper, slower one.
    off = ranking(1000.0)
    assert off["slow"].time == off["fast"].time
    assert off["slow"].time.raw == pytest.approx(1030) and off["slow"].time.normalised == 0
    assert off["slow"].score < off["fast"].score
    # The same subtask on the critical path (the branch takes 100 s): the slow choice delays
    # the classical step that waits on it, and `speed` pays for the fast one.
    on = ranking(100.0)
    assert on["slow"].time.raw == pytest.approx(530) and on["fast"].time.raw == pytest.approx(130)
    assert on["slow"].time.normalised == pytest.approx(math.log2(530 / 130))
    assert on["fast"].score < on["slow"].score


def test_the_downstream_classical_steps_count_in_the_completion() -> None:
    wf = Workflow(
        steps=(Step("q"), Step("post", ("q",), seconds=600.0), Step("report", ("post",))),
        resources=("r",),
    )
    predictions = {
        ("q", "r"): pred("q", "r", 100, 1.0, 0.9),
        ("report", "r"): pred("report", "r", 7, 0.1, 1.0),
    }
    r = rank_candidates(wf, "q", {}, predictions, Objective())
    assert r.candidates[0].time.raw == pytest.approx(100 + 600 + 7)


# -- hard constraints -------------------------------------------------------------------


def test_budget_excludes_a_choice_before_it_is_breached() -> None:
    r = choice(preset(ObjectivePreset.SPEED, max_usd=5.0))
    assert order(r) == ["gpu", "cpu", "qpu"] and r.unmet == () and r.reason == ""
    assert r.candidates[-1].violations == ("budget",) and not r.candidates[-1].admissible
    # 4.60 USD already spent: the GPU's 0.50 would end at 5.10, so only the CPU remains.
    r = choice(preset(ObjectivePreset.SPEED, max_usd=5.0, spent_usd=4.6))
    assert r.best is not None and r.best.resource == "cpu" and r.best.admissible
    assert r.best.usd.raw == pytest.approx(4.6 + CPU_USD)


def test_budget_counts_what_the_other_subtasks_are_planned_to_spend() -> None:
    wf = Workflow((Step("a"), Step("b", ("a",))), ("qpu", "cpu"))
    predictions = {
        (s, r): pred(s, r, t, usd, f)
        for s in ("a", "b")
        for r, t, usd, f in (("qpu", 60, 16.0, 0.9), ("cpu", 5000, 0.1, 1.0))
    }
    speed = preset(ObjectivePreset.SPEED, max_usd=20.0)
    assert (
        rank_candidates(wf, "a", {"b": "cpu"}, predictions, speed).candidates[0].resource == "qpu"
    )
    held = rank_candidates(wf, "a", {"b": "qpu"}, predictions, speed)
    assert held.candidates[0].resource == "cpu"


def test_deadline_excludes_by_p90_and_counts_elapsed_time() -> None:
    cost = preset(ObjectivePreset.COST, deadline_seconds=3600)
    assert order(choice(cost)) == ["gpu", "qpu", "cpu"]  # cpu: 20060 s > 3600 s
    # 1200 s elapsed, the GPU would end at 3060 s: fine; 1800 s elapsed: 3660 s, too late.
    assert (
        order(choice(preset(ObjectivePreset.COST, deadline_seconds=3600, elapsed_seconds=1200)))[0]
        == "gpu"
    )
    late = preset(ObjectivePreset.COST, deadline_seconds=3600, elapsed_seconds=1800)
    r = choice(late)
    assert r.best is not None and r.best.resource == "qpu"
    assert r.best.completion_p90 == pytest.approx(1800 + 310 + 60)
    # The QPU meets 300 s at P50 (120 s) but not at P90 (370 s): excluded before the risk.
    assert not choice(preset(ObjectivePreset.SPEED, deadline_seconds=300)).candidates[0].admissible


def test_a_deadline_that_cannot_be_met_says_so_and_ranks_the_least_bad() -> None:
    r = choice(preset(ObjectivePreset.COST, deadline_seconds=300))
    assert r.unmet == ("deadline",)
    assert order(r) == ["qpu", "gpu", "cpu"]  # by overshoot, not by the cost preset
    assert "deadline of 300s" in r.reason and "qpu" in r.reason and "370s" in r.reason
    assert all(not c.admissible for c in r.candidates)


def test_a_budget_that_cannot_be_met_says_so_and_ranks_the_cheapest_first() -> None:
    r = choice(preset(ObjectivePreset.SPEED, max_usd=0.1))
    assert r.unmet == ("budget",) and order(r) == ["cpu", "gpu", "qpu"]
    assert "budget of $0.10" in r.reason and "cpu" in r.reason


def test_budget_and_deadline_that_cannot_be_met_together() -> None:
    # The pools keep 1 USD but not 500 s; the QPU keeps 500 s but not 1 USD.
    r = choice(preset(ObjectivePreset.SPEED, max_usd=1.0, deadline_seconds=500))
    assert order(r)[0] == "gpu"  # overshoot 2.7x the deadline, against 15x the budget (qpu)
    assert r.unmet == ("deadline",) and "both" in r.reason
    both = choice(preset(ObjectivePreset.SPEED, max_usd=0.1, deadline_seconds=100))
    assert set(both.unmet) <= {"budget", "deadline"} and both.unmet
    assert "deadline" in both.reason and "budget" in both.reason


# -- infeasible, determinism, explanation -------------------------------------------------


def test_infeasible_predictions_are_never_chosen() -> None:
    tempting = {
        **PREDICTIONS,
        # Free, instant and exact, but infeasible / not finite.
        ("sim", "too-small"): pred("sim", "too-small", 0, 0, 1.0, feasible=False),
        ("sim", "broken"): pred("sim", "broken", math.inf, 0, 1.0),
        ("sim", "nan"): pred("sim", "nan", 1, math.nan, 1.0),
    }
    wf = Workflow(WORKFLOW.steps, (*WORKFLOW.resources, "too-small", "broken", "nan"))
    for name in ObjectivePreset:
        r = rank_candidates(wf, "sim", {}, tempting, preset(name))
        assert set(order(r)) == {"qpu", "gpu", "cpu"}
        assert r.infeasible == ("broken", "nan", "too-small")
    # Nothing usable: no candidate, and a reason.
    only_bad = {k: v for k, v in tempting.items() if k[1] in {"too-small", "broken", "nan"}}
    r = rank_candidates(wf, "sim", {}, only_bad, Objective())
    assert r.best is None and "infeasible" in r.reason and "too-small" in r.reason
    r = rank_candidates(wf, "sim", {}, {}, Objective())
    assert r.best is None and "no allowed resource has a prediction" in r.reason
    est = estimate_workflow(wf, {"sim": "too-small"}, only_bad)
    assert est.unplaceable == ("sim",) and est.completion_p50 == pytest.approx(60)
    # An assignment to an infeasible resource is never used by the estimate either.
    est = estimate_workflow(wf, {"sim": "too-small"}, tempting)
    assert est.assumed == ("sim",) and est.usd == pytest.approx(QPU_USD)


def test_ties_are_broken_by_resource_name_whatever_the_input_order() -> None:
    twins = {("sim", r): pred("sim", r, 100, 1.0, 0.9) for r in ("zeta", "alpha", "mid")}
    for resources in (("zeta", "alpha", "mid"), ("mid", "zeta", "alpha")):
        r = rank_candidates(Workflow(WORKFLOW.steps, resources), "sim", {}, twins, Objective())
        assert order(r) == ["alpha", "mid", "zeta"]


def test_unknown_or_fixed_subtasks_have_no_candidates() -> None:
    for name in ("post", "missing"):
        r = rank_candidates(WORKFLOW, name, {}, PREDICTIONS, Objective())
        assert r.best is None and "not a subtask placed by predictions" in r.reason


def test_describe_shows_the_numbers_behind_a_choice() -> None:
    r = choice(preset(ObjectivePreset.SPEED, max_usd=5.0))
    text = r.candidates[-1].describe()
    assert text.startswith("qpu: score ")
    assert "completion 120s P50, 370s P90" in text and "$16.00" in text
    assert "1-fidelity 0.200" in text and text.endswith("breaks budget")


def test_from_spec_reads_the_dag_the_objective_and_the_budget() -> None:
    spec = HybridWorkflowSpec(
        subtasks=[
            SubtaskSpec(name="bell", circuit=CircuitSpec(qasm="OPENQASM 3;")),
            SubtaskSpec(name="fit", dependsOn=["bell"], classical=ClassicalSpec(image="py")),
            SubtaskSpec(name="plot", dependsOn=["fit"], classical=ClassicalSpec(image="py")),
        ],
        resources=ResourcesSpec(quantumBackends=["ibm-a"]),
        objective=ObjectiveSpec(preset=ObjectivePreset.ACCURACY),
        budget=BudgetSpec(maxCostUSD=12.5, deadlineSeconds=900),
    )
    wf = Workflow.from_spec(spec, classical_seconds={"fit": 42.0}, finished=["plot"])
    assert wf.steps == (
        Step("bell"),
        Step("fit", ("bell",), seconds=42.0),
    )
    assert wf.resources == ("ibm-a", "cpu", "gpu")
    assert Workflow.from_spec(spec).steps[2].seconds == DEFAULT_CLASSICAL_SECONDS
    o = Objective.from_spec(spec, elapsed_seconds=10, spent_usd=2)
    assert o == Objective(PRESETS[ObjectivePreset.ACCURACY], 12.5, 900.0, 10.0, 2.0)


# -- properties ---------------------------------------------------------------------------

RESOURCES = ("r0", "r1", "r2", "r3")


@st.composite
def prediction_for(draw: st.DrawFn, subtask: str, resource: str) -> Prediction:
    p50 = draw(st.floats(0, 1e5))
    return pred(
        subtask,
        resource,
        p50,
        draw(st.floats(0, 1e3)),
        draw(st.floats(0, 1)),
        p90=p50 + draw(st.floats(0, 1e5)),
        feasible=draw(st.booleans() | st.just(True)),
    )


@st.composite
def problems(
    draw: st.DrawFn,
) -> tuple[Workflow, Predictions, dict[str, str], Objective, str]:
    """A random DAG (fixed and placed steps), predictions for some pairs, an assignment,
    an objective with or without constraints, and the placed subtask to rank."""
    n = draw(st.integers(1, 7))
    names = [f"s{i}" for i in range(n)]
    scored = draw(st.sampled_from(names))
    steps = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        fixed = None if name == scored else draw(st.none() | st.floats(0, 1e4))
        steps.append(Step(name, tuple(deps), fixed, draw(st.floats(0, 10)) if fixed else 0.0))
    predictions: Predictions = {}
    assignment: dict[str, str] = {}
    for s in steps:
        if s.seconds is not None:
            continue
        for r in draw(st.lists(st.sampled_from(RESOURCES), unique=True, min_size=1)):
            predictions[(s.name, r)] = draw(prediction_for(s.name, r))
        if s.name != scored and draw(st.booleans()):
            assignment[s.name] = draw(st.sampled_from(RESOURCES))
    objective = Objective(
        weights=normalise_weights(*draw(st.tuples(*[st.floats(0, 1)] * 3))),
        max_usd=draw(st.none() | st.floats(0, 3e3)),
        deadline_seconds=draw(st.none() | st.floats(1, 5e5)),
        elapsed_seconds=draw(st.floats(0, 1e4)),
        spent_usd=draw(st.floats(0, 100)),
    )
    return Workflow(tuple(steps), RESOURCES), predictions, assignment, objective, scored


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(problems())
def test_rank_agrees_with_the_full_workflow_estimate(
    problem: tuple[Workflow, Predictions, dict[str, str], Objective, str],
) -> None:
    """The one-pass scoring of every candidate equals costing the whole workflow with it."""
    wf, predictions, assignment, objective, scored = problem
    cost = WorkflowCost(wf, predictions, objective)
    for c in cost.rank(scored, assignment).candidates:
        est = cost.estimate({**assignment, scored: c.resource})
        assert c.time.raw == pytest.approx(est.completion_p50, rel=1e-9, abs=1e-6)
        assert c.completion_p90 == pytest.approx(est.completion_p90, rel=1e-9, abs=1e-6)
        assert c.usd.raw == pytest.approx(est.usd, rel=1e-9, abs=1e-9)
        assert c.error.raw == pytest.approx(est.error, abs=1e-9)
        assert est.completion_p50 >= cost.best_completion - 1e-6 * (1 + cost.best_completion)


@PROPERTY
@given(problems())
def test_scores_are_finite_ordered_and_never_infeasible(
    problem: tuple[Workflow, Predictions, dict[str, str], Objective, str],
) -> None:
    wf, predictions, assignment, objective, scored = problem
    r = rank_candidates(wf, scored, assignment, predictions, objective)
    usable = {k[1] for k, p in predictions.items() if k[0] == scored and p.feasible}
    assert set(order(r)) == usable
    assert set(r.infeasible) == {k[1] for k in predictions if k[0] == scored} - usable
    for c in r.candidates:
        assert math.isfinite(c.score) and c.score >= 0
        for term in (c.time, c.error, c.usd):
            assert math.isfinite(term.raw) and math.isfinite(term.normalised)
            assert term.normalised >= 0
        assert c.score == pytest.approx(c.time.weighted + c.error.weighted + c.usd.weighted)
        assert c.admissible == (not c.violations) == (c.breach == 0)
    keys = [(not c.admissible, c.breach, c.score, c.resource) for c in r.candidates]
    assert keys == sorted(keys)
    assert (r.unmet == ()) == (r.reason == "") or r.best is None
    if r.best is not None:
        assert r.unmet == r.best.violations


def _scaled(predictions: Predictions, k: float) -> Predictions:
    return {key: p._replace(usd=p.usd * k) for key, p in predictions.items()}


@PROPERTY
@given(problems(), st.floats(1e-3, 1e3))
def test_without_a_budget_the_ranking_ignores_the_currency_scale(
    problem: tuple[Workflow, Predictions, dict[str, str], Objective, str], k: float
) -> None:
    """... where spends are not negligible (under ``USD_NEGLIGIBLE`` they barely count,
    whatever their ratio): the problem is first scaled so its priciest plan's smoothing
    is above that floor, at both scales."""
    wf, predictions, assignment, objective, scored = problem
    objective = Objective(
        objective.weights,
        None,
        objective.deadline_seconds,
        objective.elapsed_seconds,
        objective.spent_usd,
    )
    priciest = WorkflowCost(wf, predictions, objective).usd_range[1]
    assume(priciest > 1e-9)
    lift = max(1.0, 2 * USD_NEGLIGIBLE / (USD_SMOOTHING_FRACTION * priciest * min(k, 1.0)))
    wf = Workflow(tuple(s._replace(usd=s.usd * lift) for s in wf.steps), wf.resources)
    predictions = _scaled(predictions, lift)
    objective = dataclasses.replace(objective, spent_usd=objective.spent_usd * lift)
    steps = tuple(s._replace(usd=s.usd * k) for s in wf.steps)
    base = rank_candidates(wf, scored, assignment, predictions, objective)
    scaled = rank_candidates(
        Workflow(steps, wf.resources),
        scored,
        assignment,
        _scaled(predictions, k),
        Objective(
            objective.weights,
            None,
            objective.deadline_seconds,
            objective.elapsed_seconds,
            objective.spent_usd * k,
        ),
    )
    before = {c.resource: c.score for c in base.candidates}
    after = {c.resource: c.score for c in scaled.candidates}
    assert after == pytest.approx(before, rel=1e-9, abs=1e-9)
    # Same order, up to candidates whose scores tie within rounding.
    for a, b in zip(base.candidates, scaled.candidates, strict=True):
        assert a.resource == b.resource or a.score == pytest.approx(b.score, abs=1e-9)


def _near(a: CandidateScore, b: CandidateScore) -> bool:
    return (
        a.admissible == b.admissible
        and a.breach == pytest.approx(b.breach, rel=1e-9, abs=1e-9)
        and a.score == pytest.approx(b.score, rel=1e-9, abs=1e-9)
    )


@PROPERTY
@given(problems(), st.data())
def test_a_faster_cheaper_more_accurate_candidate_never_loses_rank(
    problem: tuple[Workflow, Predictions, dict[str, str], Objective, str], data: st.DataObject
) -> None:
    wf, predictions, assignment, objective, scored = problem
    before = rank_candidates(wf, scored, assignment, predictions, objective)
    if not before.candidates:
        return
    target = data.draw(st.sampled_from(order(before)))
    faster, cheaper, better = (data.draw(st.floats(0, 1)) for _ in range(3))
    p = predictions[(scored, target)]
    improved = {
        **predictions,
        (scored, target): p._replace(
            seconds_p50=p.seconds_p50 * faster,
            seconds_p90=p.seconds_p90 * faster,
            usd=p.usd * cheaper,
            fidelity=p.fidelity + (1 - p.fidelity) * better,
        ),
    }
    after = rank_candidates(wf, scored, assignment, improved, objective)
    ahead_before = set(order(before)[: order(before).index(target)])
    pos = order(after).index(target)
    me = after.candidates[pos]
    for other in after.candidates[:pos]:
        assert other.resource in ahead_before or _near(other, me), (
            f"{target} fell behind {other.resource}"
        )


def test_a_loop_weighs_the_batches_it_has_left_but_hands_back_one_batch() -> None:
    wf = Workflow(steps=(Step("vqe", batches=40), Step("c")), resources=("q1", "q2"))
    one = {
        ("vqe", "q1"): pred("vqe", "q1", 30.0, 1.0, 0.9),
        ("vqe", "q2"): pred("vqe", "q2", 20.0, 3.0, 0.9),  # faster per batch, dearer
        ("c", "q1"): pred("c", "q1", 100.0, 0.5, 0.9),
        ("c", "q2"): pred("c", "q2", 100.0, 0.5, 0.9),
    }
    cost = WorkflowCost(wf, one, Objective(max_usd=100.0))
    ranked = cost.rank("vqe", {"c": "q1"})
    by = {c.resource: c for c in ranked.candidates}
    # Forty batches: 120 USD on q2 breaks the 100 USD budget, 40 USD on q1 keeps it.
    assert by["q2"].usd.raw == pytest.approx(0.5 + 40 * 3.0) and not by["q2"].admissible
    assert ranked.best is not None and ranked.best.resource == "q1"
    assert by["q1"].time.raw == pytest.approx(40 * 30.0)  # the loop is the critical path
    # What the caller gets back is the one-batch figure (a backend holds one batch at a time).
    assert ranked.best.prediction == one[("vqe", "q1")]
    # Candidates a caller adjusts are one batch too, and are scaled the same way.
    shifted = one[("vqe", "q2")]._replace(usd=0.1)
    again = cost.rank("vqe", {"c": "q1"}, candidates=[shifted, one[("vqe", "q1")]])
    assert again.best is not None and again.best.resource == "q2"
    assert again.best.usd.raw == pytest.approx(0.5 + 40 * 0.1)
    assert again.best.prediction == shifted


def test_batches_left_count_the_current_attempts_progress_only() -> None:
    spec = HybridWorkflowSpec.model_validate(
        {
            "subtasks": [
                {"name": "cob", "variational": {"qasm": "OPENQASM 3.0; input float[64] t;",
                 "hamiltonian": [{"pauli": "Z", "coefficient": 1.0}], "maxIterations": 30}},
                {"name": "spsa", "variational": {"qasm": "OPENQASM 3.0; input float[64] t;",
                 "hamiltonian": [{"pauli": "Z", "coefficient": 1.0}], "optimizer": "SPSA",
                 "maxIterations": 30}},
                {"name": "c", "circuit": {"qasm": "OPENQASM 3.0; qubit q;"}},
            ]
        }
    )  # fmt: skip
    running = SubtaskStatus(
        name="cob", phase=SubtaskPhase.RUNNING, progress=VariationalProgress(evaluations=12)
    )
    retrying = SubtaskStatus(
        name="spsa", phase=SubtaskPhase.RETRYING, progress=VariationalProgress(evaluations=50)
    )
    left = batches_left(spec, HybridWorkflowStatus(subtasks=[running, retrying]))
    # COBYLA: 30 less the 12 sent; SPSA retrying: all 2*30+10 again (its new attempt).
    assert left == {"cob": 18, "spsa": 70}
