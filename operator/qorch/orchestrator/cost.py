"""The cost function: the seed's weighted sum of time, error and money, judged on the WORKFLOW.

A subtask's resource is scored by what it does to the whole workflow, not by its own
numbers: a slow choice for a subtask off the critical path costs no time, one on it delays
every step that waits on it (classical steps included), and money is the workflow's total.
That is HEFT's lesson (``shared/notes/allocation.md``) applied to the seed's cost function.

Each term is normalised so that a weight means what a user thinks, and so that one unit of
each is about equally bad (which is what makes ``balanced`` = equal weights):

- time: ``log2(completion / best achievable completion)``: 1 = the workflow finishes twice as
  late as it could (best: every subtask on its fastest feasible resource, P50). A log, not
  ``ratio - 1``: ratios reach 1000 and more (a QPU queue against a seconds-long simulation),
  and a linear ratio then lets the time term swamp the named term of every preset (``cost``
  would buy a 200x speed-up at 4x the price).
- error: ``(1 - mean expected fidelity of the circuits) / ERROR_SCALE``: 1 = ten points of
  success probability lost, which we judge about as bad as doubling the time or the spend.
- USD: with a budget, ``total / maxCostUSD`` (1 = the whole budget); without one,
  ``log2((total + s) / (cheapest achievable total + s))`` (1 = about twice the cheapest plan),
  ``s`` being ``USD_SMOOTHING_FRACTION`` of the priciest plan's total, so that a free or
  near-free pool does not make every paid choice infinitely expensive (``s`` is added rather
  than used as a floor: no kink, and near-free choices still differ a little), and never
  under ``USD_NEGLIGIBLE``: when every plan costs fractions of a cent (a simulation pod
  against a free simulator backend) their ratio means nothing to a user, and must not
  outweigh hours of queue.

Totals count from the workflow's start: elapsed seconds and spent USD are inputs, and count
in both the figure and its reference.

``budget.maxCostUSD`` and ``budget.deadlineSeconds`` are hard constraints, checked on the
predicted totals so a choice is excluded BEFORE it breaches them: the deadline against the
P90 completion (P90 durations summed along the path: conservative, the P90 of the sum is
lower), the budget against spent + predicted USD. When no candidate keeps them the ranking
still lists the least-bad choices (smallest relative overshoot first) with a reason the
caller turns into a condition. Infeasible predictions (``feasible`` False, or a figure that
is not finite) are never ranked. Ties are broken by resource name.

Pure: no I/O, never raises on the input it is given.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, NamedTuple

from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    ObjectivePreset,
    ObjectiveSpec,
    SubtaskPhase,
)
from qorch.orchestrator.prediction import Prediction, repeated

# One unit of the error term: ten points of expected fidelity (see the module docstring).
ERROR_SCALE: Final = 0.1
# Completions under a second are "instant": the time term compares them as one second.
SECONDS_FLOOR: Final = 1.0
# Without a budget, this fraction of the priciest plan's total is added to both sides of the
# USD ratio: differences far below it (a thousandth) barely count.
USD_SMOOTHING_FRACTION: Final = 1e-3
# ... and at least this many USD: spends under a cent barely count, whatever their ratio.
USD_NEGLIGIBLE: Final = 0.01
# A classical step's duration when nothing measured is passed in: a pod start with the image
# present plus a short script.
DEFAULT_CLASSICAL_SECONDS: Final = 60.0
# Slack on the hard constraints against float noise (a microdollar, a microsecond).
_TOLERANCE: Final = 1e-6

Constraint = Literal["budget", "deadline"]


class CostWeights(NamedTuple):
    """Weights of the three normalised terms; they sum to 1."""

    time: float
    error: float
    usd: float


def normalise_weights(time: float, error: float, usd: float) -> CostWeights:
    """Weights scaled to sum to 1; negative or non-finite ones count as 0, and all-zero
    weights mean ``balanced`` (the API rejects them; pure code does not raise)."""
    clean = [w if math.isfinite(w) and w > 0 else 0.0 for w in (time, error, usd)]
    total = sum(clean)
    if total <= 0:
        return PRESETS[ObjectivePreset.BALANCED]
    return CostWeights(clean[0] / total, clean[1] / total, clean[2] / total)


# The named term counts 0.70, each other 0.15: about 4.7 times as much. A preset is a strong
# preference, not an absolute one: ``speed`` still will not pay any price for a trivial gain,
# and ``cost`` pays twice the money only for a ~25x (2^4.7) faster workflow. ``balanced``
# weighs the three equally, which the normalisation makes meaningful.
PRESETS: Final[Mapping[ObjectivePreset, CostWeights]] = MappingProxyType(
    {
        ObjectivePreset.SPEED: CostWeights(time=0.70, error=0.15, usd=0.15),
        ObjectivePreset.ACCURACY: CostWeights(time=0.15, error=0.70, usd=0.15),
        ObjectivePreset.COST: CostWeights(time=0.15, error=0.15, usd=0.70),
        ObjectivePreset.BALANCED: CostWeights(time=1 / 3, error=1 / 3, usd=1 / 3),
    }
)


def weights_for(objective: ObjectiveSpec) -> CostWeights:
    """The workflow's weights: explicit ``weights`` (normalised) override the preset."""
    if objective.weights is not None:
        w = objective.weights
        return normalise_weights(w.time, w.error, w.cost)
    return PRESETS[objective.preset]


