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

An event on a Qorch pod wakes its workflow's daemon (``wake``) when it changes what the
workflow plans from (the pod's ``PodState``: phase, node, result, ...) or deletes the pod
(a deletion a relist found included); one that changes nothing of that (a condition, a
relist of the pod as it was) wakes nobody. The watch runs in a thread of its own (the
Kubernetes client blocks) and hands each event to the event loop. ``namespaces`` (the
operator's ``--namespace``) limits it to those namespaces, one list and watch each, as
Kopf's watches are limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import orjson
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
# A request that sends nothing for this long is given up (a connection that died without
# closing would otherwise block the watch for ever): (connect, read) seconds.
LIST_TIMEOUT = (10.0, 60.0)
WATCH_TIMEOUT = (10.0, WATCH_SECONDS + 30.0)

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
    def __init__(
        self,
        core: client.CoreV1Api,
        wake: Callable[[str, str], None],
        namespaces: Iterable[str] = (),
    ) -> None:
        self.core = core
        self.wake = wake
        # None: every namespace, one list and watch.
        self.scopes: list[str | None] = list(namespaces) or [None]
        self._unsynced = set(self.scopes)
        self._versions: dict[str | None, str] = {}  # the last resourceVersion seen per scope
        self.synced = asyncio.Event()  # the first list of every scope is in
        self._workflow: dict[PodKey, dict[str, PodState]] = {}  # (ns, label) -> by pod name
        self._workflow_of: dict[PodKey, PodKey] = {}  # pod -> (ns, label)
        self._owner: dict[PodKey, str] = {}  # pod -> the workflow name its events wake
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
        """One watch event (ADDED, MODIFIED, DELETED) or one listed pod (ADDED). A pod
        whose parts cannot be read keeps what was known of it (logged)."""
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        self.events += 1
        labels = meta.get("labels") or {}
        ours = labels.get(LABEL_MANAGED_BY) == "qorch" and LABEL_WORKFLOW in labels
        owner = self._owner.get(key)
        if ours:
            annotations = meta.get("annotations") or {}
            # A long name's label is shortened and hashed: the annotation has the name.
            owner = annotations.get(ANNOTATION_WORKFLOW_NAME) or labels[LABEL_WORKFLOW]
        group = self._workflow_of.get(key)
        known = self._workflow.get(group, {}).get(key[1]) if group is not None else None
        if kind == "DELETED":
            self._forget(key)
        else:
            try:  # read it all before anything is replaced
                usage = pod_usage(pod)
                state = pod_state(dict(pod)) if ours else None
                view = release_view(pod) if ours else None
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("pod %s/%s: cannot read it (%s); keeping what was known", *key, exc)
                return
            self._forget(key)
            self._remember(key, labels, usage, state, view, owner)
            if state == known:
                return  # nothing its workflow plans from changed
        if owner is not None:
            self.wake(key[0], owner)

    def _remember(
        self,
        key: PodKey,
        labels: Mapping[str, str],
        usage: PodUsage | None,
        state: PodState | None,
        view: dict[str, Any] | None,
        owner: str | None,
    ) -> None:
        if usage is not None:
            self._usage.setdefault(usage.node, {})[key] = usage
            self._node_of[key] = usage.node
        if state is None or owner is None:
            return
        group = (key[0], labels[LABEL_WORKFLOW])
        self._workflow.setdefault(group, {})[key[1]] = state
        self._workflow_of[key] = group
        self._owner[key] = owner
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
        self._owner.pop(key, None)

    def _apply_page(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            self.apply("ADDED", pod)

    def relisted(self, listed: set[PodKey], scope: str | None = None) -> None:
        """A fresh list of ``scope`` (a namespace; None: all) is in (``listed``: every pod
        it named): what it lacks was deleted meanwhile."""
        known = set(self._node_of) | set(self._workflow_of) | set(self._gated)
        for key in known - listed:
            if scope is None or key[0] == scope:
                self.apply("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})
        self._unsynced.discard(scope)
        if not self._unsynced:
            self.synced.set()

    # -- list and watch ------------------------------------------------------------------------
    async def run(self) -> None:
        """List and watch until cancelled (the operator's cleanup)."""
        loop = asyncio.get_running_loop()
        for scope in self.scopes:
            threading.Thread(
                target=self._list_and_watch,
                args=(loop, scope),
                name=f"qorch-pod-watch-{scope or 'all'}",
                daemon=True,
            ).start()
        try:
            await asyncio.Event().wait()  # forever; the thread feeds the loop
        finally:
            self._halt.set()

    def _list_and_watch(self, loop: asyncio.AbstractEventLoop, scope: str | None) -> None:
        version: str | None = None
        while not self._halt.is_set():
            try:
                if version is None:
                    version = self._list(loop, scope)
                version = self._watch(loop, scope, version)
            except client.ApiException as exc:
                if exc.status == 410:  # too old: list again
                    version = None
                    continue
                # Until the first list is in, no workflow is planned: say so loudly.
                level = logging.WARNING if self.synced.is_set() else logging.ERROR
                log.log(level, "pods (%s): %s %s; retrying", scope or "all", exc.status, exc.reason)
                self._halt.wait(RETRY_SECONDS)
            except Exception as exc:  # a dropped or refused connection: watch on from there
                version = self._versions.get(scope, version) if version is not None else None
                level = logging.WARNING if self.synced.is_set() else logging.ERROR
                log.log(level, "pods (%s): %s; retrying", scope or "all", exc)
                self._halt.wait(RETRY_SECONDS)

    def _list(self, loop: asyncio.AbstractEventLoop, scope: str | None) -> str:
        """Every pod, a page at a time (the pages of one list are one consistent snapshot);
        each page is applied and dropped, so a big cluster's pods are never all in memory
        as documents."""
        listed: set[PodKey] = set()
        token: str | None = None
        version = ""
        while True:
            response = self._pods(
                scope,
                limit=LIST_PAGE,
                _continue=token,
                _request_timeout=LIST_TIMEOUT,
                _preload_content=False,
            )
            try:
                doc = orjson.loads(response.data)
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
        self._on_loop(loop, partial(self.relisted, listed, scope))
        self._versions[scope] = version
        return version

    def _pods(self, scope: str | None, **kwargs: Any) -> Any:
        if scope is None:
            return self.core.list_pod_for_all_namespaces(**kwargs)
        return self.core.list_namespaced_pod(scope, **kwargs)

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

    def _watch(self, loop: asyncio.AbstractEventLoop, scope: str | None, version: str) -> str:
        response = self._pods(
            scope,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=WATCH_TIMEOUT,
            _preload_content=False,
        )
        try:
            for line in iter_resp_lines(response):
                if self._halt.is_set():
                    break
                if not line:
                    continue
                event = orjson.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise client.ApiException(
                        status=int(obj.get("code") or 500), reason=obj.get("message")
                    )
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                self._versions[scope] = version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    loop.call_soon_threadsafe(self.apply, kind, obj)
        finally:
            with contextlib.suppress(Exception):
                response.close()
                response.release_conn()
        return version
