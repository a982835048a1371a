"""The workflow object as the daemon writes it: the status (optimistic concurrency) and
Qorch's own finalizer (set only while gateway jobs exist that deletion must cancel).

Status writes carry the ``resourceVersion`` they were planned on, so a write planned on
stale state (a second leader during a takeover, a hand edit) is refused by the apiserver
instead of silently overwriting; the daemon then re-reads the live object and plans again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from kubernetes.client import ApiException, CustomObjectsApi

from qorch.api.meta import GROUP, VERSION
from qorch.api.workflow import HybridWorkflowStatus, ResourceKind
from qorch.orchestrator.lifecycle import ACTIVE

PLURAL = "hybridworkflows"
# Set while a subtask has a job at a gateway: deleting the workflow must cancel it (a
# queued QPU job costs money). Absent otherwise, so an operator that is down never
# blocks deleting a workflow (or its namespace) that has nothing outside Kubernetes.
GATEWAY_JOBS_FINALIZER = f"{GROUP}/cancel-gateway-jobs"


def has_gateway_jobs(status: HybridWorkflowStatus) -> bool:
    return any(
        st.phase in ACTIVE
        and st.jobId
        and st.placement is not None
        and st.placement.kind is ResourceKind.BACKEND
        for st in status.subtasks
    )


class WorkflowObject:
    """What one daemon knows of its workflow object, and the only way it writes it."""

    def __init__(self, custom: CustomObjectsApi, raw: dict[str, Any]) -> None:
        meta = raw["metadata"]
        self.custom = custom
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.status = HybridWorkflowStatus.model_validate(raw.get("status") or {})
        self.written: HybridWorkflowStatus | None = None
        self.resource_version: str = meta.get("resourceVersion", "")
        self.finalizers: list[str] = list(meta.get("finalizers") or [])
        # resourceVersions this daemon produced or already adopted: a watched body at one
        # of them is a lagging copy, not somebody else's write.
        self._known: deque[str] = deque([self.resource_version], maxlen=64)

    def observe(self, raw: dict[str, Any]) -> bool:
        """Take the watched body into account. True when somebody else wrote the status
        (then it is adopted: the next plan starts from what is stored, not from memory)."""
        meta = raw["metadata"]
        self.finalizers = list(meta.get("finalizers") or [])
        rv = meta.get("resourceVersion", "")
        if rv in self._known:
            return False
        stored = HybridWorkflowStatus.model_validate(raw.get("status") or {})
        self._known.append(rv)
        self.resource_version = rv
        if self.written is None or stored == self.written:
            return False
        self.status = stored
        self.written = None
        return True

    async def write_status(self, status: HybridWorkflowStatus) -> bool:
        """Write ``status`` if it changed. False when the stored status changed since it was
        read (somebody else wrote it): it is adopted and the caller plans again from it.
        A change of the object's metadata alone (Kopf's annotations, labels) is no
        conflict: the write is repeated at the new resourceVersion."""
        if status == self.written:
            return True
        planned_on = self.status
        for _ in range(5):
            body = {
                "metadata": {"resourceVersion": self.resource_version},
                "status": status.model_dump(mode="json"),
            }
            try:
                result = await asyncio.to_thread(
                    self.custom.patch_namespaced_custom_object_status,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    self.name,
                    body,
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await self.reread()
                if self.status != planned_on:
                    return False
                continue
            self._adopt_metadata(result)
            self.status = status
            self.written = status.model_copy(deep=True)
            return True
        return False

    async def _live(self) -> dict[str, Any]:
        live: dict[str, Any] = await asyncio.to_thread(
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            self.name,
        )
        return live

    async def reread(self) -> None:
        live = await self._live()
        self._adopt_metadata(live)
        self.status = HybridWorkflowStatus.model_validate(live.get("status") or {})
        self.written = self.status.model_copy(deep=True)

    async def hold_for_gateway_jobs(self, needed: bool) -> None:
        """Add Qorch's finalizer before a job is submitted; remove it once none is left."""
        present = GATEWAY_JOBS_FINALIZER in self.finalizers
        if needed == present:
            return
        for _ in range(3):
            if needed:
                wanted = [*self.finalizers, GATEWAY_JOBS_FINALIZER]
            else:
                wanted = [f for f in self.finalizers if f != GATEWAY_JOBS_FINALIZER]
            # ``test`` first: never clobber a finalizer somebody else added meanwhile (with
            # none yet, the object must be the version whose finalizers were read).
            guard = (
                {"op": "test", "path": "/metadata/finalizers", "value": self.finalizers}
                if self.finalizers
                else {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": self.resource_version,
                }
            )
            ops = [guard, {"op": "add", "path": "/metadata/finalizers", "value": wanted}]
            try:
                result = await asyncio.to_thread(
                    self.custom.patch_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    self.name,
                    ops,
                    _content_type="application/json-patch+json",
                )
            except ApiException as exc:
                if exc.status not in (409, 422):
                    raise
                # Only what the finalizer patch needs: the status is not looked at here,
                # so this version must not count as one whose status was seen.
                self._adopt_finalizers(await self._live())
                if (GATEWAY_JOBS_FINALIZER in self.finalizers) == needed:
                    return
                continue
            self._adopt_finalizers(result)
            return
        raise RuntimeError(f"could not update the finalizers of {self.namespace}/{self.name}")

    def _adopt_finalizers(self, obj: dict[str, Any]) -> None:
        """Take the finalizers of ``obj``; take its resourceVersion only if its status is
        the one this daemon wrote, so that a status somebody else wrote meanwhile makes
        the next status write conflict (and be re-planned) instead of overwriting it."""
        meta = obj.get("metadata") or {}
        self.finalizers = list(meta.get("finalizers") or [])
        stored = HybridWorkflowStatus.model_validate(obj.get("status") or {})
        if stored == self.status:
            self.resource_version = meta.get("resourceVersion", self.resource_version)

    def _adopt_metadata(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self.resource_version = meta.get("resourceVersion", self.resource_version)
        self.finalizers = list(meta.get("finalizers") or [])
        self._known.append(self.resource_version)
