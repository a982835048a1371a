"""The cluster-wide decision pass, run by the operator that leads (only it drives workflows).

Every workflow daemon publishes its latest snapshot (predictions included) and waits for a
pass that started after it did; one pass decides for all of them at once
(``orchestrator.cluster.decide``), so placements see each other. Daemons woken together
(twenty workflows applied at once) are served by one pass: a pass waits ``debounce_seconds``
for the others to publish before it starts. A daemon that gets no decision in
``timeout_seconds`` plans with the static rule instead (and says so in its log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

from qorch.metrics import operator_metrics as metrics
from qorch.orchestrator.capacity import NodeInfo, PodUsage
from qorch.orchestrator.cluster import ClusterDecision
from qorch.orchestrator.cluster_view import decide_cluster
from qorch.orchestrator.snapshot import WorkflowSnapshot

log = logging.getLogger(__name__)


class ClusterLoop:
    def __init__(self, *, debounce_seconds: float = 0.05, timeout_seconds: float = 5.0) -> None:
        self.debounce_seconds = debounce_seconds
        self.timeout_seconds = timeout_seconds
        self._published: dict[str, WorkflowSnapshot] = {}
        self._asked: dict[str, int] = {}  # key -> the pass number its publish needs
        self._passes = 0  # passes finished
        self._started = 0  # passes started
        self._decision = ClusterDecision()
        self._wanted = asyncio.Event()
        self._done = asyncio.Condition()
        # Live views of the nodes (Kopf's index) and of the pods bound to them (the pod
        # cache), by node (None: not given).
        self._nodes: Mapping[str, Iterable[NodeInfo]] | None = None
        self._pods: Mapping[str, Iterable[PodUsage]] | None = None

    def watch_capacity(
        self, nodes: Mapping[str, Iterable[NodeInfo]], pods: Mapping[str, Iterable[PodUsage]]
    ) -> None:
        """Where the pass reads each pool's free capacity from (the views by node)."""
        self._nodes, self._pods = nodes, pods

    @property
    def decision(self) -> ClusterDecision:
        return self._decision

    def publish(self, key: str, snapshot: WorkflowSnapshot) -> None:
        """The workflow's latest state; the next pass that starts includes it."""
        self._published[key] = snapshot
        self._asked[key] = self._started + 1
        self._wanted.set()

    def withdraw(self, key: str) -> None:
        """The workflow finished or its daemon stopped: no longer part of a pass."""
        self._published.pop(key, None)
        self._asked.pop(key, None)

    async def decision_after_publish(self, key: str) -> ClusterDecision | None:
        """The decision of a pass that started after ``key`` last published; None when none
        came within ``timeout_seconds`` (the caller falls back to the static rule)."""
        needed = self._asked.get(key, self._started + 1)
        try:
            async with self._done:
                await asyncio.wait_for(
                    self._done.wait_for(lambda: self._passes >= needed), self.timeout_seconds
                )
        except TimeoutError:
            log.warning("no cluster pass for %s within %.1fs", key, self.timeout_seconds)
            return None
        return self._decision

    async def run(self) -> None:
        """Decide whenever a workflow published, until cancelled. A failed pass is logged
        and the daemons waiting on it fall back to the static rule (they time out)."""
        while True:
            await self._wanted.wait()
            await asyncio.sleep(self.debounce_seconds)
            self._wanted.clear()
            self._started += 1
            snaps = dict(self._published)
            # Read on the event loop, where the views are updated; decided in a thread.
            nodes = [n for store in self._nodes.values() for n in store] if self._nodes else None
            pods = [p for store in self._pods.values() for p in store] if self._pods else []
            started = time.perf_counter()
            try:
                decision = await asyncio.to_thread(decide_cluster, snaps, nodes, pods)
            except Exception:
                log.exception("cluster pass failed; workflows fall back to the static rule")
                continue
            metrics.CLUSTER_PASS_SECONDS.observe(time.perf_counter() - started)
            log.debug(
                "cluster pass over %d workflow(s): %d placed, %d moved, %d held",
                len(snaps),
                len(decision.places),
                len(decision.moves),
                len(decision.waits),
            )
            for move in decision.moves:
                log.info("move %s/%s: %s", move.workflow, move.subtask, move.reason)
            async with self._done:
                self._decision = decision
                self._passes = self._started
                self._done.notify_all()
