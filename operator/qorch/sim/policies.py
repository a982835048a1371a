"""The policies the twin replays side by side. Each runs the operator's ``plan``; they
differ in where ``plan`` is told to place work and whether anything moves:

- ``static`` (FCFS): each subtask goes, when it is ready, to the backend with the best
  predicted fidelity at that moment (the best-calibrated device a researcher picks), first
  come first served there, never moved. Circuits no backend holds are simulated (the rule).
- ``least-busy``: the operator's rule policy (Qiskit's ``least_busy``: the shortest queue
  that fits), never moved.
- ``qonductor``: a batch round every 120 s over the ready work, NSGA-II over mean wait and
  mean error (``qorch.sim.baselines``); what a round assigns is never moved.
- ``qorch``: the operator as shipped with the cluster pass: predictor, cost function,
  ``decide_cluster`` every cycle, moves during the run; ``qorch-static`` is the same with
  moves switched off (``reallocation.enabled: false``).
- ``qorch-fidelity``: ``qorch`` with every workflow weighing fidelity first (error 0.98,
  time 0.02): Qorch at the fidelity of the baselines that always wait for the best device.
- ``oracle``: Qorch's decisions on perfect predictions (the real wait ahead, the real
  fidelity on the day the job will start): the bound better predictions could reach with
  the same cost function, placing once. Greedy over time like Qorch and never moving, so
  not an optimum: Qorch's moves, which react to what the predictions missed, can beat it.
"""

from __future__ import annotations

import dataclasses
import math

from qorch.api.workflow import (
    ObjectiveSpec,
    Placement,
    ResourceKind,
    SubtaskPhase,
    SubtaskSpec,
    Weights,
)
from qorch.orchestrator.cluster import Stage
from qorch.orchestrator.cluster_view import stage_of
from qorch.orchestrator.placement import (
    Infeasible,
    PlacementPolicy,
    RulePolicy,
)
from qorch.orchestrator.prediction import QPU, Prediction
from qorch.orchestrator.snapshot import WorkflowSnapshot
from qorch.predictor.analytic import AnalyticConfig
from qorch.runtime.policy import ClusterPass, CyclePolicy, CycleView
from qorch.sim.baselines import BatchBackend, BatchJob, batch_assign
from qorch.sim.policy_names import POLICIES
from qorch.sim.twin import Twin

QONDUCTOR_ROUND_SECONDS = 120.0
DEFAULT_JOB_SECONDS = AnalyticConfig().service_seconds_per_job
QONDUCTOR_ROUND_MAX_JOBS = 100


def _key(snapshot: WorkflowSnapshot) -> str:
    return f"{snapshot.namespace}/{snapshot.name}"


class _Unchanged:
    """Snapshots go to ``plan`` as built: no pass."""

    pass_seconds: float | None = None
    weighs_launched = False  # what it placed stays: only new work is predicted
    objective: ObjectiveSpec | None = None

    def decide(self, view: CycleView, twin: Twin) -> dict[str, WorkflowSnapshot]:
        return view.snapshots


class LeastBusy(_Unchanged):
    name = "least-busy"
    reallocation = False

    def placement_policy(self) -> PlacementPolicy:
        return RulePolicy()


class _BestFidelity:
    """At first placement: the feasible backend with the best predicted fidelity."""

    def __init__(self) -> None:
        self.rule = RulePolicy()
        self.chosen: dict[tuple[str, str], Placement] = {}

    def place(self, subtask: SubtaskSpec, snapshot: WorkflowSnapshot) -> Placement | Infeasible:
        key = (_key(snapshot), subtask.name)
        if key in self.chosen:
            return self.chosen[key]
        if subtask.classical is not None:
            return self.rule.place(subtask, snapshot)
        options = [
            p
            for (name, resource), p in snapshot.predictions.items()
            if name == subtask.name
            and p.feasible
            and p.kind == QPU
            and snapshot.backends.get(resource) is not None
            and snapshot.backends[resource].healthy
        ]
        if not options:
            return self.rule.place(subtask, snapshot)
        best = max(options, key=lambda p: (p.fidelity, -p.seconds_p50, p.resource))
        placement = Placement(kind=ResourceKind.BACKEND, name=best.resource)
        self.chosen[key] = placement
        return placement


