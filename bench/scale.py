"""Placement at scale (issue 16): does Qorch place work as fast as kube-scheduler alone?

    nice .venv/bin/python bench/scale.py [--quick] [--shapes 1000x1,100x10,10x100] [--big]
        [--json PATH] [--profile PATH] [--no-background] [--trace-hour-seconds S]
        [--cluster-pass] [--concurrency N] [--timeout S] [--workdir DIR] [--kill-at SHARE]

ONE run starts ONE test control plane (``devenv/controlplane.py``: etcd,
kube-apiserver, kube-scheduler, kube-controller-manager, KWOK, the CRDs of ``crds/``) with
20 KWOK CPU nodes (pool ``cpu``, 16 cores, 64 GiB each) and 4 KWOK GPU nodes (pool
``gpu``, 8 GPUs, 128 cores, 1 TiB each). Each shape WxK (W HybridWorkflows of K
independent classical subtasks, N = W*K pods) is measured twice, each time in a fresh
namespace, the namespace deleted (and waited for, pods gone) before the next phase:

1. kube-scheduler alone: N plain pods, created with at most ``--concurrency`` (16) requests
   in flight. Each is the pod Qorch makes for such a subtask, built by Qorch's own
   ``qorch.operator.podspec.build_pod`` and put in the state Qorch's release leaves it
   (no scheduling gate, the cpu pool's nodeSelector and pool annotations; no owner
   reference, whose owner would not exist): busybox, 500m CPU, 512Mi. Each carries
   ``pod-complete.stage.kwok.x-k8s.io/delay: 1s`` (``devenv/kwok-stages.yaml``), so
   KWOK marks it Succeeded 1 s after it runs. No operator runs in this phase.
2. through Qorch: a real ``qorch operator`` (``devenv/operator.py`` with the chart's
   settings, ``CHART_ENV``, as the chart's least-privilege ServiceAccount, ``devenv/rbac.py``),
   started fresh for each shape and stopped after it; W workflows server-side applied with
   at most ``--concurrency`` in flight, each subtask ``classical: {image: busybox,
   annotations: {<delay>: 1s}}`` with the default classicalPools (a CPU-only classical
   step goes to the first CPU pool, ``cpu``).

Both phases are timed from the first create/apply to the N-th pod bound (spec.nodeName
set) and to all N pods Succeeded (Qorch: and every workflow Succeeded), all seen through
watches (raw HTTPS watch streams, not list polling). The ratio Qorch / scheduler alone is
the target (<= 1.25). Also: the operator's CPU seconds per pod (its process and children,
psutil, over the Qorch phase) and peak RSS (sampled every 0.2 s from operator start to
the end of the phase); API requests per placed pod, from the apiserver's own ``/metrics``
(``apiserver_request_total``, difference over the phase; everything the cluster did:
our creates/applies, scheduler binds, KWOK status writes, the operator; both phases); the
HybridWorkflow status writes per workflow (resource hybridworkflows, subresource status,
verbs PATCH/UPDATE/APPLY); pods per subtask (more than one: a duplicate) and the largest
status against ``qorch.orchestrator.plan.STATUS_BUDGET_BYTES``; and the CPU seconds of every
process (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, KWOK, the operator,
this client) over each phase, a second table: on a small machine both phases are bound by
the cores they share, so the ratio follows the extra CPU the Qorch phase costs the cluster.

Operator settings are the chart's (``charts/qorch/values.yaml``, ``templates/deployment.
yaml``): QORCH_RETRY_BACKOFF_SECONDS=10, QORCH_METRICS_REFRESH_SECONDS=15,
QORCH_MODEL_REFRESH_SECONDS=30, QORCH_CLUSTER_PASS=off (``--cluster-pass``: on), no
Prometheus, the repository's models; and what the chart leaves to the operator's defaults
(which the test harness shortens) back at those defaults: QORCH_RESYNC_SECONDS=10,
QORCH_PEERING_LIFETIME_SECONDS=60, QORCH_SOURCE_WAIT_SECONDS=120,
QORCH_GATEWAY_UNKNOWN_GRACE_SECONDS=60.

Background load: during every measurement (both phases, the same replay from the same
start) the production GPU-cluster trace (``qorch.traces.gpu_cluster.read_gpu_pods``, read
from ``../shared/data``, never copied) is replayed on the gpu pool from a background thread
(at most 4 creates in flight): the trace's pods that request GPUs and were scheduled,
from ``--trace-offset-hours`` (default 2800 h, inside the trace's busy part) on, one trace
hour every ``--trace-hour-seconds`` (default 1 s: ~6 pods/s). Each requests its trace CPU
and memory and ``num_gpu`` whole GPUs (a fractional GPU, ``gpu_milli`` < 1000, counts as
one whole GPU); pods that request no GPU are skipped, as are pods already running when the
window opens. Each runs its trace lifetime (deletion - scheduled) scaled the same way,
at least 50 ms, at most ``--bg-max-seconds`` (20). ``--no-background`` turns it off. Its
own requests, binds and status writes are in the API request counts of both phases.

Shapes (``--shapes``, W x K): default ``1000x1,100x10,10x100`` (~15-20 min on a 2-core
machine); ``1000x10`` (10,000 pods) only with ``--big`` or named in ``--shapes``.
``--quick``: ``50x1,5x10``.

``--kill-at SHARE`` (0.5: half): in each Qorch phase, once that share of the pods
Succeeded, the operator is SIGKILLed and a new one started at once with the same settings
(what a Deployment does when its pod dies): printed are when it was killed, how long the
new one took to start (its startup handler done) and to take over (the first workflow
status write seen 0.5 s or more after the kill), and, as always, subtasks with more than
one pod (anything done twice). The operator's CPU and peak RSS cover both processes.

``--profile PATH``: the operator's main thread (its event loop) runs under cProfile for
exactly each Qorch phase (a ``sitecustomize`` hook on the operator's PYTHONPATH turns it
on with SIGUSR1 and dumps it with SIGUSR2); one file per shape (``PATH`` with the shape
before the suffix), the top 25 entries by cumulative time printed. The profiler slows the
operator: its timings are not comparable with a run without it.

The figures move with the machine's load (2 cores here; the control plane, the operator
and this client share them): the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))

import psutil  # type: ignore[import-untyped]  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from devenv import controlplane as cp_mod  # noqa: E402
from devenv import operator as operator_mod  # noqa: E402
from devenv.nodes import NodeSpec  # noqa: E402
from devenv.operator import CHART_ENV  # noqa: E402
from devenv.rbac import least_privilege_kubeconfig  # noqa: E402
from qorch.api.workflow import ClassicalSpec, SubtaskSpec, default_pools  # noqa: E402
from qorch.operator.podspec import (  # noqa: E402
    LABEL_MANAGED_BY,
    LABEL_SUBTASK,
    LABEL_WORKFLOW,
    POOL_ANNOTATION,
    POOL_MOVES_ANNOTATION,
    build_pod,
)
from qorch.orchestrator.plan import STATUS_BUDGET_BYTES  # noqa: E402
from qorch.traces import default_traces_dir  # noqa: E402
from qorch.traces.gpu_cluster import read_gpu_pods  # noqa: E402

DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
IMAGE = "busybox"
GROUP_PATH = "/apis/qorch.io/v1alpha1"
DEFAULT_SHAPES = "1000x1,100x10,10x100"
QUICK_SHAPES = "50x1,5x10"
BIG_SHAPE = "1000x10"
CPU_NODES = 20
GPU_NODES = 4
GPUS_PER_NODE = 8
NODES: tuple[NodeSpec, ...] = tuple(
    NodeSpec(f"kwok-cpu-{i}", "cpu") for i in range(CPU_NODES)
) + tuple(
    NodeSpec(f"kwok-gpu-{i}", "gpu", cpu="128", memory="1024Gi", gpus=GPUS_PER_NODE)
    for i in range(GPU_NODES)
)
STATUS_VERBS = ("PATCH", "UPDATE", "APPLY")
PROFILE_HOOK = '''"""bench/scale.py: cProfile of the main thread: SIGUSR1 on, SIGUSR2 dump."""
import cProfile
import os
import signal

_PATH = os.environ.get("QORCH_BENCH_PROFILE")
if _PATH:
    _prof = cProfile.Profile()

    def _on(signum, frame):
        _prof.enable()

    def _off(signum, frame):
        _prof.disable()
        _prof.dump_stats(_PATH)

    signal.signal(signal.SIGUSR1, _on)
    signal.signal(signal.SIGUSR2, _off)
'''


# ---- the apiserver, over plain HTTPS with the admin client certificate -------------------


class Api:
    """A small, cheap client: one keep-alive connection per thread, JSON in and out."""

    def __init__(self, plane: cp_mod.ControlPlane) -> None:
        url = urlsplit(plane.server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.tls = plane.admin_tls()
        self._local = threading.local()

    def connect(self, timeout: float = 60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.tls, timeout=timeout)

    def _conn(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(3):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
                continue
            if raw[:1] in (b"{", b"["):
                return resp.status, json.loads(raw)
            return resp.status, raw.decode(errors="replace")
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        status, doc = self.call(method, path, body, content_type or "application/json")
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {str(doc)[:500]}")
        return doc

    def request_counts(self) -> Counter[tuple[str, str, str]]:
        """``apiserver_request_total`` summed by (verb, resource, subresource)."""
        status, text = self.call("GET", "/metrics")
        if status != 200 or not isinstance(text, str):
            raise RuntimeError(f"/metrics: {status}")
        counts: Counter[tuple[str, str, str]] = Counter()
        for line in text.splitlines():
            match = METRIC_LINE.match(line)
            if match is None:
                continue
            labels = dict(LABEL_PAIR.findall(match.group(1)))
            key = (
                labels.get("verb", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
            )
            counts[key] += int(float(match.group(2)))
        return counts


METRIC_LINE = re.compile(r"^apiserver_request_total\{([^}]*)\}\s+(\S+)")
LABEL_PAIR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_delta(
    before: Counter[tuple[str, str, str]], after: Counter[tuple[str, str, str]]
) -> Counter[tuple[str, str, str]]:
    delta: Counter[tuple[str, str, str]] = Counter()
    for key, value in after.items():
        if value - before.get(key, 0) > 0:
            delta[key] = value - before.get(key, 0)
    return delta


class Watch(threading.Thread):
    """A list, then a watch stream from its resourceVersion, re-opened when the server
    ends it; each event goes to ``on_event(type, object, monotonic time, bytes)``."""

    def __init__(self, api: Api, path: str, on_event: Callable[[str, Any, float, int], None]):
        super().__init__(daemon=True, name=f"watch {path}")
        self.api = api
        self.path = path
        self.on_event = on_event
        self.ready = threading.Event()
        self.stopping = False
        self.error: str | None = None
        self._conn: http.client.HTTPSConnection | None = None

    def _list(self) -> str:
        doc = self.api.ok("GET", self.path)
        now = time.monotonic()
        for item in doc.get("items") or []:
            self.on_event("ADDED", item, now, 0)
        return str(doc["metadata"]["resourceVersion"])

    def run(self) -> None:
        try:
            rv = self._list()
        except Exception as exc:
            self.error = str(exc)
            self.ready.set()
            return
        self.ready.set()
        while not self.stopping:
            conn = self.api.connect(timeout=300)
            self._conn = conn
            query = urlencode(
                {
                    "watch": "1",
                    "resourceVersion": rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "240",
                }
            )
            try:
                conn.request("GET", f"{self.path}?{query}", headers={"Accept": "application/json"})
                resp = conn.getresponse()
                if resp.status != 200:
                    resp.read()
                    rv = self._list()
                    continue
                while not self.stopping:
                    line = resp.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # too old: list again
                            rv = self._list()
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self.on_event(kind, obj, time.monotonic(), len(line))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self.stopping:
                    break
                self.error = str(exc)
                time.sleep(0.2)
            finally:
                conn.close()

    def stop(self) -> None:
        self.stopping = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self.join(10)


@dataclass
class PodTracker:
    """Every pod of a namespace: when it was first seen, bound, done; pods per subtask."""

    first_seen: dict[str, float] = field(default_factory=dict)
    bound: dict[str, float] = field(default_factory=dict)
    succeeded: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    subtask_of: dict[str, tuple[str, str]] = field(default_factory=dict)
    events: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_event(self, kind: str, obj: Any, now: float, _size: int) -> None:
        if kind == "DELETED":
            return
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        labels = meta.get("labels") or {}
        with self.cond:
            self.events += 1
            if name not in self.first_seen:
                self.first_seen[name] = now
                self.subtask_of[name] = (
                    labels.get(LABEL_WORKFLOW, ""),
                    labels.get(LABEL_SUBTASK, name),
                )
            if (obj.get("spec") or {}).get("nodeName") and name not in self.bound:
                self.bound[name] = now
            phase = (obj.get("status") or {}).get("phase")
            if phase == "Succeeded" and name not in self.succeeded:
                self.succeeded[name] = now
            elif phase == "Failed":
                self.failed.add(name)
            self.cond.notify_all()

    def first_per_subtask(self, times: dict[str, float]) -> dict[tuple[str, str], float]:
        """The earliest time per subtask (a duplicate pod does not count twice)."""
        out: dict[tuple[str, str], float] = {}
        for name, at in times.items():
            key = self.subtask_of.get(name, ("", name))
            out[key] = min(at, out.get(key, at))
        return out

    def pods_per_subtask(self) -> Counter[tuple[str, str]]:
        return Counter(self.subtask_of.values())


@dataclass
class WorkflowTracker:
    """Every HybridWorkflow of a namespace: phase, when it ended, its largest status."""

    phase: dict[str, str] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    max_event_bytes: int = 0
    events: int = 0
    event_times: list[float] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_event(self, kind: str, obj: Any, now: float, size: int) -> None:
        if kind == "DELETED":
            return
        name = (obj.get("metadata") or {}).get("name", "")
        phase = (obj.get("status") or {}).get("phase") or "-"
        with self.cond:
            self.events += 1
            self.event_times.append(now)
            self.max_event_bytes = max(self.max_event_bytes, size)
            self.phase[name] = phase
            self.last[name] = obj
            if phase in ("Succeeded", "Failed") and name not in self.done:
                self.done[name] = now
            self.cond.notify_all()


def wait_until(cond: threading.Condition, check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with cond:
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(min(left, 1.0))
    return True


# ---- namespaces -----------------------------------------------------------------------------


def create_namespace(api: Api, name: str) -> None:
    api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    # Pods are refused until the namespace's default ServiceAccount exists.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, _ = api.call("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
        if status == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"no default ServiceAccount in {name}")


def delete_namespaces(api: Api, names: Iterable[str], timeout: float = 600.0) -> float:
    """Delete them and wait until they (and so their pods) are gone; the seconds it took."""
    started = time.monotonic()
    names = list(names)
    for name in names:
        api.call("DELETE", f"/api/v1/namespaces/{name}")
    for name in names:
        while time.monotonic() - started < timeout:
            status, _ = api.call("GET", f"/api/v1/namespaces/{name}")
            if status == 404:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"namespace {name} still there after {timeout:.0f}s")
    return time.monotonic() - started


def run_bounded(concurrency: int, items: Sequence[Any], fn: Callable[[Any], None]) -> None:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in pool.map(fn, items):
            pass


# ---- the workload -------------------------------------------------------------------------------


def baseline_pod(namespace: str, index: int) -> dict[str, Any]:
    """The pod Qorch makes for a classical subtask (``build_pod``), as its release leaves it."""
    pool = default_pools()[0]  # the cpu pool, where a CPU-only classical step goes
    subtask = SubtaskSpec(
        name=f"s{index:05d}", classical=ClassicalSpec(image=IMAGE, annotations={DELAY: "1s"})
    )
    workflow = {"metadata": {"name": "baseline", "namespace": namespace, "uid": "none"}}
    pod = build_pod(
        workflow=workflow,
        subtask=subtask,
        attempt=1,
        pod_name=f"p-{index:05d}",
        worker_image=CHART_ENV["QORCH_WORKER_IMAGE"],
        pool=pool,
    )
    meta, spec = pod["metadata"], pod["spec"]
    del meta["ownerReferences"]  # its owner would not exist: the GC would delete it
    meta["labels"][LABEL_MANAGED_BY] = "qorch-bench"  # no operator takes it for its own
    meta["annotations"].update({POOL_ANNOTATION: pool.name, POOL_MOVES_ANNOTATION: "0"})
    del spec["schedulingGates"]
    spec["nodeSelector"] = dict(pool.nodeSelector)
    if pool.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in pool.tolerations]
    return pod


def workflow_manifest(name: str, subtasks: int) -> dict[str, Any]:
    return {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {"name": name},
        "spec": {
            "subtasks": [
                {
                    "name": f"s{j:03d}",
                    "classical": {"image": IMAGE, "annotations": {DELAY: "1s"}},
                }
                for j in range(subtasks)
            ]
        },
    }


@dataclass(frozen=True)
class BackgroundPod:
    name: str
    at: float  # seconds after the measurement's start
    gpus: int
    cpu_milli: int
    memory_mib: int
    seconds: float


def background_plan(
    offset_hours: float, hour_seconds: float, max_seconds: float, horizon: float
) -> list[BackgroundPod]:
    """The trace's GPU pods from the offset on, time compressed (see the module's doc)."""
    trace = read_gpu_pods()
    end_of_trace = max((p.deletion_time or p.creation_time) for p in trace)
    start = offset_hours * 3600.0
    scale = hour_seconds / 3600.0
    chosen = sorted(
        (
            p
            for p in trace
            if p.num_gpu >= 1 and p.scheduled_time is not None and p.creation_time >= start
        ),
        key=lambda p: (p.creation_time, p.name),
    )
    plan: list[BackgroundPod] = []
    for p in chosen:
        at = (p.creation_time - start) * scale
        if at > horizon:
            break
        assert p.scheduled_time is not None
        lifetime = ((p.deletion_time or end_of_trace) - p.scheduled_time) * scale
        plan.append(
            BackgroundPod(
                name=p.name,
                at=at,
                gpus=p.num_gpu,
                cpu_milli=p.cpu_milli,
                memory_mib=p.memory_mib,
                seconds=min(max(lifetime, 0.05), max_seconds),
            )
        )
    return plan


def background_manifest(pod: BackgroundPod) -> dict[str, Any]:
    requests = {"nvidia.com/gpu": str(pod.gpus)}
    if pod.cpu_milli:
        requests["cpu"] = f"{pod.cpu_milli}m"
    if pod.memory_mib:
        requests["memory"] = f"{pod.memory_mib}Mi"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "labels": {"app.kubernetes.io/managed-by": "qorch-bench-trace"},
            "annotations": {DELAY: f"{round(pod.seconds * 1000)}ms"},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "nodeSelector": {"qorch.io/pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "containers": [
                {
                    "name": "job",
                    "image": IMAGE,
                    "resources": {
                        "requests": requests,
                        "limits": {"nvidia.com/gpu": str(pod.gpus)},
                    },
                }
            ],
        },
    }


class Background:
    """Replays the plan into a namespace from a thread, at most 4 creates in flight."""

    def __init__(self, api: Api, namespace: str, plan: list[BackgroundPod]) -> None:
        self.api = api
        self.namespace = namespace
        self.plan = plan
        self.created = 0
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4)
        self._thread = threading.Thread(target=self._run, daemon=True, name="background")
        self._start = 0.0

    def start(self, t0: float) -> None:
        self._start = t0
        if self.plan:
            self._thread.start()

    def _create(self, pod: BackgroundPod) -> None:
        if self._stop.is_set():
            return
        try:
            status, _ = self.api.call(
                "POST", f"/api/v1/namespaces/{self.namespace}/pods", background_manifest(pod)
            )
        except (OSError, http.client.HTTPException):
            status = 0
        with self._lock:
            if status in (201, 409):
                self.created += 1
            else:
                self.failed += 1

    def _run(self) -> None:
        for pod in self.plan:
            wait = self._start + pod.at - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            if self._stop.is_set():
                return
            self._pool.submit(self._create, pod)

    def stop(self) -> int:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        return self.created


class OperatorSampler(threading.Thread):
    """Peak RSS of the operator and its children, sampled every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True, name="sampler")
        self.proc = psutil.Process(pid)
        self.period = period
        self.peak_rss = 0
        self._halt = threading.Event()

    def cpu_seconds(self) -> float:
        try:
            t = self.proc.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
            return float(total)
        except psutil.Error:
            return float("nan")

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = self.proc.memory_info().rss
                for child in self.proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
                self.peak_rss = max(self.peak_rss, rss)
            except psutil.Error:
                return
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def process_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) of each named process so far, its children included
    except for this process (whose children are the control plane and the operator)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            if pid == os.getpid():
                out[name] = t.user + t.system
                continue
            total = t.user + t.system + t.children_user + t.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
            out[name] = total
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 2) for k in after if k in before}


