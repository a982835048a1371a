"""HTTP API of the quantum gateway (aiohttp). The OpenAPI document is served at
``/openapi.json``; ``/metrics`` is the Prometheus exposition."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qorch.gateway.service import (
    MAX_MESSAGE_CHARS,
    GatewayRequestError,
    GatewayService,
    Submission,
    bounded,
)

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024  # a QASM program of 64 KiB plus JSON overhead fits easily
CALIBRATION_REFRESH_SECONDS = 60.0
# How often a calibration file (``--calibration-file``) is checked for a change, by default.
CALIBRATION_FILE_CHECK_SECONDS = 5.0
SERVICE_KEY = web.AppKey("service", GatewayService)
# The longest a status request or a submission may wait for a job to finish
# (``wait_seconds``): under the usual 60 s idle timeouts of proxies between a client and
# the gateway.
MAX_WAIT_SECONDS = 30

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "job_id",
        "backend",
        "phase",
        "message",
        "result",
        "permanent",
        "remote_job_id",
        "qpu_seconds",
        "queue_seconds",
        "execution_seconds",
        "queue_position",
    ],
    "additionalProperties": False,
    "properties": {
        "job_id": {"type": "string"},
        "backend": {"type": "string"},
        "phase": {"type": "string", "enum": ["Queued", "Running", "Done", "Error", "Cancelled"]},
        "message": {
            "type": "string",
            "maxLength": MAX_MESSAGE_CHARS,
            "description": "Why it failed, or what the gateway did unusually (re-run, "
            "re-attached); empty otherwise.",
        },
        "result": {"type": ["object", "null"]},
        "permanent": {
            "type": "boolean",
            "description": "Error only: true when running the same circuit on this backend "
            "again would fail the same way (the circuit does not fit the target); false for "
            "timeouts, network and provider outages, which a retry may get past.",
        },
        "remote_job_id": {
            "type": ["string", "null"],
            "description": "The provider's job id once it has one; `<id>#<n>` when several "
            "jobs ran as the PUBs of one provider job. Send it back as `remote_job_id` when "
            "resubmitting a job this gateway no longer knows.",
        },
        "qpu_seconds": {"type": "number"},
        "queue_seconds": {"type": "number"},
        "execution_seconds": {"type": ["number", "null"]},
        "queue_position": {
            "type": ["integer", "null"],
            "minimum": 0,
            "description": "Queued jobs only: how many jobs are ahead of it in this gateway's "
            "queue (it runs them in submission order); null when not known (a provider that "
            "queues jobs itself, IBM) or not queued.",
        },
    },
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string", "maxLength": MAX_MESSAGE_CHARS}},
}


def _error_response(description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
        **extra,
    }


ERROR = _error_response("Refused; `detail` says which field and why.")
INTERNAL = _error_response("Unexpected failure of the gateway; `detail` says what, bounded.")
QUEUE_FULL = _error_response(
    "The queue is full (`--max-queued`); retry after `Retry-After` seconds.",
    headers={"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
)
JOB_RESPONSE = {"content": {"application/json": {"schema": JOB_SCHEMA}}}
JOB_ID_MAX = 253
SUBMISSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["job_id", "backend", "qasm"],
    "additionalProperties": False,
    "properties": {
        "job_id": {"type": "string", "minLength": 1, "maxLength": JOB_ID_MAX},
        "backend": {"type": "string"},
        "qasm": {"type": "string", "description": "OpenQASM 3 (or 2) source"},
        "primitive": {"type": "string", "enum": ["sampler", "estimator"]},
        "shots": {"type": "integer", "minimum": 1, "maximum": 1000000},
        "observables": {"type": "array", "items": {"type": "string"}},
        "remote_job_id": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": JOB_ID_MAX,
            "description": "The provider's job this job already ran as (its `remote_job_id`): "
            "a gateway that does not know the job re-attaches to it where the provider can.",
        },
        "wait_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_WAIT_SECONDS,
            "description": "Answer once the job is final (200), or after this many seconds "
            "(202): a short job's result comes with its submission, without a status "
            "request. Not part of the job: a resubmission may wait otherwise. 0 (the "
            "default): answer once the job is queued.",
        },
    },
}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Qorch quantum gateway", "version": "v1"},
    "paths": {
        "/v1/jobs": {
            "post": {
                "summary": "Submit a circuit evaluation (idempotent by job_id).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": SUBMISSION_SCHEMA}},
                },
                "responses": {
                    "200": {
                        "description": "Final within the `wait_seconds` asked for",
                        **JOB_RESPONSE,
                    },
                    "202": {"description": "Accepted (or already known)", **JOB_RESPONSE},
                    "400": ERROR,
                    "404": ERROR,
                    "409": ERROR,
                    "413": ERROR,
                    "422": ERROR,
                    "429": QUEUE_FULL,
                    "500": INTERNAL,
                },
            }
        },
        "/v1/jobs/status": {
            "post": {
                "summary": "States of several jobs; unknown ids are left out.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "job_ids": {"type": "array", "items": {"type": "string"}},
                                    "wait_seconds": {
                                        "type": "number",
                                        "minimum": 0,
                                        "maximum": MAX_WAIT_SECONDS,
                                        "description": "Long poll: answer once one of the "
                                        "jobs is final (Done, Error, Cancelled), or after "
                                        "this many seconds; at once when one is final "
                                        "already or unknown. 0 (the default): at once.",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["jobs"],
                                    "additionalProperties": False,
                                    "properties": {"jobs": {"type": "array", "items": JOB_SCHEMA}},
                                }
                            }
                        },
                    },
                    "400": ERROR,
                    "413": ERROR,
                    "500": INTERNAL,
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "parameters": [
                {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "summary": "One job.",
                "responses": {
                    "200": {"description": "OK", **JOB_RESPONSE},
                    "404": ERROR,
                    "500": INTERNAL,
                },
            },
            "delete": {
                "summary": "Cancel a job (a running one where the provider can stop it).",
                "responses": {
                    "200": {"description": "Cancelled, or already finished", **JOB_RESPONSE},
                    "404": ERROR,
                    "409": ERROR,
                    "500": INTERNAL,
                },
            },
        },
        "/v1/backend": {
            "get": {
                "summary": "Backend, queue and calibration summary.",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": [
                                        "name",
                                        "provider",
                                        "numQubits",
                                        "queueLength",
                                        "pendingJobs",
                                        "calibration",
                                    ],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "provider": {"type": "string"},
                                        "numQubits": {"type": "integer"},
                                        "queueLength": {"type": "integer"},
                                        "pendingJobs": {"type": ["integer", "null"]},
                                        "calibration": {"type": "object"},
                                        "calibrationDate": {
                                            "type": ["string", "null"],
                                            "description": "The device's own last update "
                                            "date of the calibration the gateway reads from "
                                            "its calibration file; null without one.",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "500": INTERNAL,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness.",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "500": INTERNAL,
                },
            }
        },
    },
}


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": bounded(detail)}, status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error is JSON with a bounded ``detail``: refusals with their own status,
    anything unexpected a 500 (logged with its traceback), never a text page or a dropped
    connection."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except GatewayRequestError as exc:
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return _error(exc.status, exc.message, retry)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, exc.reason, allow)
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
        raise GatewayRequestError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise GatewayRequestError(400, "body must be a JSON object")
    return body


def _refuse_unknown(body: dict[str, Any], known: Iterable[str]) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise GatewayRequestError(
            400,
            f"unknown field{'s' if len(unknown) > 1 else ''} {names}; "
            f"known: {', '.join(sorted(known))}",
        )


def _submission(body: dict[str, Any]) -> Submission:
    _refuse_unknown(body, SUBMISSION_SCHEMA["properties"])

    def field(name: str, kind: type, default: Any = ...) -> Any:
        value = body.get(name, default)
        if value is ...:
            raise GatewayRequestError(400, f"missing field {name!r}")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise GatewayRequestError(400, f"field {name!r} must be {kind.__name__}")
        return value

    observables = field("observables", list, [])
    if not all(isinstance(o, str) for o in observables):
        raise GatewayRequestError(400, "field 'observables' must be a list of strings")
    job_id = field("job_id", str)
    if not 0 < len(job_id) <= JOB_ID_MAX:
        raise GatewayRequestError(400, f"field 'job_id' must have 1..{JOB_ID_MAX} characters")
    remote_job_id = body.get("remote_job_id")
    if remote_job_id is not None:
        remote_job_id = field("remote_job_id", str)
        if not 0 < len(remote_job_id) <= JOB_ID_MAX:
            raise GatewayRequestError(
                400, f"field 'remote_job_id' must have 1..{JOB_ID_MAX} characters"
            )
    return Submission(
        job_id=job_id,
        backend=field("backend", str),
        qasm=field("qasm", str),
        primitive=field("primitive", str, "sampler"),
        shots=field("shots", int, 1024),
        observables=tuple(observables),
        remote_job_id=remote_job_id,
    )


def _wait_seconds(body: dict[str, Any]) -> float:
    wait = body.get("wait_seconds", 0)
    if (
        isinstance(wait, bool)
        or not isinstance(wait, int | float)
        or not 0 <= wait <= MAX_WAIT_SECONDS
    ):
        raise GatewayRequestError(
            400, f"field 'wait_seconds' must be a number from 0 to {MAX_WAIT_SECONDS}"
        )
    return float(wait)


async def submit(request: web.Request) -> web.Response:
    body = await _json(request)
    sub = _submission(body)
    wait = _wait_seconds(body)
    service = request.app[SERVICE_KEY]
    record = await service.submit(sub)
    if wait and not record.final:
        # The job's record as it is now; gone from the status list only if forgotten.
        record = next(iter(await service.wait_for_final([sub.job_id], wait)), record)
    return web.json_response(record.to_json(), status=200 if wait and record.final else 202)


async def status(request: web.Request) -> web.Response:
    body = await _json(request)
    _refuse_unknown(body, ["job_ids", "wait_seconds"])
    ids = body.get("job_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise GatewayRequestError(400, "field 'job_ids' must be a list of strings")
    wait = _wait_seconds(body)
    service = request.app[SERVICE_KEY]
    records = await service.wait_for_final(ids, wait) if wait else service.status(ids)
    positions = service.queue_positions()
    jobs = [r.to_json(positions.get(r.submission.job_id)) for r in records]
    return web.json_response({"jobs": jobs})


async def get_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    records = service.status([request.match_info["job_id"]])
    if not records:
        raise GatewayRequestError(404, f"unknown job {request.match_info['job_id']!r}")
    record = records[0]
    return web.json_response(
        record.to_json(service.queue_positions().get(record.submission.job_id))
    )


async def cancel(request: web.Request) -> web.Response:
    record = await request.app[SERVICE_KEY].cancel(request.match_info["job_id"])
    return web.json_response(record.to_json())


async def backend(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    adapter = service.adapter
    # Both may be network calls (IBM: backend.status(), properties): off the event loop.
    pending = await asyncio.to_thread(adapter.pending_jobs)
    calibration = await asyncio.to_thread(adapter.calibration)
    return web.json_response(
        {
            "name": adapter.name,
            "provider": adapter.provider.value,
            "numQubits": adapter.num_qubits,
            "queueLength": len(service.queued()),
            "pendingJobs": pending,
            "calibration": calibration.model_dump(mode="json"),
            "calibrationDate": adapter.calibration_date,
        }
    )


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def openapi_document(backend_name: str) -> dict[str, Any]:
    """``OPENAPI`` for the gateway of ``backend_name``: the only backend a submission may
    name, and a submission that works as the example."""
    doc = copy.deepcopy(OPENAPI)
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"]["properties"]["backend"] = {"type": "string", "enum": [backend_name]}
    body["example"] = {
        "job_id": "example-bell",
        "backend": backend_name,
        "qasm": 'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; '
        "cx q[0], q[1]; c = measure q;",
        "shots": 100,
    }
    return doc


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SERVICE_KEY].adapter.name))


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVICE_KEY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(
    service: GatewayService,
    auth: Middleware | None = None,
    *,
    calibration_check_seconds: float = CALIBRATION_FILE_CHECK_SECONDS,
) -> web.Application:
    """``auth`` (``qorch.gateway.auth.auth_middleware``) runs first, before any handler.
    ``calibration_check_seconds``: how often the backend's calibration file, if it has
    one, is checked for a change."""
    middlewares = [errors] if auth is None else [auth, errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    app.router.add_post("/v1/jobs", submit)
    app.router.add_post("/v1/jobs/status", status)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_delete("/v1/jobs/{job_id}", cancel)
    app.router.add_get("/v1/backend", backend)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)

    async def background(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(service.run_forever()), asyncio.create_task(_refresh(service))]
        if service.adapter.calibration_file is not None:
            tasks.append(
                asyncio.create_task(_follow_calibration(service, calibration_check_seconds))
            )
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await service.close()

    async def release_waiters(app: web.Application) -> None:
        service.stop_waiting()  # long polls answer now: a shutdown does not wait for them

    app.on_shutdown.append(release_waiters)
    app.cleanup_ctx.append(background)
    return app


async def _refresh(service: GatewayService) -> None:
    while True:
        await asyncio.sleep(CALIBRATION_REFRESH_SECONDS)
        try:
            await service.refresh_calibration()
        except Exception as exc:  # a flaky backend must not stop the gateway
            log.warning("calibration refresh failed: %s", exc)


async def _follow_calibration(service: GatewayService, interval: float) -> None:
    """Check the calibration file every ``interval`` seconds, as a mounted ConfigMap that a
    platform team updates (the kubelet swaps the file): the gateway then reports and
    simulates the new calibration. Between checks a batch checks too before it runs."""
    while True:
        await asyncio.sleep(interval)
        try:
            await service.reload_calibration()
        except Exception:  # a bug here must not stop the gateway
            log.exception("checking the calibration file failed")
