"""The Qonductor-style batch baseline: one seeded NSGA-II round over (mean wait, mean error),
picked by pseudo-weights 0.5 / 0.5; only feasible pairs, queueing within the round."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from qorch.sim.baselines import BatchBackend, BatchDecision, BatchJob, batch_assign


def job(name: str, run: Mapping[str, float], fidelity: Mapping[str, float]) -> BatchJob:
    return BatchJob(name, dict(run), dict(fidelity))


def uniform_jobs(n: int, run: float, fidelity: Mapping[str, float]) -> list[BatchJob]:
    """n jobs with the same run time everywhere and the given fidelity per backend."""
    return [job(f"j{i}", dict.fromkeys(fidelity, run), fidelity) for i in range(n)]


def objectives(
    jobs: Sequence[BatchJob], backends: Sequence[BatchBackend], assignment: Mapping[str, str]
) -> tuple[float, float]:
    """Mean wait and mean error of an assignment, recomputed plainly: queue estimate plus
    the run times of the round's earlier jobs sent to the same backend."""
    queued = {b.name: b.pending_jobs * b.average_job_seconds for b in backends}
    waits, errors = [], []
    for j in jobs:
        if j.name not in assignment:
            continue
        b = assignment[j.name]
        waits.append(queued[b])
        errors.append(1.0 - j.fidelity[b])
        queued[b] += j.run_seconds[b]
    return sum(waits) / len(waits), sum(errors) / len(errors)


def mixed_round(seed: int) -> tuple[list[BatchJob], list[BatchBackend]]:
    """30 jobs over 6 backends, each job feasible on a random subset (some on none)."""
    rng = random.Random(seed)
    backends = [BatchBackend(f"b{i}", rng.randint(0, 30), rng.uniform(5.0, 60.0)) for i in range(6)]
    jobs = []
    for i in range(30):
        feasible = [b.name for b in backends if rng.random() < 0.5] if i % 10 else []
        run = {n: rng.uniform(1.0, 100.0) for n in feasible}
        fidelity = {n: rng.uniform(0.5, 0.99) for n in feasible}
        jobs.append(job(f"j{i}", run, fidelity))
    return jobs, backends


def test_deterministic_for_a_seed() -> None:
    jobs, backends = mixed_round(1)
    first = batch_assign(jobs, backends, seed=7)
    assert batch_assign(jobs, backends, seed=7) == first
    assert first.front_size >= 2  # a real search, not a trivial case


def test_only_feasible_backends_and_unassigned_when_none() -> None:
    jobs, backends = mixed_round(2)
    # Estimates missing on one side, non-finite, or for a backend not in the round: infeasible.
    jobs += [
        job("run-only", {"b0": 1.0, "b1": 1.0}, {"b1": 0.9}),
        job("nan", {"b0": float("nan"), "b2": 5.0}, {"b0": 0.99, "b2": 0.5}),
        job("elsewhere", {"gone": 1.0}, {"gone": 0.99}),
        job("nothing", {}, {}),
    ]
    decision = batch_assign(jobs, backends, seed=3)
    for j in jobs:
        if j.name in decision.assignment:
            backend = decision.assignment[j.name]
            assert backend in j.run_seconds and backend in j.fidelity
    assert decision.assignment["run-only"] == "b1"
    assert decision.assignment["nan"] == "b2"
    expected = {j.name for j in jobs if not j.run_seconds} | {"elsewhere"}
    assert set(decision.unassigned) == expected
    assert set(decision.assignment) | expected == {j.name for j in jobs}
    # The reported objectives are those of the returned assignment.
    wait, error = objectives(jobs, backends, decision.assignment)
    assert decision.mean_wait_seconds == pytest.approx(wait)
    assert decision.mean_error == pytest.approx(error)


def test_long_queue_is_avoided_at_equal_fidelity() -> None:
    backends = [BatchBackend("short", 0, 10.0), BatchBackend("long", 50, 10.0)]
    jobs = uniform_jobs(20, 10.0, {"short": 0.9, "long": 0.9})
    decision = batch_assign(jobs, backends, seed=0)
    counts = Counter(decision.assignment.values())
    # 20 jobs of 10 s on the short one never wait the long one's 500 s: all belong there.
    assert counts["short"] >= 16
    assert decision.front_size == 1