def plane_pids(plane: cp_mod.ControlPlane) -> dict[str, int]:
    pids = {name: comp.pid for name, comp in plane.components.items()}
    pids["bench client"] = os.getpid()
    return pids


# ---- one measurement --------------------------------------------------------------------------


@dataclass
class Phase:
    """One phase of one shape; times in seconds from the first create/apply."""

    pods: int
    complete: bool = False
    submitted_s: float | None = None  # the last create (pods) or apply (workflows) answered
    all_created_s: float | None = None
    all_bound_s: float | None = None
    all_succeeded_s: float | None = None
    workflows_succeeded_s: float | None = None
    bound_p50_s: float | None = None  # a pod's first sight to bound
    bound_p95_s: float | None = None
    api_requests: int = 0
    api_requests_per_pod: float = 0.0
    api_breakdown: dict[str, int] = field(default_factory=dict)
    status_writes: int = 0
    status_writes_per_workflow: float | None = None
    background_pods: int = 0
    background_failed: int = 0
    pods_seen: int = 0
    duplicate_subtasks: int = 0
    failed_pods: int = 0
    workflows: dict[str, int] = field(default_factory=dict)  # phase -> count
    max_status_bytes: int = 0
    max_event_bytes: int = 0
    operator_cpu_s: float | None = None
    operator_cpu_ms_per_pod: float | None = None
    operator_peak_rss_mib: float | None = None
    operator_warnings: dict[str, int] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)
    namespace_cleanup_s: float | None = None
    profile: str | None = None
    # CPU seconds of every process over the phase: where the machine's cores went.
    cpu_s_by_process: dict[str, float] = field(default_factory=dict)
    # --kill-at: the operator SIGKILLed once this share of the pods succeeded, a new one
    # started at once (as a Deployment's replacement pod); seconds from the kill.
    killed_at_s: float | None = None  # from the first apply
    killed_at_pods: int | None = None  # pods succeeded when it was killed
    restarted_s: float | None = None  # the new operator's startup handler done
    takeover_s: float | None = None  # its first workflow status write


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _times(tracker: PodTracker, t0: float, n: int, phase: Phase) -> None:
    """All-created / all-bound / all-succeeded: when the n-th distinct subtask got there."""

    def nth(times: dict[str, float]) -> float | None:
        firsts = sorted(tracker.first_per_subtask(times).values())
        return round(firsts[n - 1] - t0, 3) if len(firsts) >= n else None

    phase.all_created_s = nth(tracker.first_seen)
    phase.all_bound_s = nth(tracker.bound)
    phase.all_succeeded_s = nth(tracker.succeeded)
    waits = [tracker.bound[p] - tracker.first_seen[p] for p in tracker.bound]
    phase.bound_p50_s = _round(_pct(waits, 0.5))
    phase.bound_p95_s = _round(_pct(waits, 0.95))
    phase.pods_seen = len(tracker.first_seen)
    phase.duplicate_subtasks = sum(1 for c in tracker.pods_per_subtask().values() if c > 1)
    phase.failed_pods = len(tracker.failed)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _api(phase: Phase, delta: Counter[tuple[str, str, str]], workflows: int) -> None:
    phase.api_requests = sum(delta.values())
    phase.api_requests_per_pod = round(phase.api_requests / max(phase.pods, 1), 2)
    phase.api_breakdown = {
        " ".join(p for p in key if p): value for key, value in delta.most_common()
    }
    phase.status_writes = sum(
        v for (verb, res, sub), v in delta.items()
        if res == "hybridworkflows" and sub == "status" and verb in STATUS_VERBS
    )  # fmt: skip
    if workflows:
        phase.status_writes_per_workflow = round(phase.status_writes / workflows, 2)


