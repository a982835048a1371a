"""The quantum gateway against direct primitive calls, side by side, for the same circuits
(issue 16): what does going through ``qorch gateway`` cost over calling SamplerV2 here?

    nice .venv/bin/python bench/gateway.py [--quick] [--jobs N] [--in-flight K] [--shots S]
        [--backends aer,fake_manila] [--lone N] [--wait-s S | --poll-ms MS]
        [--gateway-arg ARG ...]
        [--json PATH] [--log-dir DIR]

Per backend (``aer``: the ideal Aer simulator, ``--provider aer``; ``fake_<device>``: the
noisy fake device, ``--provider fake --backend fake_<device>``), the same N GHZ-3 circuits
(default 300, 1,000 shots each) four ways:

- gateway: a real ``qorch gateway`` process (``devenv/gateway.py``, ``--auth none``,
  plus every ``--gateway-arg``, written with ``=`` since the value starts with ``--``:
  ``--gateway-arg=--batch-size --gateway-arg=64``); the
  N jobs are submitted over HTTP with at most K (default 16) between submission and Done
  at once, as an operator with K subtasks in flight would; one poller asks for all pending
  jobs in one ``POST /v1/jobs/status`` with ``wait_seconds`` ``--wait-s`` (default 10: a
  long poll, answered as soon as one of them is final), again as soon as it is answered;
  ``--wait-s 0``: a short poll every ``--poll-ms`` (default 20) instead. Total wall time
  from the first submission to the last job seen Done, per-job latency (submission to
  seen Done) median and p95, and where it goes: the submission's answer (the gateway
  parses and transpiles before answering 202), the gateway's own queue and execution
  seconds, the batches it ran (from the jobs' ``remote_job_id``);
- one batched call: the N circuits in ONE SamplerV2 ``run()`` here, parse (``load_qasm``),
  transpile (the gateway's ``Transpiler``: ``generate_preset_pass_manager`` at its
  optimization level, for the backend the gateway builds, ``build_backend``), run
  (``QuantumBackendAdapter.run_here``: the gateway's own primitive call) and result
  conversion (``sampler_result``) all timed;
- one call per circuit: the same, one ``run([pub]).result()`` per circuit, sequentially;
- lone job: one job at a time through an idle gateway (``--lone`` times, default 20),
  submitted with ``wait_seconds`` ``--wait-s`` (the gateway answers once the job is
  final, as the variational worker asks; ``--wait-s 0``: submitted, then short-polled),
  against one direct parse + transpile + run + convert here, each after the same 0.2 s
  pause; medians and their ratio.

Targets (issue 16): gateway / batched call <= 1.3, lone job gateway / direct <= 2.

Each path is warmed up once before it is timed (the gateway: /healthz, then one job, which
waits for its transpiler and simulator processes and runs in its own process, then four at
once, which run as a batch in its simulator process). The direct calls run in this process
after the gateway has been stopped, never beside it. Also reported: the CPU seconds of the
gateway process and its worker processes (psutil) during the timed N jobs, this process's
CPU seconds as the client, and the gateway's log: bytes in all, bytes written during the N
jobs, and which loggers wrote it. The figures move with the machine's load (the load
average at the start and the end is printed): compare runs made on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # type: ignore[import-untyped]  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from devenv import gateway as gateway_harness  # noqa: E402
from qorch.api.backend import Provider  # noqa: E402
from qorch.gateway.backends import (  # noqa: E402
    PreparedCircuit,
    QuantumBackendAdapter,
    build_backend,
)
from qorch.quantum.circuits import load_qasm  # noqa: E402
from qorch.quantum.results import sampler_result  # noqa: E402

GHZ3 = (
    'OPENQASM 3.0; include "stdgates.inc"; '
    "qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;"
)
FINAL = frozenset({"Done", "Error", "Cancelled"})
LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
TARGET_THROUGHPUT_RATIO = 1.3
TARGET_LONE_RATIO = 2.0
# Before each lone job, through the gateway and direct alike: an idle machine (caches and
# cores gone cold) is what a lone job meets.
LONE_PAUSE_S = 0.2


@dataclass(frozen=True)
class Case:
    """One backend as the gateway serves it and as this process builds it."""

    label: str
    provider: Provider
    backend: str | None

    @classmethod
    def parse(cls, label: str) -> Case:
        if label == "aer":
            return cls(label, Provider.AER, None)
        if label.startswith("fake_"):
            return cls(label, Provider.FAKE, label)
        raise argparse.ArgumentTypeError(f"backend {label!r}: 'aer' or 'fake_<device>'")

    @property
    def submit_name(self) -> str:
        """The backend name a submission names (the gateway's adapter name)."""
        return self.backend or "aer_simulator"

    def gateway_args(self) -> list[str]:
        args = ["--provider", self.provider.value]
        return [*args, "--backend", self.backend] if self.backend else args


@dataclass(frozen=True)
class Settings:
    jobs: int
    in_flight: int
    shots: int
    lone: int
    poll_s: float
    wait_s: float  # > 0: long poll (``wait_seconds``), else a short poll every poll_s
    gateway_args: tuple[str, ...]
    log_dir: Path


@dataclass(frozen=True)
class JobTiming:
    """One gateway job as the client saw it (``time.perf_counter`` seconds)."""

    job_id: str
    submitted: float  # the POST started
    accepted: float  # the POST was answered (202; 200 when it waited for the job's end)
    seen_done: float  # the first answer that had it finished
    job: dict[str, Any]  # the job as that answer had it

    @property
    def latency(self) -> float:
        return self.seen_done - self.submitted


# ---- the gateway ----------------------------------------------------------------------


class GatewayClient:
    """Submits jobs and polls all pending ones in one ``POST /v1/jobs/status`` per round."""

    def __init__(
        self, url: str, session: aiohttp.ClientSession, poll_s: float, wait_s: float = 0.0
    ) -> None:
        self.url = url
        self.session = session
        self.poll_s = poll_s
        self.wait_s = wait_s
        self.polls = 0
        self._pending: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self._submitted = asyncio.Event()

    async def poll_forever(self) -> None:
        while True:
            if self.wait_s <= 0:
                await asyncio.sleep(self.poll_s)
            elif not self._pending:
                self._submitted.clear()
                await self._submitted.wait()
            if not self._pending:
                continue
            ids = list(self._pending)
            body: dict[str, Any] = {"job_ids": ids}
            if self.wait_s > 0:
                body["wait_seconds"] = self.wait_s
            async with self.session.post(f"{self.url}/v1/jobs/status", json=body) as resp:
                resp.raise_for_status()
                body = await resp.json()
            now = time.perf_counter()
            self.polls += 1
            final = [job for job in body["jobs"] if job["phase"] in FINAL]
            for job in final:
                future = self._pending.pop(job["job_id"], None)
                if future is not None and not future.done():
                    future.set_result((now, job))
            if self.wait_s > 0 and not final:
                # Answered early without a final job (one the gateway does not know): no
                # busy loop of requests; a long poll that just timed out loses 20 ms.
                await asyncio.sleep(self.poll_s)

    async def run_job(
        self, job_id: str, backend: str, shots: int, *, wait_on_submit: bool = False
    ) -> JobTiming:
        """``wait_on_submit`` (with a long poll's ``wait_s``): the submission waits for the
        job to be final, and a final answer ends it without a status request."""
        payload: dict[str, Any] = {
            "job_id": job_id,
            "backend": backend,
            "qasm": GHZ3,
            "shots": shots,
        }
        if wait_on_submit and self.wait_s > 0:
            payload["wait_seconds"] = self.wait_s
        submitted = time.perf_counter()
        while True:
            async with self.session.post(f"{self.url}/v1/jobs", json=payload) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 429:  # queue full (--max-queued): as asked, wait
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                    continue
                if resp.status not in (200, 202):
                    raise RuntimeError(f"submitting {job_id}: {resp.status} {body}")
                break
        accepted = time.perf_counter()
        if body["phase"] in FINAL:
            seen_done, job = accepted, body
        else:
            future: asyncio.Future[tuple[float, dict[str, Any]]] = (
                asyncio.get_running_loop().create_future()
            )
            self._pending[job_id] = future
            self._submitted.set()
            seen_done, job = await future
        if job["phase"] != "Done":
            raise RuntimeError(f"job {job_id}: {job['phase']}: {job['message']}")
        if job["result"]["shots"] != shots:
            raise RuntimeError(f"job {job_id}: {job['result']['shots']} shots, not {shots}")
        return JobTiming(job_id, submitted, accepted, seen_done, job)


def _gateway_side(t: JobTiming) -> float:
    """The submission's answer plus the gateway's queue and execution seconds: the latency
    without the wait for the next status poll (and the status answer itself)."""
    if t.seen_done == t.accepted:  # the submission's answer had it final: nothing polled
        return t.latency
    queue = float(t.job["queue_seconds"])
    return t.accepted - t.submitted + queue + float(t.job["execution_seconds"] or 0.0)


def cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of process ``pid`` and each of its descendants, by pid."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds: dict[int, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = float(times.user + times.system)
    return seconds


def cpu_delta(before: dict[int, float], after: dict[int, float], main: int) -> dict[str, float]:
    spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    return {
        "main": spent.get(main, 0.0),
        "workers": sum(s for pid, s in spent.items() if pid != main),
    }


def own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _size(path: Path) -> int:
    return path.stat().st_size


def log_loggers(path: Path) -> list[dict[str, Any]]:
    """Lines and bytes of the gateway's log by level and logger (``LEVEL name``), most bytes
    first; lines not in the gateway's log format count as ``other``."""
    lines: Counter[str] = Counter()
    size: Counter[str] = Counter()
    with path.open("rb") as log:
        for raw in log:
            parts = raw.decode(errors="replace").split(" ", 4)
            key = f"{parts[2]} {parts[3]}" if len(parts) > 3 and parts[2] in LOG_LEVELS else "other"
            lines[key] += 1
            size[key] += len(raw)
    return [{"logger": k, "lines": lines[k], "bytes": b} for k, b in size.most_common()]


def batches(timings: Sequence[JobTiming]) -> Counter[int]:
    """Batch size -> how many batches of that size, from the jobs' ``remote_job_id``
    (``<provider job>#<index>`` when several jobs ran as PUBs of one provider job)."""
    groups: Counter[str] = Counter(
        str(t.job["remote_job_id"]).rpartition("#")[0] or str(t.job["remote_job_id"])
        for t in timings
    )
    return Counter(groups.values())


async def gateway_phase(case: Case, settings: Settings) -> dict[str, Any]:
    log_path = settings.log_dir / f"gateway-{case.label}.log"
    log_path.unlink(missing_ok=True)
    started = time.perf_counter()
    gw = gateway_harness.start(log_path, *case.gateway_args(), *settings.gateway_args)
    try:
        healthy = time.perf_counter() - started
        timeout = aiohttp.ClientTimeout(total=300)
        connector = aiohttp.TCPConnector(limit=settings.in_flight + 8)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            client = GatewayClient(gw.url, session, settings.poll_s, settings.wait_s)
            poller = asyncio.create_task(client.poll_forever())
            try:
                return await _gateway_runs(case, settings, gw, client, healthy, log_path)
            finally:
                poller.cancel()
    finally:
        gw.stop()


async def _gateway_runs(
    case: Case,
    settings: Settings,
    gw: Any,  # devenv.gateway.GatewayProcess
    client: GatewayClient,
    healthy: float,
    log_path: Path,
) -> dict[str, Any]:
    name, shots = case.submit_name, settings.shots
    t0 = time.perf_counter()
    # Waits for the transpiler and simulator processes. A lone small job runs in the
    # gateway's own process and a batch in its simulator's: each builds its noise model
    # once, so both are warmed, as in a gateway that has been running.
    await client.run_job("warm-up", name, shots)
    await asyncio.gather(*(client.run_job(f"warm-up-{i}", name, shots) for i in range(4)))
    warm_up = time.perf_counter() - t0

    # N jobs, at most K in flight.
    log_before = _size(log_path)
    gateway_cpu_before, client_cpu_before = cpu_seconds(gw.process.pid), own_cpu()
    polls_before = client.polls
    slots = asyncio.Semaphore(settings.in_flight)

    async def one(i: int) -> JobTiming:
        async with slots:
            return await client.run_job(f"job-{i}", name, shots)

    timings = await asyncio.gather(*(one(i) for i in range(settings.jobs)))
    gateway_cpu = cpu_delta(gateway_cpu_before, cpu_seconds(gw.process.pid), gw.process.pid)
    client_cpu = own_cpu() - client_cpu_before
    polls = client.polls - polls_before
    log_during = _size(log_path) - log_before
    total = max(t.seen_done for t in timings) - min(t.submitted for t in timings)

    # One job at a time on an idle gateway.
    lone: list[JobTiming] = []
    for i in range(settings.lone):
        await asyncio.sleep(LONE_PAUSE_S)  # idle: the previous job's batch has wound down
        lone.append(await client.run_job(f"lone-{i}", name, shots, wait_on_submit=True))
    gateway_cpu_all = sum(cpu_seconds(gw.process.pid).values())

    def ms(values: Sequence[float]) -> dict[str, float]:
        return {
            "median": statistics.median(values) * 1e3,
            "p95": float(np.percentile(np.asarray(values), 95)) * 1e3,
            "max": max(values) * 1e3,
        }

    sizes = batches(timings)
    return {
        "start_to_healthy_s": healthy,
        "warm_up_job_s": warm_up,
        "total_s": total,
        "jobs_per_s": len(timings) / total,
        "latency_ms": ms([t.latency for t in timings]),
        "submit_answer_ms": ms([t.accepted - t.submitted for t in timings]),
        "queue_ms": ms([float(t.job["queue_seconds"]) for t in timings]),
        "execution_ms": ms([float(t.job["execution_seconds"] or 0.0) for t in timings]),
        "after_execution_ms": ms([t.latency - _gateway_side(t) for t in timings]),
        "batches": sum(sizes.values()),
        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "status_polls": polls,
        "gateway_cpu_s": gateway_cpu,
        "gateway_cpu_s_whole_life": gateway_cpu_all,
        "client_cpu_s": client_cpu,
        "lone_ms": ms([t.latency for t in lone]),
        "lone_submit_answer_ms": ms([t.accepted - t.submitted for t in lone]),
        "lone_execution_ms": ms([float(t.job["execution_seconds"] or 0.0) for t in lone]),
        "lone_gateway_side_ms": ms([_gateway_side(t) for t in lone]),
        "log_path": str(log_path),
        "log_bytes_during_jobs": log_during,
        "log_bytes": _size(log_path),
        "log_by_logger": log_loggers(log_path),
    }


# ---- direct calls in this process -----------------------------------------------------


def prepare(adapter: QuantumBackendAdapter, qasm: str) -> PreparedCircuit:
    """What the gateway's transpiler process does with a submission: parse, transpile."""
    return adapter.prepare(load_qasm(qasm), ())


def batched_call(
    adapter: QuantumBackendAdapter,
    qasms: Sequence[str],
    shots: int,
    parts: dict[str, float] | None = None,
) -> int:
    """``parts``, when given, gets the seconds of each part: prepare (parse + transpile),
    run (one SamplerV2 job, to its result) and convert."""
    t0 = time.perf_counter()
    prepared = [prepare(adapter, q) for q in qasms]
    t1 = time.perf_counter()
    result = adapter.run_here("sampler", prepared, shots).result()
    t2 = time.perf_counter()
    converted = [sampler_result(result[i]) for i in range(len(prepared))]
    if parts is not None:
        parts.update(prepare=t1 - t0, run=t2 - t1, convert=time.perf_counter() - t2)
    return sum(int(r["shots"]) for r in converted)


def per_circuit_calls(adapter: QuantumBackendAdapter, qasms: Sequence[str], shots: int) -> int:
    got = 0
    for qasm in qasms:
        result = adapter.run_here("sampler", [prepare(adapter, qasm)], shots).result()
        got += int(sampler_result(result[0])["shots"])
    return got


def direct_phase(case: Case, settings: Settings) -> dict[str, Any]:
    adapter = build_backend(case.provider, case.backend, isolate=False)
    qasms = [GHZ3] * settings.jobs
    shots = settings.shots
    per_circuit_calls(adapter, [GHZ3], shots)  # warm-up: pass manager, noise model
    parts: dict[str, float] = {}
    figures: dict[str, Any] = {"batched_parts_s": parts}
    for key in ("batched", "per_circuit"):
        cpu0, t0 = time.process_time(), time.perf_counter()
        if key == "batched":
            got = batched_call(adapter, qasms, shots, parts)
        else:
            got = per_circuit_calls(adapter, qasms, shots)
        figures[f"{key}_s"] = time.perf_counter() - t0
        figures[f"{key}_cpu_s"] = time.process_time() - cpu0
        if got != shots * len(qasms):
            raise RuntimeError(f"{key}: {got} shots in all, not {shots * len(qasms)}")
    lone: list[float] = []
    for _ in range(settings.lone):
        time.sleep(LONE_PAUSE_S)  # as before each lone gateway job: the same idle machine
        t0 = time.perf_counter()
        per_circuit_calls(adapter, [GHZ3], shots)
        lone.append(time.perf_counter() - t0)
    figures["lone_ms"] = {
        "median": statistics.median(lone) * 1e3,
        "p95": float(np.percentile(np.asarray(lone), 95)) * 1e3,
        "max": max(lone) * 1e3,
    }
    return figures


# ---- the report -----------------------------------------------------------------------


def run(cases: Sequence[Case], settings: Settings) -> dict[str, Any]:
    load_start = os.getloadavg()
    results: dict[str, Any] = {}
    for case in cases:
        gateway = asyncio.run(gateway_phase(case, settings))
        direct = direct_phase(case, settings)  # the gateway has been stopped
        results[case.label] = {
            "gateway": gateway,
            "direct": direct,
            "ratio_gateway_batched": gateway["total_s"] / direct["batched_s"],
            "ratio_lone": gateway["lone_ms"]["median"] / direct["lone_ms"]["median"],
            "ratio_lone_gateway_side": (
                gateway["lone_gateway_side_ms"]["median"] / direct["lone_ms"]["median"]
            ),
        }
    return {
        "settings": {
            "jobs": settings.jobs,
            "in_flight": settings.in_flight,
            "shots": settings.shots,
            "lone": settings.lone,
            "poll_ms": settings.poll_s * 1e3,
            "wait_s": settings.wait_s,
            "gateway_args": list(settings.gateway_args),
            "circuit": GHZ3,
        },
        "backends": results,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }


def _verdict(value: float, target: float) -> str:
    return f"{value:.2f} ({'met' if value <= target else 'NOT met'})"


def _sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{n}x{size}" for size, n in sizes.items())


def show(r: dict[str, Any]) -> None:
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no 80-column wrap
        console = Console(width=140)
    s = r["settings"]
    extra = " ".join(s["gateway_args"]) or "none"
    poll = (
        f"long-polled (wait_seconds {s['wait_s']:g})"
        if s.get("wait_s")
        else f"polled every {s['poll_ms']:.0f} ms"
    )
    table = Table(
        title=(
            f"Gateway vs direct SamplerV2: {s['jobs']} GHZ-3 circuits x {s['shots']:,} shots; "
            f"gateway: {s['in_flight']} in flight, status {poll} (one batched request), "
            f"extra gateway flags: {extra}"
        )
    )
    labels = list(r["backends"])
    table.add_column("")
    for label in labels:
        table.add_column(label, justify="right")

    def row(name: str, cell: Any, style: str | None = None) -> None:
        table.add_row(name, *(cell(r["backends"][label]) for label in labels), style=style)

    row("gateway total s", lambda b: f"{b['gateway']['total_s']:.2f}", "bold")
    row("batched call total s", lambda b: f"{b['direct']['batched_s']:.2f}", "bold")
    row(
        "  batched: prepare / run / convert s",
        lambda b: " / ".join(f"{v:.2f}" for v in b["direct"]["batched_parts_s"].values()),
    )
    row("per-circuit calls total s", lambda b: f"{b['direct']['per_circuit_s']:.2f}", "bold")
    row(
        f"ratio gateway / batched (target <= {TARGET_THROUGHPUT_RATIO})",
        lambda b: _verdict(b["ratio_gateway_batched"], TARGET_THROUGHPUT_RATIO),
        "bold",
    )
    row("gateway jobs/s", lambda b: f"{b['gateway']['jobs_per_s']:.1f}")
    row(
        "gateway per-job latency median / p95 ms",
        lambda b: (
            f"{b['gateway']['latency_ms']['median']:.0f} / {b['gateway']['latency_ms']['p95']:.0f}"
        ),
        "bold",
    )
    for key, name in (
        ("submit_answer_ms", "  submit answered (parse+transpile)"),
        ("queue_ms", "  gateway queue"),
        ("execution_ms", "  gateway execution"),
        ("after_execution_ms", "  rest (until the poll sees Done)"),
    ):
        row(
            f"{name} median / p95 ms",
            lambda b, k=key: f"{b['gateway'][k]['median']:.0f} / {b['gateway'][k]['p95']:.0f}",
        )
    row("gateway batches run", lambda b: str(b["gateway"]["batches"]))
    row("  count x size", lambda b: _sizes(b["gateway"]["batch_sizes"]))
    row("status polls", lambda b: str(b["gateway"]["status_polls"]))
    row(
        "lone job: gateway / direct median ms",
        lambda b: (
            f"{b['gateway']['lone_ms']['median']:.1f} / {b['direct']['lone_ms']['median']:.1f}"
        ),
        "bold",
    )
    row(
        f"lone job ratio (target <= {TARGET_LONE_RATIO})",
        lambda b: _verdict(b["ratio_lone"], TARGET_LONE_RATIO),
        "bold",
    )
    row(
        "  lone: submission answered / gateway execution ms",
        lambda b: (
            f"{b['gateway']['lone_submit_answer_ms']['median']:.1f} / "
            f"{b['gateway']['lone_execution_ms']['median']:.1f}"
        ),
    )
    row(
        "  lone: gateway side (no poll wait) ms / ratio",
        lambda b: (
            f"{b['gateway']['lone_gateway_side_ms']['median']:.1f} / "
            f"{b['ratio_lone_gateway_side']:.2f}"
        ),
    )
    row(
        "gateway CPU s in the N jobs: main / workers",
        lambda b: (
            f"{b['gateway']['gateway_cpu_s']['main']:.2f} / "
            f"{b['gateway']['gateway_cpu_s']['workers']:.2f}"
        ),
    )
    row("client (this process) CPU s in N jobs", lambda b: f"{b['gateway']['client_cpu_s']:.2f}")
    row(
        "direct CPU s: batched / per-circuit",
        lambda b: f"{b['direct']['batched_cpu_s']:.2f} / {b['direct']['per_circuit_cpu_s']:.2f}",
    )
    row("gateway CPU s, whole life", lambda b: f"{b['gateway']['gateway_cpu_s_whole_life']:.2f}")
    row("gateway log bytes (whole life)", lambda b: f"{b['gateway']['log_bytes']:,}")
    row("  written during the N jobs", lambda b: f"{b['gateway']['log_bytes_during_jobs']:,}")
    row("gateway start to /healthz s", lambda b: f"{b['gateway']['start_to_healthy_s']:.1f}")
    row("warm-up job s", lambda b: f"{b['gateway']['warm_up_job_s']:.1f}")
    console.print(table)
    for label in labels:
        g = r["backends"][label]["gateway"]
        top = "; ".join(
            f"{e['logger']}: {e['lines']:,} lines, {e['bytes']:,} B" for e in g["log_by_logger"][:4]
        )
        console.print(f"{label} gateway log ({g['log_path']}), by logger: {top}")
    console.print(
        f"machine: {r['machine']}, {r['cpus']} CPUs, Python {r['python']}; load average "
        f"{r['load_start'][0]:.2f} / {r['load_start'][1]:.2f} (1 / 5 min) at start, "
        f"{r['load_end'][0]:.2f} / {r['load_end'][1]:.2f} at the end"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 jobs, 5 lone jobs")
    parser.add_argument("--jobs", type=int, default=None, help="circuits (default 300)")
    parser.add_argument("--in-flight", type=int, default=16, help="gateway jobs at once")
    parser.add_argument("--shots", type=int, default=1000)
    parser.add_argument(
        "--backends", default="aer,fake_manila", help="comma-separated: aer, fake_<device>"
    )
    parser.add_argument("--lone", type=int, default=None, help="lone jobs (default 20)")
    parser.add_argument(
        "--wait-s", type=float, default=10.0, help="long poll's wait_seconds (0: short polls)"
    )
    parser.add_argument("--poll-ms", type=float, default=20.0, help="short poll interval")
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument of `qorch gateway` (repeatable): --gateway-arg=--batch-size "
        "--gateway-arg=64",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--log-dir", type=Path, default=None, help="gateway logs (default: temp)")
    args = parser.parse_args()
    cases = [Case.parse(b.strip()) for b in args.backends.split(",") if b.strip()]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="qorch-bench-gateway-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        jobs=args.jobs or (60 if args.quick else 300),
        in_flight=args.in_flight,
        shots=args.shots,
        lone=args.lone or (5 if args.quick else 20),
        poll_s=args.poll_ms / 1e3,
        wait_s=args.wait_s,
        gateway_args=tuple(args.gateway_arg),
        log_dir=log_dir,
    )
    result = run(cases, settings)
    show(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
