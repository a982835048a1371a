"""The operator reads a variational pod's progress from its worker (``/progress`` on the
metrics port): a real HTTP server on a loopback address, as a pod's IP. What comes from
inside a pod is bounded: the spend is never taken from it, an oversized answer is refused,
and an IPv6 pod address works."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any, cast

import pytest
from aiohttp import web

from qorch.operator.podspec import METRICS_PORT
from qorch.operator.runtime import PROGRESS_MAX_BYTES, Runtime
from qorch.orchestrator.snapshot import PodPhase, PodState

PROGRESS = {"optimizer": "COBYLA", "evaluations": 7, "bestEnergy": -1.8,
            "qpuSeconds": {"qa": 3.5}, "spentUSD": 1e9, "route": "qa"}  # fmt: skip


def pod(ip: str) -> PodState:
    return PodState("p", "vqe", 1, PodPhase.RUNNING, ip=ip, variational=True)


async def read_from(host: str, body: Callable[[], bytes]) -> PodState:
    (read,) = await read_all(host, body, [pod(host)])
    return read


async def read_all(host: str, body: Callable[[], bytes], pods: list[PodState]) -> list[PodState]:
    """``pods`` through ``Runtime.with_progress``, a worker serving ``body`` at ``host``."""

    async def progress(_: web.Request) -> web.Response:
        return web.Response(body=body(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/progress", progress)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, METRICS_PORT).start()
    except OSError as exc:
        await runner.cleanup()
        pytest.skip(f"cannot listen on {host}:{METRICS_PORT}: {exc}")
    # Only the progress session is used: no cluster behind this runtime.
    runtime = cast(Runtime, object.__new__(Runtime))
    runtime._progress_session = None
    try:
        return await runtime.with_progress(pods)
    finally:
        if runtime._progress_session is not None:
            await runtime._progress_session.close()
        await runner.cleanup()


def test_progress_is_read_but_never_the_spend() -> None:
    read = asyncio.run(read_from("127.0.0.77", lambda: json.dumps(PROGRESS).encode()))
    assert read.progress is not None
    assert read.progress.evaluations == 7 and read.progress.qpuSeconds == {"qa": 3.5}
    assert read.progress.spentUSD == 0.0  # the operator prices; the pod cannot say


def test_a_progress_another_pod_serves_from_a_reused_address_is_dropped() -> None:
    other = {**PROGRESS, "subtask": "vqe", "attempt": 2}  # this pod is attempt 1
    read = asyncio.run(read_from("127.0.0.80", lambda: json.dumps(other).encode()))
    assert read.progress is None
    same = {**PROGRESS, "subtask": "vqe", "attempt": 1}
    assert asyncio.run(read_from("127.0.0.81", lambda: json.dumps(same).encode())).progress


def test_an_oversized_or_malformed_answer_is_refused() -> None:
    padded: dict[str, Any] = {**PROGRESS, "padding": "x" * PROGRESS_MAX_BYTES}
    assert (
        asyncio.run(read_from("127.0.0.78", lambda: json.dumps(padded).encode())).progress is None
    )
    assert asyncio.run(read_from("127.0.0.79", lambda: b"[1, 2]")).progress is None
    deep = asyncio.run(read_from("127.0.0.82", lambda: b"[" * 60000))  # RecursionError
    assert deep.progress is None


def test_an_ipv6_pod_address_is_bracketed() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    read = asyncio.run(read_from("::1", lambda: json.dumps(PROGRESS).encode()))
    assert read.progress is not None and read.progress.evaluations == 7


def test_pods_no_worker_serves_are_kept_as_they_are_without_a_request() -> None:
    """Only a running variational pod with an address is asked; the others come back as
    they were, in their order, beside one that is read (and without one: no session).
    The others' address serves a progress too: asked, they would come back with it."""
    others = [
        PodState("a", "step", 1, PodPhase.RUNNING, ip="127.0.0.79"),  # not variational
        PodState("b", "vqe2", 1, PodPhase.PENDING, ip="127.0.0.79", variational=True),
        PodState("c", "vqe3", 1, PodPhase.RUNNING, variational=True),  # no address yet
    ]
    runtime = cast(Runtime, object.__new__(Runtime))
    runtime._progress_session = None
    assert asyncio.run(runtime.with_progress(others)) == others
    assert runtime._progress_session is None
    body = json.dumps(PROGRESS).encode()
    *kept, read = asyncio.run(read_all("127.0.0.79", lambda: body, [*others, pod("127.0.0.79")]))
    assert kept == others and all(p.progress is None for p in kept)
    assert read.progress is not None and read.progress.evaluations == 7
