"""The operator's own informer for pods: ONE list and watch of every pod in the cluster,
kept as the three views the decisions read, instead of Kopf indexes on pods.

Why not Kopf's: Kopf holds each object of an indexed resource back until every object of
every indexed resource has been indexed once, with one toggle per object in one condition
that every waiting object re-checks on each change (quadratic in the objects). An operator
(re)started in a cluster that already runs 10,000 pods sat at one core for minutes before
it planned anything (``bench/scale.py --big --kill-at 0.5``). Here the first list fills
the views at once, ``synced`` is set, and every later event is a dictionary update, with
no per-object task, handler machinery or body copy.

The views:
- ``workflow_pods(namespace, label)``: the ``PodState`` of each pod Qorch made for a
  workflow (its ``qorch.io/workflow`` label);
- ``gated_view(namespace, name)``: a gated Qorch pod's parts its release patch is computed
  from (``podspec.release_view``), so a release needs no read;
- ``usage_by_node``: the requests of every bound, unfinished pod by node (anyone's: they
  all take room), what the cluster pass computes free capacity from.

Every event on a Qorch pod wakes its workflow's daemon (``wake``). The watch runs in a
thread of its own (the Kubernetes client blocks) and hands each event to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from qorch.operator.nodes import pod_usage
from qorch.operator.podspec import (
    ANNOTATION_WORKFLOW_NAME,
    LABEL_MANAGED_BY,
    LABEL_WORKFLOW,
    pod_state,
    release_view,
)
from qorch.orchestrator.capacity import PodUsage
from qorch.orchestrator.snapshot import PodState

log = logging.getLogger(__name__)

# A watch request ends after this long and is opened again from the last version seen.
WATCH_SECONDS = 60
# Pods per page of the list (what the apiserver pages by; kubectl's default).
LIST_PAGE = 500
# After a failed list or watch, wait this long before the next try.
RETRY_SECONDS = 2.0

PodKey = tuple[str, str]  # (namespace, name)


class _UsageByNode(Mapping[str, Iterable[PodUsage]]):
    """``usage_by_node`` as the cluster pass reads it: node -> the usages of its pods."""

    def __init__(self, by_node: dict[str, dict[PodKey, PodUsage]]) -> None:
        self._by_node = by_node

    def __getitem__(self, node: str) -> Iterable[PodUsage]:
        return list(self._by_node[node].values())

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_node))

    def __len__(self) -> int:
        return len(self._by_node)


class PodCache:
    def __init__(self, core: client.CoreV1Api, wake: Callable[[str, str], None]) -> None:
        self.core = core
        self.wake = wake
        self.synced = asyncio.Event()  # the first list is in
        self._workflow: dict[PodKey, dict[str, PodState]] = {}  # (ns, label) -> by pod name
        self._workflow_of: dict[PodKey, PodKey] = {}  # pod -> (ns, label)
        self._gated: dict[PodKey, dict[str, Any]] = {}
        self._usage: dict[str, dict[PodKey, PodUsage]] = {}  # node -> by pod
        self._node_of: dict[PodKey, str] = {}
        self.usage_by_node: Mapping[str, Iterable[PodUsage]] = _UsageByNode(self._usage)
        self._halt = threading.Event()
        self.events = 0  # pod events applied (a metric of the watch's work)

    # -- the views ---------------------------------------------------------------------------
    def workflow_pods(self, namespace: str, label: str) -> list[PodState]:
        return list(self._workflow.get((namespace, label), {}).values())

    def gated_view(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._gated.get((namespace, name))

    # -- keeping them --------------------------------------------------------------------------
    def apply(self, kind: str, pod: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) or one listed pod (ADDED)."""
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        self.events += 1
        self._forget(key)
        labels = meta.get("labels") or {}
        ours = labels.get(LABEL_MANAGED_BY) == "qorch" and LABEL_WORKFLOW in labels
        if kind != "DELETED":
            self._remember(key, pod, labels, ours)
        if ours:
            annotations = meta.get("annotations") or {}
            # A long name's label is shortened and hashed: the annotation has the name.
            self.wake(key[0], annotations.get(ANNOTATION_WORKFLOW_NAME) or labels[LABEL_WORKFLOW])

    def _remember(
        self, key: PodKey, pod: Mapping[str, Any], labels: Mapping[str, str], ours: bool
    ) -> None:
        usage = pod_usage(pod)
        if usage is not None:
            self._usage.setdefault(usage.node, {})[key] = usage
            self._node_of[key] = usage.node
        if not ours:
            return
        group = (key[0], labels[LABEL_WORKFLOW])
        self._workflow.setdefault(group, {})[key[1]] = pod_state(dict(pod))
        self._workflow_of[key] = group
        view = release_view(pod)
        if view is not None:
            self._gated[key] = view

    def _forget(self, key: PodKey) -> None:
        node = self._node_of.pop(key, None)
        if node is not None:
            pods = self._usage.get(node, {})
            pods.pop(key, None)
            if not pods:
                self._usage.pop(node, None)
        group = self._workflow_of.pop(key, None)
        if group is not None:
            pods_of = self._workflow.get(group, {})
            pods_of.pop(key[1], None)
            if not pods_of:
                self._workflow.pop(group, None)
        self._gated.pop(key, None)

    def _apply_page(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            self.apply("ADDED", pod)

    def relisted(self, listed: set[PodKey]) -> None:
        """A fresh list is in (``listed``: every pod it named): what it lacks was deleted
        meanwhile."""
        known = set(self._node_of) | set(self._workflow_of) | set(self._gated)
        for key in known - listed:
            self.apply("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})
        self.synced.set()

    # -- list and watch ------------------------------------------------------------------------
    async def run(self) -> None:
        """List and watch until cancelled (the operator's cleanup)."""
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._list_and_watch, args=(loop,), name="qorch-pod-watch", daemon=True
        )
        thread.start()
        try:
            await asyncio.Event().wait()  # forever; the thread feeds the loop
        finally:
            self._halt.set()

    def _list_and_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        version: str | None = None
        while not self._halt.is_set():
            try:
                if version is None:
                    version = self._list(loop)
                version = self._watch(loop, version)
            except client.ApiException as exc:
                if exc.status == 410:  # too old: list again
                    version = None
                    continue
                log.warning("pod watch: %s %s; retrying", exc.status, exc.reason)
                self._halt.wait(RETRY_SECONDS)
            except Exception as exc:  # a dropped connection, a refused one: try again
                log.warning("pod watch: %s; retrying", exc)
                version = None
                self._halt.wait(RETRY_SECONDS)

    def _list(self, loop: asyncio.AbstractEventLoop) -> str:
        """Every pod, a page at a time (the pages of one list are one consistent snapshot);
        each page is applied and dropped, so a big cluster's pods are never all in memory
        as documents."""
        listed: set[PodKey] = set()
        token: str | None = None
        version = ""
        while True:
            response = self.core.list_pod_for_all_namespaces(
                limit=LIST_PAGE, _continue=token, _preload_content=False
            )
            try:
                doc = json.loads(response.data)
            finally:
                response.release_conn()
            meta = doc.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            pods = doc.get("items") or []
            for pod in pods:
                m = pod.get("metadata") or {}
                listed.add((m.get("namespace") or "", m.get("name") or ""))
            self._on_loop(loop, partial(self._apply_page, pods))
            token = meta.get("continue") or None
            if token is None:
                break
        self._on_loop(loop, lambda: self.relisted(listed))
        return version

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the event loop and wait for it."""
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait()

    def _watch(self, loop: asyncio.AbstractEventLoop, version: str) -> str:
        response = self.core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
        )
        try:
            for line in iter_resp_lines(response):
                if self._halt.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise client.ApiException(
                        status=int(obj.get("code") or 500), reason=obj.get("message")
                    )
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    loop.call_soon_threadsafe(self.apply, kind, obj)
        finally:
            with contextlib.suppress(Exception):
                response.close()
                response.release_conn()
        return version