def measure_scheduler(
    api: Api,
    plane: cp_mod.ControlPlane,
    args: argparse.Namespace,
    tag: str,
    n: int,
    plan: list[BackgroundPod],
) -> Phase:
    ns, bg_ns = f"base-{tag}", f"bg-base-{tag}"
    create_namespace(api, ns)
    create_namespace(api, bg_ns)
    manifests = [baseline_pod(ns, i) for i in range(n)]
    tracker = PodTracker()
    watch = Watch(api, f"/api/v1/namespaces/{ns}/pods", tracker.on_event)
    watch.start()
    watch.ready.wait(30)
    background = Background(api, bg_ns, plan)
    phase = Phase(pods=n)
    pids = plane_pids(plane)
    before = api.request_counts()
    cpu_before = process_cpu(pids)
    t0 = time.monotonic()
    background.start(t0)

    def create(pod: dict[str, Any]) -> None:
        status, doc = api.call("POST", f"/api/v1/namespaces/{ns}/pods", pod)
        if status not in (201, 409):
            raise RuntimeError(f"create pod: {status} {str(doc)[:300]}")

    run_bounded(args.concurrency, manifests, create)
    phase.submitted_s = round(time.monotonic() - t0, 3)
    phase.complete = wait_until(
        tracker.cond, lambda: len(tracker.succeeded) + len(tracker.failed) >= n, args.timeout
    )
    after = api.request_counts()
    phase.cpu_s_by_process = cpu_delta(cpu_before, process_cpu(pids))
    phase.background_pods = background.stop()
    phase.background_failed = background.failed
    watch.stop()
    _times(tracker, t0, n, phase)
    _api(phase, request_delta(before, after), 0)
    if not phase.complete:
        phase.stuck.append(
            f"{n - len(tracker.succeeded)} of {n} pods not Succeeded after {args.timeout:.0f}s "
            f"({len(tracker.bound)} bound, {len(tracker.failed)} failed)"
        )
    phase.namespace_cleanup_s = round(delete_namespaces(api, [ns, bg_ns]), 1)
    return phase


