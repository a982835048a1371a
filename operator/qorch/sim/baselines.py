"""Baseline schedulers for the digital twin: a batch multi-objective scheduler in the manner of
Qonductor (Giortamis et al., SC'25, arXiv:2408.04312).

What Qonductor does: every scheduling round (120 s) it takes the jobs waiting at that moment
(at most about 100), estimates for each (job, QPU) pair the job's fidelity and run time with
learned estimators (after transpiling each candidate pair, ten transpilations per candidate),
estimates each QPU's queue wait as its pending jobs times its average job time, and searches
the assignments of the round's jobs to QPUs with NSGA-II (pymoo, population 100) for two
objectives, the mean waiting time and the mean error (1 - fidelity). It picks one solution from
the Pareto front with pymoo's pseudo-weights decision making, weights 0.5 / 0.5, and submits;
assigned work is never moved afterwards.

What this keeps: one round over the jobs given (the caller cuts rounds every 120 s and keeps
assigned work where it went), NSGA-II with ``pop_size=100``, the two objectives, the pick by
``PseudoWeights([0.5, 0.5])``, and the wait estimate ``pending_jobs x average_job_seconds``.
Within the round, jobs sent to the same backend also queue behind each other in the order of
the round's job list, each adding its estimated run time: without it the search would pile
the whole round onto the one backend that looks best in isolation.

What it leaves out: the ten transpilations per candidate (the caller's fidelity estimate stands
for their outcome) and Qonductor's learned estimators (our predictor, through the caller,
stands for them). Which backends a job may go to is what the caller gives estimates for: it
omits a backend with too few qubits for the job, or one it cannot estimate, and such a pair is
then impossible here (each job's decision variable indexes its own list of feasible backends).

Pure and deterministic: no I/O, no clock, the search seeded by ``seed``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pymoo.algorithms.moo.nsga2 import NSGA2  # type: ignore[import-untyped]
from pymoo.core.problem import Problem  # type: ignore[import-untyped]
from pymoo.mcdm.pseudo_weights import PseudoWeights  # type: ignore[import-untyped]
from pymoo.operators.crossover.sbx import SBX  # type: ignore[import-untyped]
from pymoo.operators.mutation.pm import PM  # type: ignore[import-untyped]
from pymoo.operators.repair.rounding import RoundingRepair  # type: ignore[import-untyped]
from pymoo.operators.sampling.rnd import IntegerRandomSampling  # type: ignore[import-untyped]
from pymoo.optimize import minimize  # type: ignore[import-untyped]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Qonductor's decision weights: waiting time and error count the same.
PSEUDO_WEIGHTS = (0.5, 0.5)
#: Objective values closer than this are one point of the front (float noise of the sums).
_DECIMALS = 9


@dataclass(frozen=True)
class BatchBackend:
    """A backend as the round sees it: its queue now, for the wait estimate."""

    name: str
    pending_jobs: int  # queue length now (others' jobs)
    average_job_seconds: float  # the backend's average job time (for the wait estimate)


@dataclass(frozen=True)
class BatchJob:
    """A waiting job and the caller's estimates for the backends it may run on.

    A backend missing from either mapping (or with a non-finite estimate) is infeasible for
    the job: too few qubits, or nothing to estimate from.
    """

    name: str
    run_seconds: Mapping[str, float]  # estimated run time per feasible backend name
    fidelity: Mapping[str, float]  # estimated fidelity (0..1) per feasible backend name


@dataclass(frozen=True)
class BatchDecision:
    """The round's pick; the objective values are the estimates the search optimised."""

    assignment: dict[str, str]  # job name -> backend name
    unassigned: tuple[str, ...]
    mean_wait_seconds: float  # of the chosen solution (estimated)
    mean_error: float  # of the chosen solution
    front_size: int


class _RoundProblem(Problem):  # type: ignore[misc]
    """Integer-coded round: variable k picks an index into job k's own feasible backends, so
    the search cannot produce an infeasible pair. Evaluated for the whole population at once
    (``elementwise=False``) to keep a 100-job round well under a second per search."""

    def __init__(self, upper: IntArray, objectives: Callable[[IntArray], FloatArray]) -> None:
        super().__init__(
            n_var=len(upper),
            n_obj=2,
            xl=np.zeros(len(upper), dtype=np.int64),
            xu=upper,
            vtype=int,
            elementwise=False,
        )
        self._objectives = objectives

    def _evaluate(
        self, x: npt.NDArray[Any], out: dict[str, Any], *args: Any, **kwargs: Any
    ) -> None:
        out["F"] = self._objectives(np.rint(x).astype(np.int64))