def test_far_better_fidelity_draws_the_pick() -> None:
    backends = [BatchBackend("good", 5, 60.0), BatchBackend("poor", 5, 60.0)]
    jobs = uniform_jobs(20, 30.0, {"good": 0.95, "poor": 0.6})
    decision = batch_assign(jobs, backends, seed=0)
    counts = Counter(decision.assignment.values())
    assert counts["good"] > counts["poor"]
    rng = random.Random(0)
    random_errors = []
    for _ in range(50):
        picks = {j.name: rng.choice(["good", "poor"]) for j in jobs}
        random_errors.append(objectives(jobs, backends, picks)[1])
    # A random assignment's error is about the two fidelities' mean error, 0.225.
    assert decision.mean_error < sum(random_errors) / len(random_errors) - 0.05


def test_pick_balances_wait_against_error() -> None:
    fast, slow = BatchBackend("fast", 0, 10.0), BatchBackend("slow", 100, 30.0)
    jobs = uniform_jobs(10, 10.0, {"fast": 0.7, "slow": 0.99})
    decision = batch_assign(jobs, [fast, slow], seed=0)
    all_slow = objectives(jobs, [fast, slow], dict.fromkeys(decision.assignment, "slow"))
    all_fast = objectives(jobs, [fast, slow], dict.fromkeys(decision.assignment, "fast"))
    assert all_fast[0] < decision.mean_wait_seconds < all_slow[0]
    assert all_slow[1] < decision.mean_error < all_fast[1]
    assert decision.front_size >= 3
    counts = Counter(decision.assignment.values())
    assert counts["fast"] and counts["slow"]


@pytest.mark.filterwarnings("error")  # identical errors everywhere: a degenerate objective
def test_jobs_in_the_round_queue_behind_each_other() -> None:
    backends = [BatchBackend("a", 0, 60.0), BatchBackend("b", 0, 60.0)]
    jobs = uniform_jobs(10, 60.0, {"a": 0.9, "b": 0.9})
    decision = batch_assign(jobs, backends, seed=0)
    counts = Counter(decision.assignment.values())
    assert counts["a"] == counts["b"] == 5  # each one more on a backend waits 60 s longer
    assert decision.front_size == 1
    assert decision.mean_wait_seconds == pytest.approx(60.0 * 2.0)  # (0+1+2+3+4)*60 / 5


def test_no_jobs() -> None:
    decision = batch_assign([], [BatchBackend("a", 3, 10.0)])
    assert decision == BatchDecision({}, (), 0.0, 0.0, 0)


def test_one_job_picks_from_its_own_options_by_pseudo_weights() -> None:
    backends = [
        BatchBackend("quick", 0, 10.0),  # wait 0, error 0.4
        BatchBackend("middle", 10, 10.0),  # wait 100, error 0.1
        BatchBackend("best", 100, 10.0),  # wait 1000, error 0.05
        BatchBackend("worse", 20, 10.0),  # wait 200, error 0.3: dominated by middle
    ]
    fidelity = {"quick": 0.6, "middle": 0.9, "best": 0.95, "worse": 0.7}
    decision = batch_assign(uniform_jobs(1, 10.0, fidelity), backends)
    assert decision.assignment == {"j0": "middle"}
    assert decision.front_size == 3
    assert decision.mean_wait_seconds == pytest.approx(100.0)
    assert decision.mean_error == pytest.approx(0.1)


def test_jobs_with_one_option_each_go_there_and_still_queue() -> None:
    backends = [BatchBackend("a", 2, 30.0), BatchBackend("b", 0, 10.0)]
    jobs = [
        job("x", {"a": 20.0}, {"a": 0.8}),
        job("y", {"a": 40.0}, {"a": 0.9}),
        job("z", {"b": 5.0}, {"b": 0.7}),
    ]
    decision = batch_assign(jobs, backends)
    assert decision.assignment == {"x": "a", "y": "a", "z": "b"}
    assert decision.front_size == 1
    assert decision.mean_wait_seconds == pytest.approx((60.0 + 80.0 + 0.0) / 3)
    assert decision.mean_error == pytest.approx((0.2 + 0.1 + 0.3) / 3)


def test_rejects_bad_input() -> None:
    a = BatchBackend("a", 0, 10.0)
    with pytest.raises(ValueError):
        batch_assign([], [a, a])
    with pytest.raises(ValueError):
        batch_assign([job("x", {}, {}), job("x", {}, {})], [a])
    with pytest.raises(ValueError):
        batch_assign([job("x", {"a": 1.0}, {"a": 1.5})], [a])
