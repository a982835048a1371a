"""Chaos runs: a mixed set of workflows on the real stack while the operator is SIGKILLed
and a gateway, Prometheus and the kube-apiserver are restarted, then an account of every
subtask: none lost, none run twice.

Shared by ``bench/chaos.py`` (the full figure) and ``tests/e2e/test_chaos.py`` (a slice).

- Circuits run on real ``qorch gateway`` processes (provider ``aer``). Each is started
  through ``python -m tests.harness.chaos gateway``, which wraps the gateway's service so
  that every execution it starts and finishes is appended to a journal file: runs are
  counted AT THE GATEWAY, across its restarts.
- Classical steps are pods on KWOK nodes that complete after their
  ``pod-complete.stage.kwok.x-k8s.io/delay``. A step marked ``chaos.qorch.io/fail-first-attempt``
  gets ``qorch.io/kwok-exit-code: "3"`` patched onto its attempt-1 pod while it runs, so it
  fails exactly once. A watch over all managed pods (reconnecting through apiserver
  restarts) records every pod ever created: runs are counted FROM PODS by UID.
- Faults come from a schedule drawn with a seeded RNG (printed; a run is reproduced by
  its seed): SIGKILL of the operator (restarted at once, as a Deployment would), a
  gateway restart on the same port and state, a Prometheus restart in place, a
  kube-apiserver restart in place.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.controlplane import REPO, ControlPlane, free_port
from devenv.prometheus import Prometheus
from tests.harness import operator as operator_mod

GROUP, VERSION, PLURAL = "qorch.io", "v1alpha1", "hybridworkflows"
DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
EXIT_CODE = "qorch.io/kwok-exit-code"
FAIL_FIRST = "chaos.qorch.io/fail-first-attempt"
MANAGED = "app.kubernetes.io/managed-by=qorch"
# The same string names the QuantumBackend and the backend its gateway serves (the label of
# the gateway's metrics), so the operator's live Prometheus metrics apply to them.
BACKENDS = ("chaosa", "chaosb")
BACKEND_QUBITS = 5
TERMINAL = ("Succeeded", "Failed")
SUBTASK_TERMINAL = ("Succeeded", "Failed", "Skipped")
FAULT_KINDS = ("operator-kill", "gateway-restart", "prometheus-restart", "apiserver-restart")
SHORT = {"operator-kill": "op", "gateway-restart": "gw", "prometheus-restart": "prom"}
SHORT["apiserver-restart"] = "api"

STD = 'OPENQASM 3.0; include "stdgates.inc"; '


def ghz(n: int) -> str:
    cx = "".join(f"cx q[{i}], q[{i + 1}]; " for i in range(n - 1))
    return STD + f"qubit[{n}] q; bit[{n}] c; h q[0]; {cx}c = measure q;"


BELL = STD + "qubit[2] q; h q[0]; cx q[0], q[1];"

# Pools too small for any circuit here: a circuit never lands on a KWOK pod (which would
# never complete); with no healthy backend it waits for one.
POOLS: list[dict[str, Any]] = [
    {"name": "cpu", "nodeSelector": {"qorch.io/pool": "cpu"}, "maxQubits": 1},
    {
        "name": "gpu",
        "nodeSelector": {"qorch.io/pool": "gpu"},
        "gpu": True,
        "maxQubits": 1,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
]


# ---- the workflows ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowCase:
    name: str
    shape: str  # fan-out | chain | retry | doomed
    manifest: dict[str, Any]
    expect: str  # the phase it must end in: Succeeded, or Failed (doomed by design)


class _Builder:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def classical(
        self,
        name: str,
        deps: Sequence[str] = (),
        *,
        fail_first: bool = False,
        exit_code: int = 0,
        gpu: bool = False,
        retries: int | None = None,
        delay_ms: int | None = None,
    ) -> dict[str, Any]:
        ms = delay_ms if delay_ms is not None else self.rng.choice((800, 1200, 1600, 2000))
        annotations = {DELAY: f"{ms}ms"}
        if fail_first:
            annotations[FAIL_FIRST] = "true"
        if exit_code:
            annotations[EXIT_CODE] = str(exit_code)
        step: dict[str, Any] = {
            "name": name,
            "dependsOn": list(deps),
            "classical": {
                "image": "busybox",
                "annotations": annotations,
                "resources": {"cpu": "100m", "memory": "64Mi", "gpu": 1 if gpu else 0},
            },
        }
        if retries is not None:
            step["maxRetries"] = retries
        return step

    def circuit(self, name: str, deps: Sequence[str] = ()) -> dict[str, Any]:
        if self.rng.random() < 0.3:
            spec: dict[str, Any] = {
                "qasm": BELL,
                "primitive": "estimator",
                "observables": ["ZZ", "XX"],
                "shots": self.rng.choice((500, 1000)),
            }
        else:
            spec = {"qasm": ghz(self.rng.randint(2, 4)), "shots": self.rng.choice((256, 1024))}
        return {"name": name, "dependsOn": list(deps), "circuit": spec}

    def any_step(self, name: str, deps: Sequence[str]) -> dict[str, Any]:
        return self.circuit(name, deps) if self.rng.random() < 0.5 else self.classical(name, deps)


def _manifest(b: _Builder, name: str, subtasks: list[dict[str, Any]]) -> dict[str, Any]:
    # The planner picks the allowed backend with the shortest queue, ties by name: most
    # workflows get one backend each, so that both gateways carry work when one restarts.
    backends = b.rng.choice([[BACKENDS[0]], [BACKENDS[1]], [BACKENDS[1]], list(BACKENDS)])
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HybridWorkflow",
        "metadata": {"name": name, "labels": {"chaos.qorch.io/run": "true"}},
        "spec": {
            "subtasks": subtasks,
            "resources": {"quantumBackends": backends, "classicalPools": POOLS},
        },
    }


def _fan_out(b: _Builder, name: str) -> WorkflowCase:
    width = b.rng.randint(3, 5)
    mids = [b.circuit(f"q{i}", ["prep"]) for i in range(width)]
    mids.append(b.classical("sim", ["prep"], gpu=b.rng.random() < 0.5))
    steps = [b.classical("prep"), *mids, b.classical("join", [m["name"] for m in mids])]
    return WorkflowCase(name, "fan-out", _manifest(b, name, steps), "Succeeded")


def _chain(b: _Builder, name: str, min_seconds: float = 0.0) -> WorkflowCase:
    """Alternating circuits and classical steps; with ``min_seconds`` six steps whose
    classical ones alone take that long (the run's spine: faults land while it runs)."""
    length = 6 if min_seconds else b.rng.randint(4, 6)
    first = b.rng.randint(0, 1)  # alternate kinds, starting with either
    per_step = min_seconds / (length // 2)
    steps: list[dict[str, Any]] = []
    for i in range(length):
        deps = [steps[-1]["name"]] if steps else []
        if (i + first) % 2 == 0:
            steps.append(b.circuit(f"s{i}", deps))
        elif min_seconds:
            ms = int(1000 * (per_step + b.rng.uniform(0, 1.5)))
            steps.append(b.classical(f"s{i}", deps, delay_ms=ms))
        else:
            steps.append(b.classical(f"s{i}", deps))
    return WorkflowCase(name, "chain", _manifest(b, name, steps), "Succeeded")


def _retry(b: _Builder, name: str) -> WorkflowCase:
    steps = [
        b.classical("flaky", fail_first=True, delay_ms=2500),
        b.circuit("q", ["flaky"]),
        b.classical("side", fail_first=b.rng.random() < 0.5, delay_ms=2500),
        b.classical("after", ["q", "side"]),
    ]
    return WorkflowCase(name, "retry", _manifest(b, name, steps), "Succeeded")


def _doomed(b: _Builder, name: str) -> WorkflowCase:
    steps = [
        b.classical("broken", exit_code=3, retries=1),
        b.classical("slow", delay_ms=4000),
        b.circuit("q"),
        b.any_step("never", ["broken"]),
    ]
    return WorkflowCase(name, "doomed", _manifest(b, name, steps), "Failed")


SHAPES: dict[str, Callable[[_Builder, str], WorkflowCase]] = {
    "fan-out": _fan_out,
    "chain": _chain,
    "retry": _retry,
    "doomed": _doomed,
}


def make_workflows(rng: random.Random, count: int, min_seconds: float = 0.0) -> list[WorkflowCase]:
    """``count`` workflows. The first is a chain that takes at least ``min_seconds`` (so
    faults scheduled before then hit a running workflow); the other shapes follow, each
    once before any repeats."""
    b = _Builder(rng)
    others = [s for s in SHAPES if s != "chain"]
    rng.shuffle(others)
    order = ["chain", *others]
    while len(order) < count:
        batch = list(SHAPES)
        rng.shuffle(batch)
        order += batch
    cases = [_chain(b, "chain-0", min_seconds)]
    cases += [SHAPES[shape](b, f"{shape}-{i}") for i, shape in enumerate(order[1:count], 1)]
    return cases[:count]


# ---- faults ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the workflows were applied
    kind: str  # one of FAULT_KINDS
    target: str = ""  # the gateway's backend name, for gateway-restart
    hard: bool = False  # SIGKILL rather than SIGTERM (the operator is always SIGKILLed)
    # gateway-restart: from ``at``, wait for the gateway to finish a job and restart it
    # right then, before the operator can have read the result (the riskiest moment).
    aimed: bool = False

    @property
    def label(self) -> str:
        how = "KILL" if self.hard else "TERM"
        detail = {
            "operator-kill": "",
            "gateway-restart": f"({self.target},{how}{',aimed' if self.aimed else ''})",
            "prometheus-restart": f"({how})",
            "apiserver-restart": f"({how})",
        }[self.kind]
        return f"{self.kind}{detail}@{self.at:.1f}s"


def make_schedule(
    rng: random.Random,
    horizon: float,
    kinds: Sequence[str] = FAULT_KINDS,
    operator_kills: tuple[int, int] = (1, 2),
) -> list[Fault]:
    """Random times in [1 s, horizon]: 1-2 operator SIGKILLs and one of each other kind."""
    faults: list[Fault] = []
    for kind in kinds:
        n = rng.randint(*operator_kills) if kind == "operator-kill" else 1
        for _ in range(n):
            at = round(rng.uniform(1.0, horizon), 1)
            if kind == "operator-kill":
                faults.append(Fault(at, kind, hard=True))
            elif kind == "gateway-restart":
                target, hard = rng.choice(BACKENDS), rng.random() < 0.5
                faults.append(Fault(at, kind, target, hard, aimed=rng.random() < 0.5))
            else:
                faults.append(Fault(at, kind, hard=rng.random() < 0.5))
    return sorted(faults, key=lambda f: f.at)


@dataclass
class Injected:
    fault: Fault
    at: float  # when it actually began, seconds after the start
    seconds: float  # how long the component was away (until healthy again)
    detail: str = ""


# ---- gateways with an execution journal -------------------------------------------------


@functools.cache
def gateway_flags() -> frozenset[str]:
    """The options this checkout's ``qorch gateway`` knows (some are being added)."""
    out = subprocess.run(
        [sys.executable, "-m", "qorch.cli", "gateway", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    return frozenset(w.strip(",[]") for w in out.stdout.split() if w.startswith("--"))


@dataclass
class JournaledGateway:
    """A ``qorch gateway`` (aer) on a fixed port whose executions go to ``journal``."""

    name: str
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    extra_args: tuple[str, ...] = ()  # more ``qorch gateway`` options

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def journal(self) -> Path:
        return self.workdir / "executions.jsonl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    def argv(self) -> list[str]:
        flags = gateway_flags()
        args = [
            "--provider",
            "aer",
            "--backend",
            self.name,
            "--max-qubits",
            str(BACKEND_QUBITS),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if "--auth" in flags:
            args += ["--auth", "none"]
        if "--state-dir" in flags:  # a restarted gateway keeps its jobs
            args += ["--state-dir", str(self.workdir / "state")]
        args += self.extra_args
        return [
            sys.executable,
            "-m",
            "tests.harness.chaos",
            "gateway",
            "--journal",
            str(self.journal),
            "--",
            *args,
        ]

    def start(self, timeout: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv(),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway {self.name} exited: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1),
            ):
                return
            time.sleep(0.2)
        raise TimeoutError(f"gateway {self.name} not healthy after {timeout}s: {self.log_tail()}")

    def stop(self, hard: bool = False) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self, hard: bool) -> float:
        started = time.monotonic()
        self.stop(hard)
        self.start()
        self.restarts += 1
        return time.monotonic() - started

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def jobs_done_counter(self) -> float | None:
        """``qorch_gateway_jobs_total{outcome="done"}`` of the current process."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=3) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith("qorch_gateway_jobs_total{") and 'outcome="done"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def completions(gw: JournaledGateway) -> list[dict[str, Any]]:
    """The journal, plus the Done completions a SIGKILL cut off from it.

    The journal line is written just after the gateway's own bookkeeping of a finished
    job, which with ``--state-dir`` includes its SQLite commit. A SIGKILL between the two
    leaves a Done job in the gateway's state (whose result it serves after restarting)
    with no journal line: those are recovered from the state, by the job's finish time."""
    entries = read_journal(gw.journal)
    state = gw.workdir / "state" / "jobs.sqlite3"
    if not state.exists():
        return entries
    logged: dict[str, list[float]] = defaultdict(list)
    for e in entries:
        if e["event"] == "end" and e.get("phase") == "Done":
            logged[e["job"]].append(float(e["t"]))
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT job_id, finished_at FROM jobs WHERE phase = 'Done'"
            ).fetchall()
    except sqlite3.Error:  # the state's layout changed: count the journal alone
        return entries
    for job, finished in rows:
        if finished is None or float(finished) < 1e9:  # not wall-clock time: cannot match
            continue
        if not any(0 <= t - float(finished) < 5 for t in logged.get(job, [])):
            entries.append(
                {"t": float(finished), "pid": "state", "event": "end", "job": job}
                | {"phase": "Done", "recovered": True}
            )
    return entries


def _journaled_gateway_main(journal: Path, gateway_args: list[str]) -> int:
    """Run ``qorch gateway`` with its service wrapped so that every execution it starts and
    every job it finishes is appended (one JSON line, O_APPEND) to ``journal``. The lines
    are written in the same event-loop step as the state change, before any HTTP answer
    can report it."""
    from qorch import cli
    from qorch.gateway import service as svc

    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def write(event: str, job_id: str, **extra: Any) -> None:
        line = {"t": time.time(), "pid": pid, "event": event, "job": job_id, **extra}
        os.write(fd, (json.dumps(line) + "\n").encode())

    cls = svc.GatewayService
    missing = [a for a in ("submit", "execute", "_finish") if not hasattr(cls, a)]
    if missing:
        raise SystemExit(
            f"GatewayService lacks {missing}: update tests/harness/chaos.py's journal hook"
        )
    orig_submit, orig_execute, orig_finish = cls.submit, cls.execute, cls._finish

    def known(self: Any, sub: Any) -> bool:
        jobs = getattr(self, "jobs", None)
        return jobs is not None and sub.job_id in jobs

    if inspect.iscoroutinefunction(orig_submit):

        async def submit(self: Any, sub: Any) -> Any:
            was = known(self, sub)
            record = await orig_submit(self, sub)
            write("submit", sub.job_id, known=was)
            return record
    else:

        def submit(self: Any, sub: Any) -> Any:
            was = known(self, sub)
            record = orig_submit(self, sub)
            write("submit", sub.job_id, known=was)
            return record

    async def execute(self: Any, batch: list[Any]) -> None:
        for record in batch:  # dispatched; finished runs are the "end" lines
            write("start", record.submission.job_id)
        await orig_execute(self, batch)

    def finish(self: Any, record: Any, phase: Any, message: str, *a: Any, **kw: Any) -> Any:
        out = orig_finish(self, record, phase, message, *a, **kw)
        write("end", record.submission.job_id, phase=str(getattr(phase, "value", phase)))
        return out

    cls.submit = submit  # type: ignore[method-assign]
    cls.execute = execute  # type: ignore[method-assign]
    cls._finish = finish  # type: ignore[method-assign]
    write("boot", "", args=gateway_args)
    return cli.main(["gateway", *gateway_args])


# ---- every managed pod ever seen ---------------------------------------------------------


@dataclass
class PodRecord:
    uid: str
    namespace: str
    name: str
    workflow: str
    subtask: str
    attempt: int
    phases: list[str] = field(default_factory=list)
    node: str | None = None
    deleted: bool = False
    fail_first: bool = False
    fail_injected: bool = False

    @property
    def last_phase(self) -> str:
        return self.phases[-1] if self.phases else "Unknown"


class PodLedger:
    """Watches every pod labelled as Qorch's, in all namespaces, from a thread; resumes
    the watch from the last resourceVersion across apiserver restarts (relists on 410),
    so every pod ever created is recorded by UID. Also the fault that makes marked steps
    fail once: it patches ``qorch.io/kwok-exit-code: "3"`` onto their attempt-1 pods."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        self._api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        self.records: dict[str, PodRecord] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._inject: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.reconnects = 0

    def __enter__(self) -> PodLedger:
        for target in (self._watch, self._injector):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        if not self._synced.wait(30):
            raise TimeoutError("pod ledger: no initial list after 30 s")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def for_namespace(self, namespace: str) -> list[PodRecord]:
        with self._lock:
            mine = [r for r in self.records.values() if r.namespace == namespace]
            return [dataclasses.replace(r, phases=list(r.phases)) for r in mine]

    def _watch(self) -> None:
        from kubernetes import watch
        from kubernetes.client import ApiException

        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = self._api.list_pod_for_all_namespaces(
                        label_selector=MANAGED, _request_timeout=10
                    )
                    for pod in listed.items:
                        self._observe("LIST", pod)
                    rv = listed.metadata.resource_version
                    self._synced.set()
                w = watch.Watch()
                for ev in w.stream(
                    self._api.list_pod_for_all_namespaces,
                    label_selector=MANAGED,
                    resource_version=rv,
                    timeout_seconds=5,
                    _request_timeout=15,
                ):
                    pod = ev["object"]
                    rv = pod.metadata.resource_version
                    self._observe(ev["type"], pod)
                    if self._stop.is_set():
                        w.stop()
            except ApiException as exc:
                self.reconnects += 1
                if exc.status == 410:
                    rv = None  # too old: list again (every pod still there is recorded)
                time.sleep(0.3)
            except Exception:  # the apiserver restarting: connection refused, reset
                self.reconnects += 1
                time.sleep(0.3)

    def _observe(self, event: str, pod: Any) -> None:
        meta = pod.metadata
        labels = meta.labels or {}
        annotations = meta.annotations or {}
        phase = (pod.status.phase if pod.status else None) or "Pending"
        with self._lock:
            rec = self.records.get(meta.uid)
            if rec is None:
                rec = PodRecord(
                    uid=meta.uid,
                    namespace=meta.namespace,
                    name=meta.name,
                    workflow=labels.get("qorch.io/workflow", ""),
                    subtask=labels.get("qorch.io/subtask", ""),
                    attempt=int(labels.get("qorch.io/attempt", "0") or 0),
                    fail_first=annotations.get(FAIL_FIRST) == "true",
                )
                self.records[meta.uid] = rec
            if not rec.phases or rec.phases[-1] != phase:
                rec.phases.append(phase)
            rec.node = pod.spec.node_name or rec.node
            if event == "DELETED":
                rec.deleted = True
            if annotations.get(EXIT_CODE) == "3" and rec.fail_first:
                rec.fail_injected = True
            wants = (
                rec.fail_first
                and rec.attempt == 1
                and not rec.fail_injected
                and phase not in TERMINAL
                and event != "DELETED"
            )
        if wants:
            self._inject.put((rec.namespace, rec.name, rec.uid))

    def _injector(self) -> None:
        pending: dict[str, tuple[str, str]] = {}
        while not self._stop.is_set():
            with contextlib.suppress(queue.Empty):
                ns, name, uid = self._inject.get(timeout=0.2)
                pending[uid] = (ns, name)
            for uid, (ns, name) in list(pending.items()):
                with self._lock:
                    rec = self.records.get(uid)
                    done = rec is None or rec.fail_injected or rec.deleted
                    done = done or (rec is not None and rec.last_phase in TERMINAL)
                if done:
                    pending.pop(uid)
                    continue
                body = {"metadata": {"uid": uid, "annotations": {EXIT_CODE: "3"}}}
                try:
                    self._api.patch_namespaced_pod(name, ns, body, _request_timeout=5)
                except Exception:  # apiserver away, or the pod gone: retried / dropped above
                    continue
                with self._lock:
                    if rec is not None:
                        rec.fail_injected = True
                pending.pop(uid)


# ---- the stack a chaos run needs -----------------------------------------------------------


@dataclass
class OperatorHandle:
    """The operator process, restarted at once after each SIGKILL (as a Deployment would,
    with a new random peering priority, drawn from the run's RNG)."""

    plane: ControlPlane
    log_path: Path
    kubeconfig: Path
    env: dict[str, str]
    process: operator_mod.OperatorProcess | None = None
    kills: int = 0
    gateway: operator_mod.Gateway = "http"  # the real `qorch operator`, real gateways

    def start(self, priority: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:  # it applies the peering object first: retried while the apiserver is away
                self.process = operator_mod.start(
                    self.plane,
                    self.log_path,
                    priority=priority,
                    extra_env=self.env,
                    kubeconfig=self.kubeconfig,
                    gateway=self.gateway,
                )
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def kill_and_restart(self, priority: int) -> None:
        assert self.process is not None
        self.process.kill()
        self.kills += 1
        self.start(priority)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def exited(self) -> int | None:
        """The exit code when the process ended without being killed here."""
        if self.process is None:
            return None
        return self.process.process.poll()

    def log_offset(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


@dataclass
class Stack:
    plane: ControlPlane
    prometheus: Prometheus
    gateways: dict[str, JournaledGateway]
    operator: OperatorHandle
    ledger: PodLedger
    workdir: Path
    custom: Any  # kubernetes CustomObjectsApi (admin)
    core: Any  # kubernetes CoreV1Api (admin)
    counter: int = 0

    def new_namespace(self, seed: int) -> str:
        self.counter += 1
        name = f"chaos-{seed}-{self.counter}-{os.getpid() % 10000}"
        self.plane.kubectl("create", "namespace", name)
        return name


@contextlib.contextmanager
def stack(
    plane: ControlPlane,
    prometheus: Prometheus,
    workdir: Path,
    operator_kubeconfig: Path,
    rng_seed: int = 0,
    peering_lifetime: int = 10,
    gateway_args: tuple[str, ...] = (),
    operator_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Two journaled aer gateways with their QuantumBackends, Prometheus scraping them, the
    pod ledger and the operator (http gateways, live metrics, fast resync; a SIGKILLed
    operator's peering record outlives it by ``peering_lifetime`` seconds).
    ``gateway_args`` and ``operator_env`` add gateway options and operator settings."""
    from kubernetes import client, config

    workdir.mkdir(parents=True, exist_ok=True)
    gateways = {
        name: JournaledGateway(name, workdir / name, extra_args=gateway_args) for name in BACKENDS
    }
    api = config.new_client_from_config(str(plane.kubeconfig))
    env = {
        "QORCH_PROMETHEUS_URL": prometheus.url,
        "QORCH_METRICS_REFRESH_SECONDS": "1",
        "QORCH_RESYNC_SECONDS": "2",
        "QORCH_RETRY_BACKOFF_SECONDS": "1",
        "QORCH_PEERING_LIFETIME_SECONDS": str(peering_lifetime),
        **(operator_env or {}),
    }
    op = OperatorHandle(plane, workdir / "operator.log", operator_kubeconfig, env)
    try:
        for gw in gateways.values():
            gw.start()
        prometheus.set_targets("chaos-gateways", [f"127.0.0.1:{g.port}" for g in gateways.values()])
        items = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "QuantumBackend",
                "metadata": {"name": gw.name},
                "spec": {
                    "provider": "aer",
                    "backendName": gw.name,
                    "numQubits": BACKEND_QUBITS,
                    "gateway": {"url": gw.url},
                },
            }
            for gw in gateways.values()
        ]
        _apply(plane, items)
        with PodLedger(plane.kubeconfig) as ledger:
            op.start(random.Random(rng_seed).randint(1, 1_000_000))
            try:
                yield Stack(
                    plane,
                    prometheus,
                    gateways,
                    op,
                    ledger,
                    workdir,
                    client.CustomObjectsApi(api),
                    client.CoreV1Api(api),
                )
            finally:  # while the operator still runs (it may hold finalizers)
                plane.kubectl("delete", "qb", *BACKENDS, "--wait=false", check=False)
    finally:
        op.stop()
        for gw in gateways.values():
            gw.stop()
        prometheus.set_targets("chaos-gateways", [])


def _apply(
    plane: ControlPlane, items: list[dict[str, Any]], namespace: str = "", retry_for: float = 0.0
) -> None:
    deadline = time.monotonic() + retry_for
    while True:
        out = plane.kubectl(
            "apply",
            *(["-n", namespace] if namespace else []),
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": items}),
            check=False,
        )
        if out.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"kubectl apply failed: {out.stderr}")
        time.sleep(1)


# ---- one run -------------------------------------------------------------------------------


@dataclass
class SubtaskAccount:
    workflow: str
    name: str
    kind: str  # circuit | classical
    phase: str
    attempts: int
    message: str
    pods: int = 0  # distinct pods (UIDs) ever seen
    pods_succeeded: int = 0
    executions_done: int = 0  # gateway executions that finished Done, all attempts
    executions_started: int = 0
    fail_injected: bool = False
    problems: list[str] = field(default_factory=list)
    lost: bool = False
    twice_gateway: int = 0
    twice_pods: int = 0


@dataclass
class WorkflowAccount:
    name: str
    shape: str
    expect: str
    phase: str
    reason: str
    message: str
    seconds: float | None  # apply -> terminal phase observed
    subtasks: list[SubtaskAccount]
    status: dict[str, Any]
    problems: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    seed: int
    namespace: str
    schedule: list[Fault]
    injected: list[Injected]
    skipped: list[Fault]
    workflows: list[WorkflowAccount]
    wall_seconds: float
    cleanup_seconds: float | None
    operator_log: str
    notes: list[str] = field(default_factory=list)

    @property
    def subtasks(self) -> list[SubtaskAccount]:
        return [s for w in self.workflows for s in w.subtasks]

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.subtasks)

    @property
    def twice_gateway(self) -> int:
        return sum(s.twice_gateway for s in self.subtasks)

    @property
    def twice_pods(self) -> int:
        return sum(s.twice_pods for s in self.subtasks)

    @property
    def violations(self) -> list[str]:
        out = []
        for w in self.workflows:
            out += [f"{self.namespace}/{w.name}: {p}" for p in w.problems]
            for s in w.subtasks:
                out += [f"{self.namespace}/{w.name}/{s.name}: {p}" for p in s.problems]
        return out

    @property
    def max_finish(self) -> float | None:
        times = [w.seconds for w in self.workflows if w.seconds is not None]
        return max(times) if times else None

    def fault_counts(self) -> Counter[str]:
        return Counter(i.fault.kind for i in self.injected)


def run_once(
    st: Stack,
    seed: int,
    *,
    workflows: int = 5,
    horizon: float = 15.0,
    deadline: float = 240.0,
    kinds: Sequence[str] = FAULT_KINDS,
    slow_after: float = 60.0,
    say: Callable[[str], None] = print,
) -> RunReport:
    """Apply ``workflows`` workflows (the long chain at once, the others at random times in
    the first 60 % of ``horizon``), inject the seed's fault schedule while they run, wait
    until every workflow is terminal (or ``deadline``), then account for every subtask."""
    rng = random.Random(seed)
    cases = make_workflows(rng, workflows, min_seconds=horizon + 2.0)
    schedule = make_schedule(rng, horizon, kinds)
    arrivals = sorted(
        [(0.0, cases[0])] + [(round(rng.uniform(0, 0.6 * horizon), 1), c) for c in cases[1:]],
        key=lambda a: a[0],
    )
    ns = st.new_namespace(seed)
    say(
        f"[chaos] seed {seed}: namespace {ns}; workflows: "
        + ", ".join(f"{c.name}@{at:.1f}s" for at, c in arrivals)
        + "; faults: "
        + ", ".join(f.label for f in schedule)
    )
    log_offset = st.operator.log_offset()
    t0 = time.monotonic()
    applied_at: dict[str, float] = {}
    finished_at: dict[str, float] = {}
    injected: list[Injected] = []
    skipped: list[Fault] = []
    todo = list(schedule)
    pending = list(arrivals)
    notes: list[str] = []
    last_poll = 0.0
    while True:
        now = time.monotonic() - t0
        if pending and now >= pending[0][0]:
            due = []
            while pending and now >= pending[0][0]:
                due.append(pending.pop(0)[1])
            _apply(st.plane, [c.manifest for c in due], ns, retry_for=60.0)
            for c in due:
                applied_at[c.name] = time.monotonic() - t0
            continue
        if todo and now >= todo[0].at:
            fault = todo.pop(0)
            if not pending and len(finished_at) == len(cases):
                skipped.append(fault)
                continue
            injected.append(_inject(st, fault, now, rng))
            say(f"[chaos]   +{now:5.1f}s {injected[-1].fault.label}: {injected[-1].detail}")
            continue
        if now - last_poll >= 1.0:
            last_poll = now
            exited = st.operator.exited()
            if exited is not None:  # on its own: restart it, as a Deployment would
                notes.append(f"operator exited by itself (code {exited}) at +{now:.1f}s")
                say(f"[chaos]   +{now:5.1f}s operator exited by itself (code {exited})")
                st.operator.start(random.randint(1, 1_000_000))
            for name, phase in _phases(st, ns).items():
                if phase in TERMINAL and name not in finished_at and name in applied_at:
                    finished_at[name] = time.monotonic() - t0 - applied_at[name]
        if not pending and len(finished_at) == len(cases):
            skipped += todo  # the run is over: what is left would not hit it
            break
        if now > deadline:
            skipped += todo
            break
        time.sleep(0.1)
    wall = time.monotonic() - t0
    # Let the last pod events and in-flight gateway work land before counting.
    time.sleep(3.0)
    report = _account(st, seed, ns, cases, schedule, injected, skipped, finished_at, wall)
    report.operator_log = st.operator.log_since(log_offset)
    report.notes += notes
    for w in report.workflows:
        if w.seconds is not None and w.seconds > slow_after:
            report.notes.append(f"slow: {w.name} took {w.seconds:.0f}s to finish")
    report.cleanup_seconds = _cleanup(st, ns)
    if report.cleanup_seconds is None:
        report.notes.append("workflows still present 60 s after deletion (finalizer?)")
    return report


def _inject(st: Stack, fault: Fault, now: float, rng: random.Random) -> Injected:
    started = time.monotonic()
    if fault.kind == "operator-kill":
        old = st.operator.process.process.pid if st.operator.process else None
        st.operator.kill_and_restart(rng.randint(1, 1_000_000))
        new = st.operator.process.process.pid if st.operator.process else None
        return Injected(fault, now, time.monotonic() - started, f"pid {old} -> {new}")
    if fault.kind == "gateway-restart":
        gw = st.gateways[fault.target]
        aim = ""
        if fault.aimed:
            job, waited = _await_finished_job(gw, timeout=5.0)
            aim = f"; {waited:.1f}s for {job} to finish" if job else "; no job finished in 5 s"
        away = gw.restart(fault.hard)
        return Injected(fault, now, away, f"{gw.url} back after {away:.1f}s{aim}")
    if fault.kind == "prometheus-restart":
        away = st.prometheus.restart(kill=fault.hard)
        return Injected(fault, now, away, f"ready after {away:.1f}s")
    if fault.kind == "apiserver-restart":
        away = st.plane.restart_apiserver(kill=fault.hard)
        return Injected(fault, now, away, f"/readyz after {away:.1f}s")
    raise ValueError(f"unknown fault kind {fault.kind!r}")


def _await_finished_job(gw: JournaledGateway, timeout: float) -> tuple[str | None, float]:
    """Tail the gateway's journal until it finishes a job; return that job at once."""
    started = time.monotonic()
    try:
        offset = gw.journal.stat().st_size
    except OSError:
        offset = 0
    buffer = b""
    while time.monotonic() - started < timeout:
        with contextlib.suppress(OSError), gw.journal.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
            offset += len(chunk)
            buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "end" and entry.get("phase") == "Done":
                    return str(entry["job"]), time.monotonic() - started
        time.sleep(0.002)
    return None, time.monotonic() - started


def _phases(st: Stack, ns: str) -> dict[str, str]:
    try:
        listed = st.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, _request_timeout=5
        )
    except Exception:  # the apiserver restarting
        return {}
    return {
        i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in listed["items"]
    }


def _list_workflows(st: Stack, ns: str) -> dict[str, dict[str, Any]]:
    for _ in range(60):
        try:
            listed = st.custom.list_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, _request_timeout=5
            )
            return {i["metadata"]["name"]: i for i in listed["items"]}
        except Exception:
            time.sleep(1)
    raise RuntimeError(f"cannot list workflows in {ns}")


def _account(
    st: Stack,
    seed: int,
    ns: str,
    cases: list[WorkflowCase],
    schedule: list[Fault],
    injected: list[Injected],
    skipped: list[Fault],
    finished_at: dict[str, float],
    wall: float,
) -> RunReport:
    live = _list_workflows(st, ns)
    pods = st.ledger.for_namespace(ns)
    journal = [
        e
        for gw in st.gateways.values()
        for e in completions(gw)
        if str(e.get("job", "")).startswith(f"{ns}.")
    ]
    accounts = [
        _account_workflow(case, live.get(case.name), pods, journal, finished_at.get(case.name), ns)
        for case in cases
    ]
    report = RunReport(seed, ns, schedule, injected, skipped, accounts, wall, None, "")
    # The journal hook sits in the gateway's own bookkeeping: its count of Done jobs must
    # match the gateway's counter (a check that the hook is live in this gateway version).
    for gw in st.gateways.values():
        counter = gw.jobs_done_counter()
        pid = gw.process.pid if gw.process else None
        logged = sum(
            e["event"] == "end" and e.get("phase") == "Done" and e.get("pid") == pid
            for e in read_journal(gw.journal)
        )
        if counter is not None and counter != logged:
            report.notes.append(
                f"gateway {gw.name}: qorch_gateway_jobs_total{{outcome=done}} is {counter:g} "
                f"but its journal has {logged} Done lines"
            )
    # Pods nobody's status knows about (a name outside every workflow of the run).
    known = {(c.name, s["name"]) for c in cases for s in c.manifest["spec"]["subtasks"]}
    for rec in pods:
        if (rec.workflow, rec.subtask) not in known:
            report.notes.append(f"pod {rec.name} belongs to no known subtask")
    return report


def _account_workflow(
    case: WorkflowCase,
    obj: dict[str, Any] | None,
    pods: list[PodRecord],
    journal: list[dict[str, Any]],
    seconds: float | None,
    ns: str,
) -> WorkflowAccount:
    status = (obj or {}).get("status") or {}
    phase = status.get("phase") or "(none)"
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Succeeded"), {})
    acct = WorkflowAccount(
        name=case.name,
        shape=case.shape,
        expect=case.expect,
        phase=phase,
        reason=cond.get("reason", ""),
        message=cond.get("message", ""),
        seconds=seconds,
        subtasks=[],
        status=status,
    )
    if obj is None:
        acct.problems.append("workflow object missing")
    elif phase not in TERMINAL:
        acct.problems.append(f"never finished: phase {phase!r}, progress {status.get('progress')}")
    else:
        if not acct.reason or not acct.message:
            acct.problems.append(f"ended {phase} without a reason (condition Succeeded: {cond})")
        if phase != case.expect:
            acct.problems.append(
                f"wrong outcome: expected {case.expect}, ended {phase}: {acct.message}"
            )
    recorded = {s["name"]: s for s in status.get("subtasks") or []}
    for sub in case.manifest["spec"]["subtasks"]:
        acct.subtasks.append(
            _account_subtask(case, sub, recorded.get(sub["name"]), phase, pods, journal, ns)
        )
    return acct


def _account_subtask(
    case: WorkflowCase,
    sub: dict[str, Any],
    st: dict[str, Any] | None,
    wf_phase: str,
    pods: list[PodRecord],
    journal: list[dict[str, Any]],
    ns: str,
) -> SubtaskAccount:
    st = st or {}
    kind = "circuit" if "circuit" in sub else "classical"
    acct = SubtaskAccount(
        workflow=case.name,
        name=sub["name"],
        kind=kind,
        phase=st.get("phase", "(none)"),
        attempts=int(st.get("attempts") or 0),
        message=st.get("message", ""),
    )
    p = acct.problems
    # -- lost: no outcome at all
    if wf_phase not in TERMINAL or acct.phase not in SUBTASK_TERMINAL:
        acct.lost = True
        p.append(f"lost: workflow {wf_phase}, subtask {acct.phase} after {acct.attempts} attempts")
    if acct.phase == "Failed" and not acct.message:
        p.append("failed without a message")

    if kind == "classical":
        mine = [r for r in pods if r.workflow == case.name and r.subtask == sub["name"]]
        acct.pods = len(mine)
        acct.fail_injected = any(r.fail_injected for r in mine)
        by_attempt: dict[int, list[PodRecord]] = defaultdict(list)
        for r in mine:
            by_attempt[r.attempt].append(r)
        for attempt, recs in sorted(by_attempt.items()):
            if len(recs) > 1:
                acct.twice_pods += len(recs) - 1
                p.append(
                    f"run twice (pods): attempt {attempt} has {len(recs)} pods "
                    f"({', '.join(f'{r.uid[:8]} {r.last_phase}' for r in recs)})"
                )
        succeeded = [r for r in mine if "Succeeded" in r.phases]
        acct.pods_succeeded = len(succeeded)
        if len(succeeded) > 1:
            acct.twice_pods += len(succeeded) - 1
            p.append(f"run twice (pods): {len(succeeded)} pods Succeeded: " + _names(succeeded))
        if sorted(by_attempt) != list(range(1, acct.attempts + 1)):
            p.append(
                f"pods do not match attempts: status says {acct.attempts} attempts, pods seen "
                f"for attempts {sorted(by_attempt)}"
            )
        if acct.phase == "Succeeded" and not succeeded:
            acct.lost = True
            p.append("lost: Succeeded in the status but no pod of it ever succeeded")
    else:
        prefix = f"{ns}.{case.name}.{sub['name']}."
        mine_j = [e for e in journal if e["job"].startswith(prefix)]
        done = [e for e in mine_j if e["event"] == "end" and e.get("phase") == "Done"]
        acct.executions_done = len(done)
        acct.executions_started = sum(e["event"] == "start" for e in mine_j)
        if len(done) > 1:
            acct.twice_gateway += len(done) - 1
            p.append(
                f"run twice (gateway): {len(done)} executions finished Done: "
                + ", ".join(f"{e['job']} (gateway pid {e['pid']})" for e in done)
            )
        attempts_seen = sorted({int(e["job"].rsplit(".", 1)[1]) for e in mine_j})
        if any(a > acct.attempts for a in attempts_seen):
            p.append(f"gateway saw attempts {attempts_seen} but the status records {acct.attempts}")
        if acct.phase == "Succeeded":
            if not done:
                acct.lost = True
                p.append("lost: Succeeded in the status but the gateway never finished a run")
            if not st.get("result"):
                acct.lost = True
                p.append("lost: Succeeded without a result")
    if acct.phase == "Skipped" and (acct.pods or acct.executions_started):
        p.append("Skipped, yet it ran")
    return acct


def _names(recs: list[PodRecord]) -> str:
    return ", ".join(f"{r.name} ({r.uid[:8]})" for r in recs)


def _cleanup(st: Stack, ns: str, timeout: float = 60.0) -> float | None:
    """Delete the run's workflows (the operator's finalizer must let them go), then the
    namespace; returns the seconds until the workflows were gone, None if they stayed."""
    started = time.monotonic()
    st.plane.kubectl("delete", "hwf", "--all", "-n", ns, "--wait=false", check=False)
    gone: float | None = None
    while time.monotonic() - started < timeout:
        if not _phases(st, ns) and _workflows_gone(st, ns):
            gone = time.monotonic() - started
            break
        time.sleep(0.5)
    st.plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return gone


def _workflows_gone(st: Stack, ns: str) -> bool:
    try:
        listed = st.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, _request_timeout=5
        )
    except Exception:
        return False
    return not listed["items"]


# ---- reporting ----------------------------------------------------------------------------


def render(reports: list[RunReport], console: Any = None) -> None:
    """A table, one row per run, and a summary line (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=160)
    table = Table(
        title="Chaos runs: every subtask accounted for",
        caption="faults: op = operator SIGKILL (restarted at once), gw = gateway restart, "
        "prom = Prometheus restart, api = kube-apiserver restart; twice gw = extra executions "
        "finished Done at a gateway, twice pods = extra pods of one attempt or extra "
        "Succeeded pods; retries hit = steps made to fail once; del s = seconds until "
        "deleted workflows were gone",
    )
    for col in (
        "seed",
        "wf",
        "ok/fail/other",
        "subtasks",
        "done/failed/skipped",
        "lost",
        "twice gw",
        "twice pods",
        "retries hit",
        "max finish s",
        "faults",
        "skipped",
        "del s",
        "verdict",
    ):
        table.add_column(col, justify="left" if col == "faults" else "right")
    for r in reports:
        wfs = r.workflows
        ok = sum(w.phase == "Succeeded" for w in wfs)
        failed = sum(w.phase == "Failed" for w in wfs)
        subs = r.subtasks
        by_phase = Counter(s.phase for s in subs)
        counts = r.fault_counts()
        faults = " ".join(f"{SHORT[k]}{counts[k]}" for k in FAULT_KINDS if counts[k])
        table.add_row(
            str(r.seed),
            str(len(wfs)),
            f"{ok}/{failed}/{len(wfs) - ok - failed}",
            str(len(subs)),
            f"{by_phase['Succeeded']}/{by_phase['Failed']}/{by_phase['Skipped']}",
            str(r.lost),
            str(r.twice_gateway),
            str(r.twice_pods),
            str(sum(s.fail_injected for s in subs)),
            f"{r.max_finish:.1f}" if r.max_finish is not None else "-",
            faults,
            str(len(r.skipped)),
            f"{r.cleanup_seconds:.1f}" if r.cleanup_seconds is not None else "stuck",
            "[green]ok[/]" if not r.violations else f"[red]{len(r.violations)} bad[/]",
        )
    console.print(table)
    console.print(summary(reports))


def summary(reports: list[RunReport]) -> str:
    subs = [s for r in reports for s in r.subtasks]
    wfs = [w for r in reports for w in r.workflows]
    faults: Counter[str] = Counter()
    for r in reports:
        faults.update(r.fault_counts())
    bad = [r.seed for r in reports if r.violations]
    notes = sum(len(r.notes) for r in reports)
    finish = [r.max_finish for r in reports if r.max_finish is not None]
    with_reason = sum(w.phase in TERMINAL and bool(w.reason and w.message) for w in wfs)
    return (
        f"{len(reports)} runs, {len(wfs)} workflows ({with_reason} ended Succeeded/Failed with "
        f"a reason), {len(subs)} subtasks: lost {sum(s.lost for s in subs)}, run twice "
        f"{sum(s.twice_gateway for s in subs)} at the gateway / "
        f"{sum(s.twice_pods for s in subs)} from pods; max time to finish "
        f"{max(finish) if finish else 0:.1f}s; faults "
        + ", ".join(f"{k} {n}" for k, n in sorted(faults.items()))
        + f"; {notes} notes (slow workflows, stuck deletions, operator exits)"
        + f"; runs with violations: {bad or 'none'}"
    )


def failure_report(reports: list[RunReport], log_lines: int = 60) -> str:
    """For each run with a violation: the seed, the fault schedule as injected, the
    violations, the status of the workflows involved and the operator log excerpt."""
    out: list[str] = []
    for r in reports:
        if not r.violations:
            continue
        out.append(f"=== seed {r.seed} (namespace {r.namespace}) ===")
        out.append("faults: " + ", ".join(f"{i.fault.label} [{i.detail}]" for i in r.injected))
        if r.skipped:
            out.append("not injected (run already over): " + ", ".join(f.label for f in r.skipped))
        out += [f"note: {n}" for n in r.notes]
        out += [f"  - {v}" for v in r.violations]
        bad = {w.name for w in r.workflows if w.problems or any(s.problems for s in w.subtasks)}
        for w in r.workflows:
            if w.name in bad:
                out.append(describe_status(w))
        lines = r.operator_log.splitlines()
        hits = [
            ln
            for ln in lines
            if (any(n in ln for n in bad) or "ERROR" in ln or "WARNING" in ln)
            and "Handler 'wake_on_pod_event' succeeded" not in ln
        ]
        out.append(f"operator log ({len(lines)} lines this run; {len(hits)} relevant, last shown):")
        out += ["    " + ln[:300] for ln in hits[-log_lines:]]
    return "\n".join(out)


def describe_status(w: WorkflowAccount) -> str:
    """A workflow's status in a few lines: conditions, then one line per subtask."""
    st = w.status
    lines = [f"status of {w.name} ({w.shape}, expected {w.expect}): phase {st.get('phase')}"]
    for c in st.get("conditions") or []:
        lines.append(
            f"    condition {c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}"
        )
    for s in st.get("subtasks") or []:
        ref = s.get("podName") or s.get("jobId") or "-"
        history = ",".join(h.get("event", "") for h in s.get("history") or [])
        lines.append(
            f"    {s.get('name')}: {s.get('phase')} attempts={s.get('attempts')} {ref} "
            f"[{history}] {s.get('message', '')[:200]}"
        )
    return "\n".join(lines)


def report_json(r: RunReport) -> dict[str, Any]:
    """Everything about a run, for a file next to the logs."""
    return {
        "seed": r.seed,
        "namespace": r.namespace,
        "schedule": [f.label for f in r.schedule],
        "injected": [
            {"fault": i.fault.label, "at": round(i.at, 2), "away": round(i.seconds, 2)}
            for i in r.injected
        ],
        "skipped": [f.label for f in r.skipped],
        "wall_seconds": round(r.wall_seconds, 2),
        "cleanup_seconds": r.cleanup_seconds,
        "violations": r.violations,
        "notes": r.notes,
        "workflows": [
            {
                **{k: v for k, v in dataclasses.asdict(w).items() if k != "subtasks"},
                "subtasks": [
                    {k: v for k, v in dataclasses.asdict(s).items() if k != "workflow"}
                    for s in w.subtasks
                ],
            }
            for w in r.workflows
        ],
    }


# ---- `python -m tests.harness.chaos gateway --journal F -- <qorch gateway args>` -------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.chaos")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("gateway", help="qorch gateway with an execution journal")
    p.add_argument("--journal", required=True, type=Path)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return _journaled_gateway_main(args.journal, rest)


if __name__ == "__main__":
    sys.exit(main())
