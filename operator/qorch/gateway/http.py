"""HTTP API of the quantum gateway (aiohttp). The OpenAPI document is served at
``/openapi.json``; ``/metrics`` is the Prometheus exposition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qorch.gateway.service import GatewayRequestError, GatewayService, Submission

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024  # a QASM program of 64 KiB plus JSON overhead fits easily
CALIBRATION_REFRESH_SECONDS = 60.0
SERVICE_KEY = web.AppKey("service", GatewayService)

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "backend": {"type": "string"},
        "phase": {"type": "string", "enum": ["Queued", "Running", "Done", "Error", "Cancelled"]},
        "message": {"type": "string"},
        "result": {"type": ["object", "null"]},
        "qpu_seconds": {"type": "number"},
        "queue_seconds": {"type": "number"},
        "execution_seconds": {"type": ["number", "null"]},
    },
}
ERROR = {
    "description": "Refused; `detail` says which field and why.",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {"type": "string"}}}
        }
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
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["job_id", "backend", "qasm"],
                                "properties": {
                                    "job_id": {"type": "string", "maxLength": 253},
                                    "backend": {"type": "string"},
                                    "qasm": {
                                        "type": "string",
                                        "description": "OpenQASM 3 (or 2) source",
                                    },
                                    "primitive": {
                                        "type": "string",
                                        "enum": ["sampler", "estimator"],
                                    },
                                    "shots": {"type": "integer", "minimum": 1, "maximum": 1000000},
                                    "observables": {"type": "array", "items": {"type": "string"}},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "Accepted",
                        "content": {"application/json": {"schema": JOB_SCHEMA}},
                    },
                    "400": ERROR,
                    "404": ERROR,
                    "409": ERROR,
                    "413": ERROR,
                    "422": ERROR,
                },
            }
        },
        "/v1/jobs/status": {
            "post": {
                "summary": "States of several jobs; unknown ids are left out.",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "job_ids": {"type": "array", "items": {"type": "string"}}
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"jobs": {"type": "array", "items": JOB_SCHEMA}},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "One job.",
                "responses": {"200": {"description": "OK"}, "404": ERROR},
            },
            "delete": {
                "summary": "Cancel a queued job.",
                "responses": {"200": {"description": "Cancelled"}, "404": ERROR, "409": ERROR},
            },
        },
        "/v1/backend": {
            "get": {
                "summary": "Backend, queue and calibration summary.",
                "responses": {"200": {"description": "OK"}},
            }
        },
        "/healthz": {"get": {"summary": "Liveness.", "responses": {"200": {"description": "OK"}}}},
        "/metrics": {
            "get": {"summary": "Prometheus metrics.", "responses": {"200": {"description": "OK"}}}
        },
    },
}


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except GatewayRequestError as exc:
        return _error(exc.status, exc.message)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise GatewayRequestError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise GatewayRequestError(400, "body must be a JSON object")
    return body


def _submission(body: dict[str, Any]) -> Submission:
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
    if not 0 < len(job_id) <= 253:
        raise GatewayRequestError(400, "field 'job_id' must have 1..253 characters")
    return Submission(
        job_id=job_id,
        backend=field("backend", str),
        qasm=field("qasm", str),
        primitive=field("primitive", str, "sampler"),
        shots=field("shots", int, 1024),
        observables=tuple(observables),
    )


async def submit(request: web.Request) -> web.Response:
    record = request.app[SERVICE_KEY].submit(_submission(await _json(request)))
    return web.json_response(record.to_json(), status=202)


async def status(request: web.Request) -> web.Response:
    ids = (await _json(request)).get("job_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise GatewayRequestError(400, "field 'job_ids' must be a list of strings")
    records = request.app[SERVICE_KEY].status(ids)
    return web.json_response({"jobs": [r.to_json() for r in records]})


async def get_job(request: web.Request) -> web.Response:
    records = request.app[SERVICE_KEY].status([request.match_info["job_id"]])
    if not records:
        raise GatewayRequestError(404, f"unknown job {request.match_info['job_id']!r}")
    return web.json_response(records[0].to_json())


async def cancel(request: web.Request) -> web.Response:
    record = request.app[SERVICE_KEY].cancel(request.match_info["job_id"])
    return web.json_response(record.to_json())


async def backend(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    adapter = service.adapter
    return web.json_response(
        {
            "name": adapter.name,
            "provider": adapter.provider.value,
            "numQubits": adapter.num_qubits,
            "queueLength": len(service.queued()),
            "pendingJobs": adapter.pending_jobs(),
            "calibration": adapter.calibration().model_dump(mode="json"),
        }
    )


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVICE_KEY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(service: GatewayService) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY_BYTES)
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
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(background)
    return app


async def _refresh(service: GatewayService) -> None:
    while True:
        await asyncio.sleep(CALIBRATION_REFRESH_SECONDS)
        try:
            await asyncio.to_thread(service.refresh_calibration)
        except Exception as exc:  # a flaky backend must not stop the gateway
            log.warning("calibration refresh failed: %s", exc)