@dataclass(frozen=True)
class Objective:
    """What the workflow asks for, and how far it has got: weights, hard constraints
    (``None``: none), seconds since the workflow started and USD spent so far."""

    weights: CostWeights = PRESETS[ObjectivePreset.BALANCED]
    max_usd: float | None = None
    deadline_seconds: float | None = None
    elapsed_seconds: float = 0.0
    spent_usd: float = 0.0

    @classmethod
    def from_spec(
        cls, spec: HybridWorkflowSpec, *, elapsed_seconds: float = 0.0, spent_usd: float = 0.0
    ) -> Objective:
        deadline = spec.budget.deadlineSeconds
        return cls(
            weights=weights_for(spec.objective),
            max_usd=spec.budget.maxCostUSD,
            deadline_seconds=None if deadline is None else float(deadline),
            elapsed_seconds=max(elapsed_seconds, 0.0),
            spent_usd=max(spent_usd, 0.0),
        )


# A loop in these phases runs its current attempt: its progress counts the batches sent.
_LOOPING: Final = (SubtaskPhase.LAUNCHING, SubtaskPhase.SCHEDULED, SubtaskPhase.RUNNING)


def batches_left(spec: HybridWorkflowSpec, status: HybridWorkflowStatus) -> dict[str, int]:
    """Each variational loop's batches still to run (``Step.batches``): the most it may
    send (``max_evaluations``) less those its current attempt sent; a loop waiting to
    start or to retry has them all before it."""
    sent = {
        s.name: s.progress.evaluations
        for s in status.subtasks
        if s.progress is not None and s.phase in _LOOPING
    }
    return {
        s.name: max(s.variational.max_evaluations - sent.get(s.name, 0), 1)
        for s in spec.subtasks
        if s.variational is not None
    }


class Step(NamedTuple):
    """One node of the DAG.

    ``seconds`` None: a subtask placed by this module (a circuit); its duration, USD and
    fidelity come from the prediction of its resource. A number: a step of fixed duration
    (a classical step: a default or a measured duration; a running step: what is left),
    costing ``usd``. Finished steps are simply left out: dependencies on names not in the
    graph count as satisfied.
    """

    name: str
    depends_on: tuple[str, ...] = ()
    seconds: float | None = None
    usd: float = 0.0
    # A variational loop: its prediction is for one batch, and it runs this many more, one
    # after another (each queued and billed again).
    batches: int = 1


