"""``HttpGatewayClient`` against a real aiohttp server on loopback that answers what each
test scripts: whatever comes back, the operator sees a ``GatewayError`` (never a
JSONDecodeError, KeyError, ...), with the HTTP status and, for 429, the Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from qorch.gateway.base import GatewayError, GatewayTarget, JobRequest
from qorch.gateway.client import HttpGatewayClient
from qorch.orchestrator.snapshot import JobPhase, JobState

JOB = {
    "job_id": "j1",
    "backend": "aer",
    "phase": "Done",
    "message": "",
    "result": {"counts": {"00": 5, "11": 5}},
    "qpu_seconds": 1.5,
    "permanent": False,
    "remote_job_id": None,
}


@dataclass
class Script:
    """What the server answers next (status, raw body, headers) and what it received."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    received: list[Any] = field(default_factory=list)

    def answer(self, status: int, body: bytes | str | Any, **headers: str) -> None:
        self.status = status
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.body = body
        self.headers = headers


@dataclass
class Gateway:
    script: Script
    client: HttpGatewayClient


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.Response]], timeout_seconds: float
) -> AsyncIterator[HttpGatewayClient]:
    """A client of backend "qpu" against a loopback server answering every path with
    ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = HttpGatewayClient(
        {"qpu": GatewayTarget(str(server.make_url("/")), "aer")}, timeout_seconds=timeout_seconds
    )
    try:
        yield client
    finally:
        await client.close()
        await server.close()


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[Gateway]:
    script = Script()

    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        script.received.append(json.loads(raw) if raw else None)
        return web.Response(status=script.status, body=script.body, headers=script.headers)

    async with serving(handler, timeout_seconds=5) as client:
        yield Gateway(script, client)


async def _status(gw: Gateway) -> dict[str, JobState]:
    return await gw.client.status("qpu", ["j1"])


@pytest.mark.parametrize(
    ("status", "body", "retryable", "says"),
    [
        (500, "Internal Server Error", True, "500"),
        (502, b"", True, "502"),
        (503, "<html>upstream down</html>", True, "upstream down"),
        (404, {"detail": "unknown backend 'x'"}, False, "unknown backend 'x'"),
        (422, "not json at all", False, "not json at all"),
        (400, [1, 2], False, "400"),
        (409, {"no_detail": True}, False, "409"),
    ],
)
async def test_error_responses_of_any_body_raise_gateway_error_with_the_status(
    gateway: Gateway, status: int, body: Any, retryable: bool, says: str
) -> None:
    gateway.script.answer(status, body)
    with pytest.raises(GatewayError) as err:
        await _status(gateway)
    assert err.value.retryable is retryable
    assert getattr(err.value, "status", None) == status
    assert says in str(err.value)


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [("7", 7.0), ("0", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None), (None, None)],
)
async def test_429_is_retryable_and_carries_retry_after(
    gateway: Gateway, retry_after: str | None, seconds: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    gateway.script.answer(429, {"detail": "queue is full: 1000 jobs queued"}, **headers)
    with pytest.raises(GatewayError) as err:
        await gateway.client.submit(JobRequest("j1", "qpu", "OPENQASM 3.0;"))
    assert err.value.retryable
    assert getattr(err.value, "status", None) == 429
    assert getattr(err.value, "retry_after", "missing") == seconds
    assert "queue is full" in str(err.value)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "[]",
        '"jobs"',
        {"jobs": "j1"},
        {"jobs": [1]},
        {"jobs": [{**JOB, "phase": "Exploded"}]},
        {"jobs": [{k: v for k, v in JOB.items() if k != "job_id"}]},
        {"jobs": [{k: v for k, v in JOB.items() if k != "phase"}]},
        {"jobs": [{**JOB, "job_id": 7}]},
        {"jobs": [{**JOB, "qpu_seconds": "lots"}]},
        {"jobs": [{**JOB, "result": [1, 2]}]},
        {"jobs": [{**JOB, "message": None}]},
        {"jobs": [{**JOB, "permanent": "yes"}]},
        {"jobs": [{**JOB, "remote_job_id": 12}]},
    ],
)
async def test_a_2xx_body_of_the_wrong_shape_is_a_retryable_gateway_error(
    gateway: Gateway, body: Any
) -> None:
    gateway.script.answer(200, body)
    with pytest.raises(GatewayError) as err:
        await _status(gateway)
    assert err.value.retryable
    assert getattr(err.value, "status", None) == 200


async def test_malformed_bodies_of_submit_cancel_and_backend_info_are_gateway_errors(
    gateway: Gateway,
) -> None:
    gateway.script.answer(202, "accepted!")
    with pytest.raises(GatewayError):
        await gateway.client.submit(JobRequest("j1", "qpu", "OPENQASM 3.0;"))
    gateway.script.answer(202, {"job_id": "j1"})  # not a job: no phase
    with pytest.raises(GatewayError):
        await gateway.client.submit(JobRequest("j1", "qpu", "OPENQASM 3.0;"))
    gateway.script.answer(200, [])
    with pytest.raises(GatewayError):
        await gateway.client.cancel("qpu", "j1")
    gateway.script.answer(200, "null")
    with pytest.raises(GatewayError):
        await gateway.client.backend_info("qpu")


async def test_permanent_and_remote_job_id_map_into_job_state(gateway: Gateway) -> None:
    failed = {
        **JOB,
        "phase": "Error",
        "result": None,
        "message": "circuit has unbound parameters",
        "permanent": True,
        "remote_job_id": "d1q2w3e4",
    }
    gateway.script.answer(200, {"jobs": [failed, {**JOB, "job_id": "j2"}]})
    states = await gateway.client.status("qpu", ["j1", "j2"])
    assert states["j1"] == JobState(
        "j1",
        JobPhase.ERROR,
        "circuit has unbound parameters",
        None,
        1.5,
        permanent=True,
        remote_job_id="d1q2w3e4",
    )
    assert states["j2"].phase is JobPhase.DONE
    assert not states["j2"].permanent
    assert states["j2"].result == {"counts": {"00": 5, "11": 5}}
    # A gateway from before these fields existed: the defaults.
    old = {k: v for k, v in JOB.items() if k not in ("permanent", "remote_job_id")}
    gateway.script.answer(200, {"jobs": [old]})
    assert (await _status(gateway))["j1"] == JobState(
        "j1", JobPhase.DONE, "", {"counts": {"00": 5, "11": 5}}, 1.5
    )


async def test_submit_sends_remote_job_id_only_when_the_request_has_one(gateway: Gateway) -> None:
    gateway.script.answer(202, {**JOB, "phase": "Queued", "result": None})
    await gateway.client.submit(JobRequest("j1", "qpu", "OPENQASM 3.0;"))
    await gateway.client.submit(JobRequest("j1", "qpu", "OPENQASM 3.0;", remote_job_id="d1q2"))
    first, second = gateway.script.received
    assert "remote_job_id" not in first
    assert second["remote_job_id"] == "d1q2"
    assert second["backend"] == "aer"  # the gateway's backend name, not the cluster's


async def test_an_unreachable_gateway_is_retryable_without_a_status() -> None:
    client = HttpGatewayClient({"qpu": GatewayTarget("http://127.0.0.1:9", "aer")})
    try:
        with pytest.raises(GatewayError) as err:
            await client.status("qpu", ["j1"])
    finally:
        await client.close()
    assert err.value.retryable
    assert getattr(err.value, "status", "missing") is None


async def test_a_gateway_that_does_not_answer_times_out_unless_asked_to_wait() -> None:
    """A request gives up after the client's timeout; one that asks the gateway to wait
    (``wait_seconds``) gives it that much longer."""

    async def slow(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(1.0)
        return web.json_response({**JOB, "job_id": body.get("job_id", "j1")}, status=200)

    request = JobRequest(job_id="j1", backend="qpu", qasm="OPENQASM 3.0;")
    async with serving(slow, timeout_seconds=0.3) as client:
        with pytest.raises(GatewayError) as err:
            await client.submit(request)
        assert err.value.retryable
        with pytest.raises(GatewayError):
            await client.status("qpu", ["j1"])
        state = await client.submit_and_wait(request, wait_seconds=2.0)
        assert state.phase is JobPhase.DONE