class Static(_Unchanged):
    name = "static"
    reallocation = False

    def __init__(self) -> None:
        self.policy = _BestFidelity()

    def placement_policy(self) -> PlacementPolicy:
        return self.policy


class Qorch(ClusterPass):
    """The operator with its cluster pass, as ``QORCH_CLUSTER_PASS`` runs it (and
    ``qorch run``)."""

    def __init__(self, pass_seconds: float = 60.0) -> None:
        super().__init__(pass_seconds)


class QorchNoMoves(Qorch):
    """Qorch's placement (predictor, cost function, cluster pass) with moves switched off
    (``reallocation.enabled: false``): what re-allocation is measured against."""

    name = "qorch-static"
    reallocation = False


class QorchFidelityFirst(Qorch):
    """Qorch with every workflow asking for fidelity first: explicit weights error 0.98,
    time 0.02, cost 0, so one point of expected fidelity outweighs a completion about 30
    times later (0.1 error unit x 49 against log2 of the time ratio). The operating point
    to set beside the baselines that keep the best calibration whatever the wait (static,
    the Qonductor-style rounds): at the same fidelity, how long does each take?"""

    name = "qorch-fidelity"
    objective: ObjectiveSpec | None = ObjectiveSpec(
        weights=Weights(time=0.02, error=0.98, cost=0.0)
    )


class _Assigned:
    """The batch rounds' assignments; unassigned circuit work waits for the next round."""

    def __init__(self) -> None:
        self.rule = RulePolicy()
        self.assigned: dict[tuple[str, str], Placement] = {}

    def place(self, subtask: SubtaskSpec, snapshot: WorkflowSnapshot) -> Placement | Infeasible:
        chosen = self.assigned.get((_key(snapshot), subtask.name))
        if chosen is not None:
            return chosen
        if subtask.classical is not None or not _fits_a_backend(subtask, snapshot):
            return self.rule.place(subtask, snapshot)
        return Infeasible("waiting for the next scheduling round")


def _fits_a_backend(subtask: SubtaskSpec, snapshot: WorkflowSnapshot) -> bool:
    return any(
        p.feasible and p.kind == QPU
        for (name, _), p in snapshot.predictions.items()
        if name == subtask.name
    )


class Qonductor:
    """A batch round every ``QONDUCTOR_ROUND_SECONDS`` over the ready circuit work."""

    name = "qonductor"
    reallocation = False
    pass_seconds: float | None = QONDUCTOR_ROUND_SECONDS
    weighs_launched = False  # a round assigns ready work only, and never moves it
    objective: ObjectiveSpec | None = None

    def __init__(self, seed: int = 0) -> None:
        self.policy = _Assigned()
        self.seed = seed
        self.rounds = 0

    def placement_policy(self) -> PlacementPolicy:
        return self.policy

    def decide(self, view: CycleView, twin: Twin) -> dict[str, WorkflowSnapshot]:
        if not view.tick:
            return view.snapshots
        jobs: list[BatchJob] = []
        for key, snap in view.snapshots.items():
            known = {s.name: s for s in snap.status.subtasks}
            for sub in snap.spec.subtasks:
                if sub.classical is not None or (key, sub.name) in self.policy.assigned:
                    continue
                st = known.get(sub.name)
                if st is not None and st.phase not in (SubtaskPhase.PENDING, SubtaskPhase.RETRYING):
                    continue
                if st is not None and stage_of(snap, st, sub.dependsOn) is not Stage.READY:
                    continue
                if st is None and sub.dependsOn:
                    continue
                options = {
                    r: p
                    for (name, r), p in snap.predictions.items()
                    if name == sub.name
                    and p.feasible
                    and p.kind == QPU
                    and snap.backends[r].healthy
                }
                if options:
                    jobs.append(
                        BatchJob(
                            f"{key}|{sub.name}",
                            {r: p.run_seconds for r, p in options.items()},
                            {r: p.fidelity for r, p in options.items()},
                        )
                    )
        jobs = jobs[:QONDUCTOR_ROUND_MAX_JOBS]
        if jobs:
            # What the operator knows too: the queue lengths of this cycle's view, and the
            # service time learned from the jobs sent so far (else the analytic figure).
            seen = next(iter(view.snapshots.values())).backends
            learned = twin.queues.service_seconds()
            backends = [
                BatchBackend(name, b.queue_length, learned.get(name, DEFAULT_JOB_SECONDS))
                for name, b in seen.items()
            ]
            decision = batch_assign(jobs, backends, seed=self.seed + self.rounds)
            self.rounds += 1
            for job, backend in decision.assignment.items():
                key, subtask = job.split("|", 1)
                self.policy.assigned[(key, subtask)] = Placement(
                    kind=ResourceKind.BACKEND, name=backend
                )
        return view.snapshots