@dataclass(frozen=True)
class Workflow:
    """The DAG to judge and the resources its subtasks may use (candidate names)."""

    steps: tuple[Step, ...]
    resources: tuple[str, ...]

    @classmethod
    def from_spec(
        cls,
        spec: HybridWorkflowSpec,
        *,
        classical_seconds: Mapping[str, float] | None = None,
        finished: Iterable[str] = (),
        batches: Mapping[str, int] | None = None,
    ) -> Workflow:
        """Circuit subtasks are placed by predictions; classical steps take their measured
        duration from ``classical_seconds``, else ``DEFAULT_CLASSICAL_SECONDS``; a
        variational loop runs ``batches`` of its predictions (``batches_left``)."""
        measured = classical_seconds or {}
        repeats = batches or {}
        done = set(finished)
        steps = tuple(
            Step(
                name=s.name,
                depends_on=tuple(s.dependsOn),
                seconds=(
                    None
                    if s.source is not None
                    else measured.get(s.name, DEFAULT_CLASSICAL_SECONDS)
                ),
                batches=max(repeats.get(s.name, 1), 1),
            )
            for s in spec.subtasks
            if s.name not in done
        )
        pools = [p.name for p in spec.resources.classicalPools]
        return cls(steps=steps, resources=(*spec.resources.quantumBackends, *pools))


class WorkflowEstimate(NamedTuple):
    """Predicted outcome of the workflow under one assignment, counted from its start.

    ``assumed``: subtasks with no usable assigned prediction, counted on their fastest
    feasible resource; ``unplaceable``: subtasks with no feasible resource at all, counted
    as taking no time and money (the workflow cannot finish as it stands).
    """

    completion_p50: float
    completion_p90: float
    usd: float
    error: float  # 1 - mean expected fidelity of the placed subtasks
    critical_path: tuple[str, ...]  # along P50 durations, first step first
    assumed: tuple[str, ...] = ()
    unplaceable: tuple[str, ...] = ()


class Term(NamedTuple):
    """One term of a score: the raw figure, its normalised value and its weight."""

    raw: float
    normalised: float
    weight: float

    @property
    def weighted(self) -> float:
        return self.weight * self.normalised


class CandidateScore(NamedTuple):
    """One resource for one subtask, the others held fixed: the workflow's figures with it.

    ``time.raw``: predicted completion (P50, seconds from the start); ``error.raw``:
    1 - mean fidelity; ``usd.raw``: total USD including what is spent. ``breach``: the
    relative overshoot of the constraints (0 when ``admissible``).
    """

    resource: str
    score: float
    time: Term
    error: Term
    usd: Term
    completion_p90: float
    admissible: bool
    violations: tuple[Constraint, ...]
    breach: float
    prediction: Prediction

    def describe(self) -> str:
        """The numbers behind the score, for an Event message."""
        text = (
            f"{self.resource}: score {self.score:.3f} = "
            f"time {self.time.weight:.2f}x{self.time.normalised:.3f} "
            f"(completion {self.time.raw:.0f}s P50, {self.completion_p90:.0f}s P90)"
            f" + error {self.error.weight:.2f}x{self.error.normalised:.3f} "
            f"(1-fidelity {self.error.raw:.3f})"
            f" + usd {self.usd.weight:.2f}x{self.usd.normalised:.3f} (${self.usd.raw:.2f})"
        )
        if self.violations:
            text += " breaks " + " and ".join(self.violations)
        return text


class Ranking(NamedTuple):
    """Every usable resource for one subtask, best first.

    Those that keep the budget and the deadline come first by score; then the rest by
    relative overshoot. ``unmet``: the constraints the best one breaks (none of the
    candidates keeps them all); ``reason`` says why in words, also when there is no
    candidate at all. ``infeasible``: resources whose prediction is unusable, never ranked.
    """

    subtask: str
    candidates: tuple[CandidateScore, ...]
    unmet: tuple[Constraint, ...] = ()
    reason: str = ""
    infeasible: tuple[str, ...] = ()

    @property
    def best(self) -> CandidateScore | None:
        return self.candidates[0] if self.candidates else None


def usable(p: Prediction | None) -> bool:
    """A prediction that may be chosen: feasible, with finite figures."""
    return (
        p is not None
        and p.feasible
        and math.isfinite(p.seconds_p50)
        and math.isfinite(p.seconds_p90)
        and math.isfinite(p.usd)
        and math.isfinite(p.fidelity)
    )


def _p50(p: Prediction) -> float:
    return max(p.seconds_p50, 0.0)