class _Round:
    """The numbers of one round, in arrays, and the objectives of candidate assignments."""

    def __init__(
        self, jobs: Sequence[BatchJob], options: list[list[int]], backends: Sequence[BatchBackend]
    ) -> None:
        n_jobs, n_backends = len(jobs), len(backends)
        self.run = np.zeros((n_jobs, n_backends))
        self.error = np.zeros((n_jobs, n_backends))
        for j, (job, feasible) in enumerate(zip(jobs, options, strict=True)):
            for b in feasible:
                name = backends[b].name
                self.run[j, b] = float(job.run_seconds[name])
                self.error[j, b] = 1.0 - float(job.fidelity[name])
        self.base_wait = np.array(
            [b.pending_jobs * b.average_job_seconds for b in backends], dtype=np.float64
        )
        self.n_backends = n_backends
        self.rows = np.arange(n_jobs)[None, :]
        # Jobs with a choice are the decision variables; the others sit where they must
        # but still queue with (and ahead of) the rest.
        self.fixed = np.array([feasible[0] for feasible in options], dtype=np.int64)
        self.variable = np.array([j for j, f in enumerate(options) if len(f) > 1], dtype=np.int64)
        width = max((len(options[j]) for j in self.variable), default=1)
        self.table = np.zeros((len(self.variable), width), dtype=np.int64)
        self.upper = np.zeros(len(self.variable), dtype=np.int64)
        for k, j in enumerate(self.variable):
            self.table[k, : len(options[j])] = options[j]
            self.upper[k] = len(options[j]) - 1

    def decode(self, x: IntArray) -> IntArray:
        """Population of variable vectors (P, V) -> backend index per job (P, J)."""
        choice = np.tile(self.fixed, (x.shape[0], 1))
        if len(self.variable):
            picked = np.clip(x, 0, self.upper[None, :])
            choice[:, self.variable] = self.table[np.arange(len(self.variable))[None, :], picked]
        return choice

    def objectives(self, choice: IntArray) -> FloatArray:
        """(mean wait, mean error) per assignment (P, J) -> (P, 2).

        A job's wait is its backend's queue estimate plus the run time of the jobs earlier in
        the round's list sent to the same backend."""
        run = self.run[self.rows, choice]
        onehot = choice[:, :, None] == np.arange(self.n_backends)[None, None, :]
        work = run[:, :, None] * onehot
        ahead = np.cumsum(work, axis=1) - work
        in_round = np.take_along_axis(ahead, choice[:, :, None], axis=2)[:, :, 0]
        wait = self.base_wait[choice] + in_round
        error = self.error[self.rows, choice]
        return np.column_stack([wait.mean(axis=1), error.mean(axis=1)])


def _feasible(job: BatchJob, backends: Sequence[BatchBackend]) -> list[int]:
    """Indices (in ``backends`` order) of the backends the caller gave usable estimates for."""
    feasible = []
    for b, backend in enumerate(backends):
        run = job.run_seconds.get(backend.name)
        fidelity = job.fidelity.get(backend.name)
        if run is None or fidelity is None or not math.isfinite(run):
            continue
        if not math.isfinite(fidelity):
            continue
        if run < 0.0:
            raise ValueError(f"job {job.name!r}: negative run time on {backend.name!r}")
        if not 0.0 <= fidelity <= 1.0:
            raise ValueError(f"job {job.name!r}: fidelity {fidelity} on {backend.name!r}")
        feasible.append(b)
    return feasible