def profile_path(base: str | None, tag: str) -> Path | None:
    if not base:
        return None
    path = Path(base).resolve()
    return path.with_name(f"{path.stem}-{tag}{path.suffix or '.prof'}")


def measure_qorch(
    api: Api,
    plane: cp_mod.ControlPlane,
    args: argparse.Namespace,
    tag: str,
    w: int,
    k: int,
    plan: list[BackgroundPod],
    kubeconfig: Path,
    hook_dir: Path,
) -> Phase:
    n = w * k
    ns, bg_ns = f"qorch-{tag}", f"bg-qorch-{tag}"
    log_path = args.workdir / f"operator-{tag}.log"
    prof = profile_path(args.profile, tag)
    env: dict[str, str] = {"QORCH_PROMETHEUS_URL": ""}
    env["QORCH_CLUSTER_PASS"] = "on" if args.cluster_pass else "off"
    if prof is not None:
        paths = [str(hook_dir), os.environ.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env["QORCH_BENCH_PROFILE"] = str(prof)
    op = operator_mod.start(plane, log_path, extra_env=env, kubeconfig=kubeconfig, settings="chart")
    phase = Phase(pods=n)
    sampler = OperatorSampler(op.process.pid)
    sampler.start()
    killed_samplers: list[tuple[float, int]] = []  # (CPU seconds, peak RSS) of killed ones
    try:
        _wait_started(op)
        create_namespace(api, ns)
        create_namespace(api, bg_ns)
        pods = PodTracker()
        flows = WorkflowTracker()
        watches = [
            Watch(api, f"/api/v1/namespaces/{ns}/pods", pods.on_event),
            Watch(api, f"{GROUP_PATH}/namespaces/{ns}/hybridworkflows", flows.on_event),
        ]
        for watch in watches:
            watch.start()
            watch.ready.wait(30)
        manifests = [workflow_manifest(f"wf-{i:04d}", k) for i in range(w)]
        background = Background(api, bg_ns, plan)
        log_offset = log_path.stat().st_size
        pids = {**plane_pids(plane), "operator": op.process.pid}
        before = api.request_counts()
        cpu_before = process_cpu(pids)
        cpu0 = sampler.cpu_seconds()
        if prof is not None:
            op.process.send_signal(signal.SIGUSR1)
        t0 = time.monotonic()
        background.start(t0)

        def apply(manifest: dict[str, Any]) -> None:
            name = manifest["metadata"]["name"]
            query = urlencode({"fieldManager": "qorch-bench", "force": "true"})
            path = f"{GROUP_PATH}/namespaces/{ns}/hybridworkflows/{name}?{query}"
            status, doc = api.call("PATCH", path, manifest, "application/apply-patch+yaml")
            if status not in (200, 201):
                raise RuntimeError(f"apply {name}: {status} {str(doc)[:300]}")

        run_bounded(args.concurrency, manifests, apply)
        phase.submitted_s = round(time.monotonic() - t0, 3)
        if args.kill_at is not None:
            killed = sampler  # stopped at the kill: its peak is final after the call
            op, sampler, cpu_killed = _kill_and_restart(
                op, sampler, cpu0, pods, flows, phase, args, t0, n,
                lambda: operator_mod.start(
                    plane, log_path, extra_env=env, kubeconfig=kubeconfig, settings="chart"
                ),
            )  # fmt: skip
            killed_samplers.append((cpu_killed, killed.peak_rss))
            cpu0 = 0.0  # the new process's own, from its start
            # The process table's operator row: the killed one's share plus the new one's.
            pids["operator"] = op.process.pid
            cpu_before["operator"] = -cpu_killed

        def finished() -> bool:
            return len(flows.done) >= w

        phase.complete = wait_until(flows.cond, finished, args.timeout)
        # Pods may be seen Succeeded a moment after their workflow says so (two watches).
        wait_until(pods.cond, lambda: len(pods.first_per_subtask(pods.succeeded)) >= n, 10)
        t_end = time.monotonic()
        cpu1 = sampler.cpu_seconds()
        phase.cpu_s_by_process = cpu_delta(cpu_before, process_cpu(pids))
        after = api.request_counts()
        if prof is not None:
            op.process.send_signal(signal.SIGUSR2)
        phase.background_pods = background.stop()
        phase.background_failed = background.failed
        for watch in watches:
            watch.stop()
        _times(pods, t0, n, phase)
        done = sorted(flows.done.values())
        phase.workflows_succeeded_s = round(done[w - 1] - t0, 3) if len(done) >= w else None
        _api(phase, request_delta(before, after), w)
        cpu_total = cpu1 - cpu0 + sum(cpu for cpu, _ in killed_samplers)
        phase.operator_cpu_s = round(cpu_total, 2)
        phase.operator_cpu_ms_per_pod = round(1000 * cpu_total / n, 2)
        phase.workflows = dict(Counter(flows.phase.values()))
        phase.max_event_bytes = flows.max_event_bytes
        phase.max_status_bytes = max(
            (
                len(json.dumps(o.get("status") or {}, separators=(",", ":")))
                for o in flows.last.values()
            ),
            default=0,
        )
        phase.operator_warnings = _log_warnings(log_path, log_offset)
        if not phase.complete or any(p != "Succeeded" for p in flows.phase.values()):
            phase.stuck = _stuck_report(flows, w, t_end - t0, log_path, log_offset)
        if prof is not None:
            time.sleep(1.0)  # the dump runs in the operator's signal handler
            phase.profile = str(prof) if prof.exists() else None
    finally:
        sampler.stop()
        peak = max([sampler.peak_rss, *(rss for _, rss in killed_samplers)])
        phase.operator_peak_rss_mib = round(peak / 2**20, 1)
        op.stop()
    phase.namespace_cleanup_s = round(delete_namespaces(api, [ns, bg_ns]), 1)
    return phase


def _kill_and_restart(
    op: operator_mod.OperatorProcess,
    sampler: OperatorSampler,
    cpu0: float,
    pods: PodTracker,
    flows: WorkflowTracker,
    phase: Phase,
    args: argparse.Namespace,
    t0: float,
    n: int,
    start: Callable[[], operator_mod.OperatorProcess],
) -> tuple[operator_mod.OperatorProcess, OperatorSampler, float]:
    """Once ``args.kill_at`` of the pods succeeded: SIGKILL the operator, start a new one
    at once, and time its takeover (its first workflow status write). Returns the new
    process, its sampler, and the killed one's CPU seconds over the phase."""
    target = max(1, round(args.kill_at * n))
    wait_until(
        pods.cond, lambda: len(pods.first_per_subtask(pods.succeeded)) >= target, args.timeout
    )
    cpu_killed = sampler.cpu_seconds() - cpu0
    with pods.cond:
        phase.killed_at_pods = len(pods.first_per_subtask(pods.succeeded))
    op.kill()
    killed = time.monotonic()
    sampler.stop()
    phase.killed_at_s = round(killed - t0, 3)
    offset = op.log_path.stat().st_size  # the new one appends to the same log
    new = start()
    new_sampler = OperatorSampler(new.process.pid)
    new_sampler.start()
    _wait_started(new, settle=0.0, offset=offset)
    phase.restarted_s = round(time.monotonic() - killed, 3)

    # The first workflow event seen 0.5 s or more after the kill is the new operator's:
    # the old one is dead and reaped (what it had in flight lands within milliseconds),
    # nothing else writes a workflow's status, and a new process takes longer than that
    # to import its modules.
    def written() -> bool:
        return any(t >= killed + 0.5 for t in flows.event_times[-50:])

    if wait_until(flows.cond, written, args.timeout):
        with flows.cond:
            first = min(t for t in flows.event_times if t >= killed + 0.5)
        phase.takeover_s = round(first - killed, 3)
    return new, new_sampler, cpu_killed


def _wait_started(
    op: operator_mod.OperatorProcess, timeout: float = 180.0, settle: float = 3.0, offset: int = 0
) -> None:
    """Until the startup handler is done (models loaded, /metrics up), and a moment for
    Kopf's watches to open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if op.process.poll() is not None:
            raise RuntimeError(
                f"the operator exited ({op.process.returncode}):\n{op.log()[-3000:]}"
            )
        if b"qorch operator started" in op.log_path.read_bytes()[offset:]:
            time.sleep(settle)
            return
        time.sleep(0.05)
    raise TimeoutError(f"the operator did not start in {timeout:.0f}s:\n{op.log()[-3000:]}")


LOG_KINDS = (
    ("transient error", "transient error"),
    ("status changed since it was read", "status conflict"),
    ("status written by someone else", "foreign status"),
    ("failed:", "action failed"),
    ("Connection pool is full", "urllib3 pool full"),
    ("Traceback", "traceback"),
)


def _log_warnings(path: Path, offset: int) -> dict[str, int]:
    """How often the operator's log said what matters here, during the phase."""
    with path.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        for needle, label in LOG_KINDS:
            if needle in line:
                counts[label] += 1
        if " WARNING " in line or "[WARNING" in line:
            counts["warning lines"] += 1
        if " ERROR " in line or "[ERROR" in line:
            counts["error lines"] += 1
    return dict(counts)


def _stuck_report(
    flows: WorkflowTracker, w: int, waited: float, log_path: Path, offset: int
) -> list[str]:
    lines = [
        f"{w - len(flows.done)} of {w} workflows not finished after {waited:.0f}s; "
        f"phases: {dict(Counter(flows.phase.values()))}"
    ]
    for name in sorted(n for n in flows.phase if flows.phase[n] != "Succeeded")[:10]:
        status = flows.last[name].get("status") or {}
        subs = Counter(s.get("phase") for s in status.get("subtasks") or [])
        messages = {s.get("message") for s in status.get("subtasks") or [] if s.get("message")}
        lines.append(
            f"{name}: phase {status.get('phase')}, progress {status.get('progress')}, "
            f"subtasks {dict(subs)}, messages {sorted(messages)[:3]}"
        )
    with log_path.open("rb") as fh:
        fh.seek(offset)
        tail = fh.read().decode(errors="replace").splitlines()
    lines += [f"log: {line}" for line in tail[-15:]]
    return lines


# ---- main ---------------------------------------------------------------------------------------


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        w, _, k = part.strip().lower().partition("x")
        shapes.append((int(w), int(k)))
    return shapes


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 2)