def _p90(p: Prediction) -> float:
    return max(p.seconds_p90, p.seconds_p50, 0.0)


def _usd(p: Prediction) -> float:
    return max(p.usd, 0.0)


def _fidelity(p: Prediction) -> float:
    return min(max(p.fidelity, 0.0), 1.0)


class WorkflowCost:
    """The cost function for one workflow, prepared once per decision pass.

    Builds the topological order, each subtask's usable predictions and the references the
    terms are normalised by (best completion, cheapest and priciest totals); ``estimate``
    and ``rank`` then cost O(steps + edges) each.
    """

    def __init__(
        self,
        workflow: Workflow,
        predictions: Mapping[tuple[str, str], Prediction],
        objective: Objective,
    ) -> None:
        self.objective = objective
        steps: dict[str, Step] = {}
        for s in workflow.steps:
            steps.setdefault(s.name, s)
        self._steps = steps
        self._order = _topological(steps)
        position = {n: i for i, n in enumerate(self._order)}
        # Back edges of a cycle (validation rejects cycles) are ignored.
        self._deps = {
            n: tuple(
                d for d in dict.fromkeys(steps[n].depends_on) if d in position and position[d] < i
            )
            for i, n in enumerate(self._order)
        }
        succs: dict[str, list[str]] = {n: [] for n in self._order}
        for n, deps in self._deps.items():
            for d in deps:
                succs[d].append(n)
        self._succs = {n: tuple(v) for n, v in succs.items()}

        resources = sorted(set(workflow.resources))
        # Loops: every prediction of theirs counts for the batches they have left.
        self._batches = {n: s.batches for n, s in steps.items() if s.batches > 1}
        # ... while a ranking hands back the caller's one-batch figures (a pass models a
        # backend's queue with them: a loop holds one batch there at a time).
        self._one_batch = {k: p for k, p in predictions.items() if k[0] in self._batches}
        if self._batches:
            predictions = {
                k: repeated(p, self._batches[k[0]]) if k[0] in self._batches else p
                for k, p in predictions.items()
            }
        self._options: dict[str, tuple[Prediction, ...]] = {}
        self._infeasible: dict[str, tuple[str, ...]] = {}
        self._by_resource: dict[str, dict[str, Prediction]] = {}
        self._fastest: dict[str, Prediction | None] = {}
        for n, step in steps.items():
            if step.seconds is not None:
                continue
            found = [(r, predictions.get((n, r))) for r in resources]
            options = tuple(p for _, p in found if p is not None and usable(p))
            self._options[n] = options
            self._by_resource[n] = {p.resource: p for p in options}
            self._infeasible[n] = tuple(r for r, p in found if p is not None and not usable(p))
            self._fastest[n] = min(options, key=lambda p: (_p50(p), p.resource), default=None)

        self._fixed_usd = objective.spent_usd + sum(
            max(s.usd, 0.0)
            for s in steps.values()
            if s.seconds is not None and math.isfinite(s.usd)
        )
        best = self._durations(self._fastest, _p50)
        self._best_completion = objective.elapsed_seconds + max(
            self._finish(best).values(), default=0.0
        )
        self._usd_min = self._fixed_usd + sum(
            min((_usd(p) for p in o), default=0.0) for o in self._options.values()
        )
        self._usd_max = self._fixed_usd + sum(
            max((_usd(p) for p in o), default=0.0) for o in self._options.values()
        )

    @property
    def best_completion(self) -> float:
        """The workflow's best achievable completion (P50, seconds from its start)."""
        return self._best_completion

    # -- the workflow under an assignment ------------------------------------------------

    def _whole(self, subtask: str, p: Prediction) -> Prediction:
        """A caller's (one-batch) figures for ``subtask``, as the whole of what it runs."""
        n = self._batches.get(subtask)
        return p if n is None else repeated(p, n)

    def _resolve(
        self, assignment: Mapping[str, str], placed: Mapping[str, Prediction] | None = None
    ) -> dict[str, Prediction | None]:
        chosen: dict[str, Prediction | None] = {}
        for n in self._options:
            wanted = assignment.get(n)
            match = self._by_resource[n].get(wanted) if wanted is not None else None
            if match is not None and placed:
                # The figures the caller placed it with (e.g. a queue wait adjusted for
                # what was placed before it), for a resource it may use.
                given = placed.get(n)
                if given is not None and given.resource == match.resource and usable(given):
                    match = self._whole(n, given)
            chosen[n] = match if match is not None else self._fastest[n]
        return chosen

    def _durations(
        self, chosen: Mapping[str, Prediction | None], quantile: Callable[[Prediction], float]
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in self._order:
            fixed = self._steps[n].seconds
            if fixed is not None:
                out[n] = max(fixed, 0.0) if math.isfinite(fixed) else 0.0
            else:
                p = chosen.get(n)
                out[n] = 0.0 if p is None else quantile(p)
        return out

    def _finish(self, durations: Mapping[str, float]) -> dict[str, float]:
        finish: dict[str, float] = {}
        for n in self._order:
            start = max((finish[d] for d in self._deps[n]), default=0.0)
            finish[n] = start + durations[n]
        return finish

    def _tails(self, durations: Mapping[str, float]) -> dict[str, float]:
        """Longest path from each step's end to the workflow's end."""
        tail: dict[str, float] = {}
        for n in reversed(self._order):
            tail[n] = max((durations[s] + tail[s] for s in self._succs[n]), default=0.0)
        return tail

    def _critical_path(self, finish: Mapping[str, float]) -> tuple[str, ...]:
        if not finish:
            return ()
        node = max(self._order, key=lambda n: finish[n])  # first of the latest in order
        path = [node]
        while self._deps[node]:
            node = max(self._deps[node], key=lambda d: finish[d])
            path.append(node)
        return tuple(reversed(path))

    def estimate(
        self, assignment: Mapping[str, str], *, placed: Mapping[str, Prediction] | None = None
    ) -> WorkflowEstimate:
        """The workflow's predicted completion (P50 and P90), total USD and error.

        ``placed``: per subtask, the prediction to count for its assigned resource instead
        of the stored one (same resource, other figures); ignored where it names another
        resource than ``assignment`` or is unusable.
        """
        chosen = self._resolve(assignment, placed)
        f50 = self._finish(self._durations(chosen, _p50))
        f90 = self._finish(self._durations(chosen, _p90))
        counted = [p for p in chosen.values() if p is not None]
        elapsed = self.objective.elapsed_seconds
        return WorkflowEstimate(
            completion_p50=elapsed + max(f50.values(), default=0.0),
            completion_p90=elapsed + max(f90.values(), default=0.0),
            usd=self._fixed_usd + sum(_usd(p) for p in counted),
            error=_error(sum(_fidelity(p) for p in counted), len(counted)),
            critical_path=self._critical_path(f50),
            assumed=tuple(
                n for n, p in chosen.items() if p is not None and assignment.get(n) != p.resource
            ),
            unplaceable=tuple(n for n, p in chosen.items() if p is None),
        )

    def upward_ranks(
        self, assignment: Mapping[str, str], *, placed: Mapping[str, Prediction] | None = None
    ) -> dict[str, float]:
        """HEFT's upward rank of every step: its P50 duration plus the longest P50 path
        after it to the workflow's end (seconds). A step with a long tail holds up more
        of the workflow; a decision pass places such steps first."""
        durations = self._durations(self._resolve(assignment, placed), _p50)
        tails = self._tails(durations)
        return {n: durations[n] + tails[n] for n in self._order}

    # -- scoring the candidates of one subtask -------------------------------------------

    @property
    def usd_range(self) -> tuple[float, float]:
        """The cheapest and the priciest plan's total USD (the money term's references)."""
        return self._usd_min, self._usd_max

    def rank(
        self,
        subtask: str,
        assignment: Mapping[str, str],
        *,
        candidates: Iterable[Prediction] | None = None,
        placed: Mapping[str, Prediction] | None = None,
    ) -> Ranking:
        """Score every usable resource for ``subtask``, the others held at ``assignment``.

        A candidate's completion is ``max(M0, start + d + tail)``: M0 the workflow's
        longest path with the subtask taking no time, ``start`` the longest path into it,
        ``tail`` the longest path out of it; so one pass serves every candidate.

        ``candidates``: score these predictions for ``subtask`` instead of the stored
        ones: other figures for resources it may use (a cluster pass adjusts queue waits
        for what it placed before, and adds the price of moving); those for a resource
        without a usable stored prediction are dropped, so an adjustment never makes an
        infeasible pair rankable. ``placed``: as for :meth:`estimate`, for the others.
        """
        if subtask not in self._options:
            return Ranking(
                subtask,
                (),
                reason=f"{subtask!r} is not a subtask placed by predictions "
                "(unknown, or a step of fixed duration)",
            )
        options = self._options[subtask]
        infeasible = self._infeasible[subtask]
        given: dict[str, Prediction] = {}
        if not options:
            return Ranking(
                subtask, (), reason=_no_resource(subtask, infeasible), infeasible=infeasible
            )
        if candidates is not None:
            allowed = self._by_resource[subtask]
            offered: dict[str, Prediction] = {}
            for p in candidates:
                if p.resource in allowed and usable(p):
                    offered.setdefault(p.resource, self._whole(subtask, p))
                    given.setdefault(p.resource, p)
            options = tuple(offered.values())
            if not options:
                return Ranking(
                    subtask,
                    (),
                    reason=f"none of the resources {subtask!r} may use is available now",
                    infeasible=infeasible,
                )

        chosen = self._resolve(assignment, placed)
        chosen[subtask] = None  # takes no time: M0, and its start, come out of one pass
        d50 = self._durations(chosen, _p50)
        d90 = self._durations(chosen, _p90)
        f50, f90 = self._finish(d50), self._finish(d90)
        m50, m90 = max(f50.values()), max(f90.values())
        head50, head90 = f50[subtask], f90[subtask]
        tail50, tail90 = self._tails(d50)[subtask], self._tails(d90)[subtask]
        others = [p for n, p in chosen.items() if p is not None and n != subtask]
        base_usd = self._fixed_usd + sum(_usd(p) for p in others)
        base_fidelity = sum(_fidelity(p) for p in others)

        elapsed = self.objective.elapsed_seconds
        scores = [
            self._score(
                p,
                completion_p50=elapsed + max(m50, head50 + _p50(p) + tail50),
                completion_p90=elapsed + max(m90, head90 + _p90(p) + tail90),
                usd=base_usd + _usd(p),
                error=_error(base_fidelity + _fidelity(p), len(others) + 1),
            )
            for p in options
        ]
        if subtask in self._batches:
            scores = [
                c._replace(
                    prediction=given.get(c.resource)
                    or self._one_batch.get((subtask, c.resource), c.prediction)
                )
                for c in scores
            ]
        scores.sort(key=lambda c: (not c.admissible, c.breach, c.score, c.resource))
        best = scores[0]
        if best.admissible:
            return Ranking(subtask, tuple(scores), infeasible=infeasible)
        return Ranking(
            subtask,
            tuple(scores),
            unmet=best.violations,
            reason=self._unmet_reason(subtask, scores),
            infeasible=infeasible,
        )

    def _score(
        self,
        p: Prediction,
        *,
        completion_p50: float,
        completion_p90: float,
        usd: float,
        error: float,
    ) -> CandidateScore:
        o = self.objective
        w = o.weights
        time = Term(
            completion_p50,
            max(
                math.log2(
                    max(completion_p50, SECONDS_FLOOR) / max(self._best_completion, SECONDS_FLOOR)
                ),
                0.0,
            ),
            w.time,
        )
        err = Term(error, error / ERROR_SCALE, w.error)
        money = Term(usd, self._usd_normalised(usd), w.usd)
        violations: list[Constraint] = []
        breach = 0.0
        if o.max_usd is not None and usd > o.max_usd + _TOLERANCE:
            violations.append("budget")
            breach += (usd - o.max_usd) / max(o.max_usd, _TOLERANCE)
        if o.deadline_seconds is not None and completion_p90 > o.deadline_seconds + _TOLERANCE:
            violations.append("deadline")
            breach += (completion_p90 - o.deadline_seconds) / max(o.deadline_seconds, _TOLERANCE)
        return CandidateScore(
            resource=p.resource,
            score=time.weighted + err.weighted + money.weighted,
            time=time,
            error=err,
            usd=money,
            completion_p90=completion_p90,
            admissible=not violations,
            violations=tuple(violations),
            breach=breach,
            prediction=p,
        )

    def _usd_normalised(self, usd: float) -> float:
        budget = self.objective.max_usd
        if budget is not None and budget > _TOLERANCE:  # a budget under a microdollar is none
            return max(usd, 0.0) / budget
        smoothing = max(USD_SMOOTHING_FRACTION * self._usd_max, USD_NEGLIGIBLE)
        return max(math.log2((max(usd, 0.0) + smoothing) / (self._usd_min + smoothing)), 0.0)

    def _unmet_reason(self, subtask: str, scores: Sequence[CandidateScore]) -> str:
        o = self.objective
        parts: list[str] = []
        if o.deadline_seconds is not None and all("deadline" in c.violations for c in scores):
            soonest = min(scores, key=lambda c: (c.completion_p90, c.resource))
            parts.append(
                f"no resource for {subtask!r} finishes the workflow by its deadline of "
                f"{o.deadline_seconds:.0f}s: the soonest ({soonest.resource}) predicts "
                f"{soonest.completion_p90:.0f}s after the start at P90 "
                f"({o.elapsed_seconds:.0f}s elapsed)"
            )
        if o.max_usd is not None and all("budget" in c.violations for c in scores):
            cheapest = min(scores, key=lambda c: (c.usd.raw, c.resource))
            parts.append(
                f"no resource for {subtask!r} keeps the workflow within its budget of "
                f"${o.max_usd:.2f}: the cheapest ({cheapest.resource}) predicts "
                f"${cheapest.usd.raw:.2f} in total (${o.spent_usd:.2f} spent)"
            )
        if not parts:
            parts.append(
                f"no resource for {subtask!r} keeps both the budget of ${o.max_usd or 0:.2f} "
                f"and the deadline of {o.deadline_seconds or 0:.0f}s"
            )
        return "; ".join(parts) + "; the least-bad choices are ranked first"


def _error(fidelity_sum: float, count: int) -> float:
    return 0.0 if count == 0 else min(max(1.0 - fidelity_sum / count, 0.0), 1.0)


def _no_resource(subtask: str, infeasible: Sequence[str]) -> str:
    if not infeasible:
        return f"no allowed resource has a prediction for {subtask!r}"
    return (
        f"no resource can run {subtask!r}: every prediction is infeasible ({', '.join(infeasible)})"
    )


def _topological(steps: Mapping[str, Step]) -> list[str]:
    """Kahn's order, ties in the given order; steps left in a cycle follow in that order."""
    indegree = {n: 0 for n in steps}
    children: dict[str, list[str]] = {n: [] for n in steps}
    for n, s in steps.items():
        for d in dict.fromkeys(s.depends_on):
            if d in steps and d != n:
                indegree[n] += 1
                children[d].append(n)
    ready = deque(n for n in steps if indegree[n] == 0)
    order: list[str] = []
    seen: set[str] = set()
    while ready:
        n = ready.popleft()
        order.append(n)
        seen.add(n)
        for c in children[n]:
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    order.extend(n for n in steps if n not in seen)
    return order


def estimate_workflow(
    workflow: Workflow,
    assignment: Mapping[str, str],
    predictions: Mapping[tuple[str, str], Prediction],
    objective: Objective | None = None,
) -> WorkflowEstimate:
    """One-off ``WorkflowCost(...).estimate(assignment)``."""
    return WorkflowCost(workflow, predictions, objective or Objective()).estimate(assignment)


def rank_candidates(
    workflow: Workflow,
    subtask: str,
    assignment: Mapping[str, str],
    predictions: Mapping[tuple[str, str], Prediction],
    objective: Objective,
) -> Ranking:
    """One-off ``WorkflowCost(...).rank(subtask, assignment)``."""
    return WorkflowCost(workflow, predictions, objective).rank(subtask, assignment)