def _pick(objectives: FloatArray, candidates: IntArray) -> tuple[int, int]:
    """Index of the pseudo-weights pick among ``candidates`` rows, and the front's size.

    The front is the non-dominated set of distinct objective vectors (rounded against float
    noise); among candidates with the same vector the lexicographically first stands for it,
    so the pick does not depend on the order the search left them in. A front of one point is
    its own pick; on a front of two or more distinct non-dominated points both objectives vary,
    so the pseudo-weights' normalisation by the front's range is well defined (the range is
    still floored at 1 to stay safe)."""
    rounded = np.round(objectives, _DECIMALS)
    keys = [candidates[:, k] for k in reversed(range(candidates.shape[1]))]
    order = np.lexsort([*keys, rounded[:, 1], rounded[:, 0]])
    front: list[int] = []
    best_error = math.inf
    previous: tuple[float, float] | None = None
    for i in order:
        point = (float(rounded[i, 0]), float(rounded[i, 1]))
        if point == previous:
            continue
        previous = point
        # Sorted by wait then error: non-dominated iff its error beats every earlier one.
        if point[1] < best_error:
            front.append(int(i))
            best_error = point[1]
    if len(front) == 1:
        return front[0], 1
    values = rounded[front]
    ideal = values.min(axis=0)
    span = values.max(axis=0) - ideal
    nadir = ideal + np.where(span > 0.0, span, 1.0)
    decider = PseudoWeights(np.array(PSEUDO_WEIGHTS), ideal=ideal, nadir=nadir)
    return front[int(decider.do(values))], len(front)


def batch_assign(
    jobs: Sequence[BatchJob],
    backends: Sequence[BatchBackend],
    *,
    seed: int = 0,
    pop_size: int = 100,
    generations: int = 50,
) -> BatchDecision:
    """One Qonductor-style scheduling round: assign the waiting ``jobs`` to ``backends``.

    NSGA-II (seeded) over one integer per job with a choice; the pick from its final Pareto
    front by pseudo-weights 0.5 / 0.5 on (mean wait, mean error). When the whole search space
    is no larger than one population (a single job with a few options, say) every assignment
    is enumerated instead: NSGA-II's first generation could hold them all, and enumeration
    gives that exact front without the search's randomness. A job with no feasible backend is
    returned unassigned and takes no part in the objectives.
    """
    if pop_size < 2 or generations < 1:
        raise ValueError("pop_size must be at least 2 and generations at least 1")
    if len({b.name for b in backends}) != len(backends):
        raise ValueError("backend names must be unique")
    if len({j.name for j in jobs}) != len(jobs):
        raise ValueError("job names must be unique")
    for backend in backends:
        if backend.pending_jobs < 0 or not backend.average_job_seconds >= 0.0:
            raise ValueError(f"backend {backend.name!r}: negative queue or job time")
        if not math.isfinite(backend.average_job_seconds):
            raise ValueError(f"backend {backend.name!r}: non-finite average job time")

    options = [_feasible(job, backends) for job in jobs]
    placed = [job for job, feasible in zip(jobs, options, strict=True) if feasible]
    unassigned = tuple(
        job.name for job, feasible in zip(jobs, options, strict=True) if not feasible
    )
    if not placed:
        return BatchDecision({}, unassigned, 0.0, 0.0, 0)
    round_ = _Round(placed, [f for f in options if f], backends)

    n_var = len(round_.variable)
    space = math.prod(int(u) + 1 for u in round_.upper)
    if space <= pop_size:
        every = list(itertools.product(*(range(int(u) + 1) for u in round_.upper)))
        candidates = np.array(every, dtype=np.int64).reshape(len(every), n_var)
    else:
        problem = _RoundProblem(round_.upper, lambda x: round_.objectives(round_.decode(x)))
        algorithm = NSGA2(
            pop_size=pop_size,
            sampling=IntegerRandomSampling(),
            # Rounded after variation (pymoo's own integer setup, ``vtype=float``): casting to
            # int first would truncate, and a job's last option would be all but unreachable.
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        result = minimize(problem, algorithm, ("n_gen", generations), seed=seed, verbose=False)
        candidates = np.rint(result.opt.get("X")).astype(np.int64).reshape(-1, n_var)

    choices = round_.decode(candidates)
    values = round_.objectives(choices)
    chosen, front_size = _pick(values, candidates)
    assignment = {
        job.name: backends[int(b)].name for job, b in zip(placed, choices[chosen], strict=True)
    }
    return BatchDecision(
        assignment=assignment,
        unassigned=unassigned,
        mean_wait_seconds=float(values[chosen, 0]),
        mean_error=float(values[chosen, 1]),
        front_size=front_size,
    )
