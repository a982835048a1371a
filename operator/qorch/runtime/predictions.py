"""The prediction pass as a cycle runs it. ``Predictions`` is what the runtime asks of it;
``InlinePredictions`` runs ``predict_workflow`` in the calling thread (the twin: no I/O, and
a thread hop per workflow and cycle would cost more than the pass). ``qorch run`` hands in
the operator's own ``PredictionService`` behind the same protocol (``qorch.local``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol

from qorch.orchestrator.plan import Plan
from qorch.orchestrator.snapshot import WorkflowSnapshot
from qorch.predictor import CircuitCache, Predictor
from qorch.predictor.workflow import (
    NewSuccesses,
    QueueObservations,
    placeable,
    predict_workflow,
)


class Predictions(Protocol):
    async def predict(
        self,
        snapshots: dict[str, WorkflowSnapshot],
        sources: Mapping[str, Mapping[str, str]],
        *,
        launched: bool = True,
    ) -> dict[str, WorkflowSnapshot]:
        """Each snapshot with the predictions of its placeable subtasks (``sources``: each
        workflow's circuit sources, by the snapshots' keys; ``launched`` False: only the
        work still to be placed, see ``placeable``)."""
        ...

    def record_outcomes(self, snapshot: WorkflowSnapshot, decided: Plan) -> None:
        """What the plan submitted, and the queue waits of what succeeded."""
        ...


class InlinePredictions:
    def __init__(
        self,
        predictor: Predictor,
        circuits: CircuitCache,
        *,
        recent_waits: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.predictor = predictor
        self.circuits = circuits
        # What the operator learns of the queues from its own jobs (waits, service times);
        # ``recent_waits`` seeds the waits (a device in service has served jobs before).
        self.queues = QueueObservations()
        for name, waits in (recent_waits or {}).items():
            for wait in waits:
                self.queues.waited(name, wait)
        self._new = NewSuccesses()

    async def predict(
        self,
        snapshots: dict[str, WorkflowSnapshot],
        sources: Mapping[str, Mapping[str, str]],
        *,
        launched: bool = True,
    ) -> dict[str, WorkflowSnapshot]:
        waits = self.queues.recent_waits()
        service = self.queues.service_seconds()
        out = {}
        for key, snap in snapshots.items():
            given = sources.get(key, {})
            subtasks = placeable(snap.spec, snap.status, given, launched=launched)
            if not subtasks:
                out[key] = snap
                continue
            done = predict_workflow(
                self.predictor,
                self.circuits,
                snap.spec,
                subtasks,
                given,
                list(snap.backends.values()),
                None,
                waits,
                service,
                snap.now,
            )
            out[key] = dataclasses.replace(snap, predictions=done.by_pair, predictor=done.report)
        return out

    def record_outcomes(self, snapshot: WorkflowSnapshot, decided: Plan) -> None:
        self.queues.note_plan(snapshot.backends, decided.actions)  # as the operator does
        for st in self._new.of(snapshot.namespace, snapshot.name, decided.status):
            self.queues.waited_for(st)