PHASES = ("scheduler", "qorch")


def print_table(console: Console, results: list[dict[str, Any]]) -> None:
    table = Table(title="Placement: kube-scheduler alone vs through Qorch (target ratio <= 1.25)")
    for col in (
        "shape WxK",
        "pods",
        "sched bound s",
        "sched done s",
        "qorch bound s",
        "qorch done s",
        "ratio bound",
        "ratio done",
        "op CPU ms/pod",
        "op peak RSS MiB",
        "API req/pod qorch",
        "API req/pod sched",
        "status writes/wf",
        "bg pods sched/qorch",
        "dup pods",
    ):
        table.add_column(col, justify="right")
    for r in results:
        s, q = r["scheduler"], r["qorch"]
        table.add_row(
            r["shape"],
            str(r["pods"]),
            _fmt(s["all_bound_s"]),
            _fmt(s["all_succeeded_s"]),
            _fmt(q["all_bound_s"]),
            _fmt(q["workflows_succeeded_s"]),
            _fmt(r["ratio_bound"], 2),
            _fmt(r["ratio_succeeded"], 2),
            _fmt(q["operator_cpu_ms_per_pod"]),
            _fmt(q["operator_peak_rss_mib"], 0),
            _fmt(q["api_requests_per_pod"]),
            _fmt(s["api_requests_per_pod"]),
            _fmt(q["status_writes_per_workflow"]),
            f"{s['background_pods']}/{q['background_pods']}",
            str(q["duplicate_subtasks"]),
        )
    console.print(table)
    names = sorted({n for r in results for ph in PHASES for n in r[ph]["cpu_s_by_process"]})
    cpu = Table(title="CPU seconds per process over each phase (2 cores shared by all)")
    for col in ("shape", "phase", "wall s", *names, "all", "cores busy"):
        cpu.add_column(col, justify="right")
    for r in results:
        for ph in PHASES:
            used = r[ph]["cpu_s_by_process"]
            wall = r[ph]["workflows_succeeded_s"] or r[ph]["all_succeeded_s"]
            total = sum(used.values())
            cpu.add_row(
                r["shape"],
                ph,
                _fmt(wall),
                *(_fmt(used.get(n)) for n in names),
                _fmt(total),
                _fmt(total / wall if wall else None, 2),
            )
    console.print(cpu)
    console.print(
        "qorch done = every workflow Succeeded (and its pods); bound = the N-th pod bound; "
        "times from the first create/apply."
    )