class Oracle(Qorch):
    """Qorch's own decisions (cost function, cluster pass) on PERFECT predictions: each
    pair's queue wait is the wait a job submitted now will really get (the replayed queue
    ahead of it and Qorch's jobs already there), its run time the device's, its fidelity
    the fidelity model's on the calibration of the day it will really start on. With the
    future known there is nothing to move. The bound shows what better predictions could
    still win."""

    name = "oracle"
    reallocation = False

    def decide(self, view: CycleView, twin: Twin) -> dict[str, WorkflowSnapshot]:
        known = {
            key: dataclasses.replace(snap, predictions=_perfect(snap, twin))
            for key, snap in view.snapshots.items()
        }
        return super().decide(dataclasses.replace(view, snapshots=known), twin)


def _perfect(snap: WorkflowSnapshot, twin: Twin) -> dict[tuple[str, str], Prediction]:
    wf = twin.active.get(_key(snap))
    specs = {s.name: s for s in snap.spec.subtasks}
    out = {}
    for (name, resource), p in snap.predictions.items():
        sub = specs.get(name)
        if not p.feasible or sub is None or wf is None:
            out[(name, resource)] = p
            continue
        truth = wf.truths.get(name)
        if p.kind == QPU:
            backend = twin.backends[resource]
            # The wait a job sent now will really get: the others ahead of it and
            # Qorch's own jobs already queued there (first come first served).
            wait = backend.sim.start_if_submitted(twin.now) - twin.now
            shots = (
                sub.circuit.shots
                if sub.circuit
                else (sub.variational.shots if sub.variational else 1024)
            )
            run = twin.expected_qpu_seconds(shots)
            fidelity = twin.fidelity_at(backend, wf.sources.get(name), shots, twin.now + wait)
            fidelity = p.fidelity if math.isnan(fidelity) else fidelity
            out[(name, resource)] = p._replace(
                seconds_p10=wait + run,
                seconds_p50=wait + run,
                seconds_p90=wait + run,
                queue_seconds_p10=wait,
                queue_seconds_p50=wait,
                queue_seconds_p90=wait,
                run_seconds=run,
                fidelity=fidelity,
                usd=run * backend.info.price_per_qpu_second,
            )
        else:
            pool = twin.pools.get(resource)
            run = twin.expected_simulation_seconds(truth, pool.gpu if pool else False)
            out[(name, resource)] = p._replace(
                seconds_p10=run, seconds_p50=run, seconds_p90=run, run_seconds=run
            )
    return out


def make_policy(name: str, *, seed: int = 0, pass_seconds: float = 60.0) -> CyclePolicy:
    """A fresh policy by its name in ``POLICIES``."""
    if name == "static":
        return Static()
    if name == "least-busy":
        return LeastBusy()
    if name == "qonductor":
        return Qonductor(seed)
    if name == "qorch":
        return Qorch(pass_seconds)
    if name == "oracle":
        return Oracle(pass_seconds)
    if name == "qorch-static":
        return QorchNoMoves(pass_seconds)
    if name == "qorch-fidelity":
        return QorchFidelityFirst(pass_seconds)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