def print_profile(console: Console, path: str) -> None:
    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    console.print(f"[bold]profile {path}[/] (operator main thread, the Qorch phase)")
    print(out.getvalue(), flush=True)  # plain: rich would wrap the long paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=None, help=f"WxK,... (default {DEFAULT_SHAPES})")
    parser.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES}")
    parser.add_argument("--big", action="store_true", help=f"add {BIG_SHAPE} (10,000 pods)")
    parser.add_argument("--concurrency", type=int, default=16, help="client requests in flight")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--profile", help="cProfile the operator per Qorch phase (PATH-<shape>)")
    parser.add_argument("--cluster-pass", action="store_true", help="QORCH_CLUSTER_PASS=on")
    parser.add_argument("--no-background", action="store_true", help="no GPU trace replay")
    parser.add_argument("--trace-offset-hours", type=float, default=2800.0)
    parser.add_argument("--trace-hour-seconds", type=float, default=1.0)
    parser.add_argument("--bg-max-seconds", type=float, default=20.0)
    parser.add_argument("--workdir", type=Path, help="control plane and logs (kept)")
    parser.add_argument(
        "--kill-at",
        type=float,
        metavar="SHARE",
        help="SIGKILL the operator once this share of the pods succeeded (0.5: half), "
        "start a new one at once, and time its takeover",
    )
    args = parser.parse_args(argv)
    shapes = parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
    if args.big and (1000, 10) not in shapes:
        shapes.append((1000, 10))
    keep = args.workdir is not None
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="qorch-scale-"))).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # the table stays readable in a log
    load0 = os.getloadavg()
    console.print(
        f"{platform.node()}: {os.cpu_count()} CPUs, load {load0[0]:.2f}; shapes "
        f"{', '.join(f'{w}x{k}' for w, k in shapes)}; logs in {args.workdir}"
    )
    traces = default_traces_dir() / "gpu-cluster"
    if not args.no_background and not traces.is_dir():
        console.print(
            f"no GPU-cluster trace at {traces}: set QORCH_TRACES_DIR to the traces' directory, "
            "or run with --no-background"
        )
        return 2
    plan = (
        []
        if args.no_background
        else background_plan(
            args.trace_offset_hours, args.trace_hour_seconds, args.bg_max_seconds, args.timeout
        )
    )
    hook_dir = args.workdir / "profile-hook"
    if args.profile:
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(PROFILE_HOOK)
    started = time.monotonic()
    # A fresh control plane each run (a kept workdir still holds the last one's etcd).
    shutil.rmtree(args.workdir / "control-plane", ignore_errors=True)
    plane = cp_mod.start(args.workdir / "control-plane", nodes=NODES, crds=REPO / "crds")
    console.print(f"control plane up in {time.monotonic() - started:.0f}s: {plane.kubeconfig}")
    results: list[dict[str, Any]] = []
    failed = False
    try:
        api = Api(plane)
        kubeconfig = least_privilege_kubeconfig(plane, args.workdir / "operator-sa.yaml")
        for w, k in shapes:
            tag = f"{w}x{k}"
            console.print(f"[bold]{tag}[/]: {w * k} pods through kube-scheduler alone ...")
            sched = measure_scheduler(api, plane, args, tag, w * k, plan)
            console.print(
                f"  submitted {_fmt(sched.submitted_s)}s, "
                f"bound {_fmt(sched.all_bound_s)}s, done {_fmt(sched.all_succeeded_s)}s, "
                f"{sched.api_requests_per_pod} API req/pod, {sched.background_pods} bg pods"
            )
            console.print(f"[bold]{tag}[/]: {w} workflows x {k} subtasks through Qorch ...")
            qorch = measure_qorch(api, plane, args, tag, w, k, plan, kubeconfig, hook_dir)
            console.print(
                f"  applied {_fmt(qorch.submitted_s)}s, "
                f"bound {_fmt(qorch.all_bound_s)}s, workflows done "
                f"{_fmt(qorch.workflows_succeeded_s)}s, "
                f"CPU {qorch.operator_cpu_ms_per_pod} ms/pod, "
                f"RSS {qorch.operator_peak_rss_mib} MiB, "
                f"{qorch.api_requests_per_pod} API req/pod, "
                f"{qorch.status_writes_per_workflow} status writes/wf, warnings "
                f"{qorch.operator_warnings}"
            )
            if qorch.killed_at_s is not None:
                console.print(
                    f"  SIGKILLed at {_fmt(qorch.killed_at_s)}s ({qorch.killed_at_pods} pods "
                    f"done); new operator started in {_fmt(qorch.restarted_s)}s, first status "
                    f"write {_fmt(qorch.takeover_s)}s after the kill; "
                    f"{qorch.duplicate_subtasks} subtasks with more than one pod"
                )
            for line in qorch.stuck + sched.stuck:
                console.print(f"  ! {line}", markup=False, highlight=False)
            failed |= not (qorch.complete and sched.complete)
            failed |= qorch.duplicate_subtasks > 0 or qorch.max_status_bytes > STATUS_BUDGET_BYTES
            results.append(
                {
                    "shape": tag,
                    "workflows": w,
                    "subtasks": k,
                    "pods": w * k,
                    "scheduler": asdict(sched),
                    "qorch": asdict(qorch),
                    "ratio_bound": _ratio(qorch.all_bound_s, sched.all_bound_s),
                    "ratio_succeeded": _ratio(qorch.workflows_succeeded_s, sched.all_succeeded_s),
                }
            )
            if args.json:  # as it goes: a long run that dies keeps what it measured
                _write_json(args, shapes, plan, results, load0)
    finally:
        plane.stop()
    print_table(console, results)
    for r in results:
        if r["qorch"]["profile"]:
            print_profile(console, r["qorch"]["profile"])
    load1 = os.getloadavg()
    console.print(f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end")
    if args.json:
        _write_json(args, shapes, plan, results, load0)
        console.print(f"wrote {args.json}")
    if not keep and not failed:
        shutil.rmtree(args.workdir, ignore_errors=True)
    elif failed:
        console.print(f"[red]incomplete, duplicated or over budget; logs kept in {args.workdir}[/]")
    return 1 if failed else 0


def _write_json(
    args: argparse.Namespace,
    shapes: list[tuple[int, int]],
    plan: list[BackgroundPod],
    results: list[dict[str, Any]],
    load0: tuple[float, float, float],
) -> None:
    doc = {
        "benchmark": "scale",
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "load_start": load0[0]},
        "load_end": os.getloadavg()[0],
        "settings": {
            "shapes": [f"{w}x{k}" for w, k in shapes],
            "concurrency": args.concurrency,
            "timeout_s": args.timeout,
            "cluster_pass": args.cluster_pass,
            "operator_env": CHART_ENV,
            "nodes": {"cpu": CPU_NODES, "gpu": GPU_NODES, "gpus_per_node": GPUS_PER_NODE},
            "background": {
                "enabled": not args.no_background,
                "trace_offset_hours": args.trace_offset_hours,
                "trace_hour_seconds": args.trace_hour_seconds,
                "max_seconds": args.bg_max_seconds,
                "planned_pods": len(plan),
                "median_seconds": statistics.median([p.seconds for p in plan]) if plan else None,
            },
            "status_budget_bytes": STATUS_BUDGET_BYTES,
        },
        "results": results,
    }
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
