"""``HttpGatewayClient``: the operator's client of ``qorch gateway`` services (aiohttp).

Whatever a gateway (or a proxy in front of it) answers, callers see either the value they
asked for or a ``GatewayError``: bodies are checked here, once, so a text error page, an
empty body or a job of an unexpected shape never surfaces as a JSONDecodeError, KeyError
or ValueError deep in the operator."""

from __future__ import annotations

import datetime as dt
import email.utils
import json as jsonlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from qorch.gateway.base import GatewayError, GatewayTarget, JobRequest
from qorch.orchestrator.snapshot import JobPhase, JobState

MAX_DETAIL_CHARS = 512  # of a non-JSON error body quoted in the error message


class GatewayResponseError(GatewayError):
    """A ``GatewayError`` with what the HTTP exchange said: ``status`` is the HTTP status
    (None when no response came), ``retry_after`` the seconds a 429 / 503 asked to wait
    (None when it did not say, or said something unreadable)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.retry_after = retry_after


class HttpGatewayClient:
    """``backend`` arguments are QuantumBackend names; ``targets`` (kept current from the
    QuantumBackend objects by the operator) says where each one's gateway answers.
    ``token_file`` holds the bearer token the gateways check (a projected ServiceAccount
    token): read anew for every request, since the kubelet rotates it."""

    def __init__(
        self,
        targets: dict[str, GatewayTarget] | None = None,
        timeout_seconds: float = 10.0,
        *,
        token_file: str | Path | None = None,
    ) -> None:
        self.targets: dict[str, GatewayTarget] = targets if targets is not None else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._token_file = Path(token_file) if token_file is not None else None

    def _headers(self) -> dict[str, str]:
        if self._token_file is None:
            return {}
        try:
            token = self._token_file.read_text().strip()
        except OSError as exc:  # not mounted yet, or mid-rotation: try again later
            raise GatewayResponseError(
                f"cannot read the token file {self._token_file}: {exc}", retryable=True
            ) from exc
        return {"Authorization": f"Bearer {token}"}

    def _target(self, backend: str) -> GatewayTarget:
        try:
            return self.targets[backend]
        except KeyError:
            raise GatewayError(
                f"no gateway known for backend {backend!r}", retryable=True
            ) from None

    def _url(self, backend: str) -> str:
        return self._target(backend).url.rstrip("/")

    async def _request(
        self, method: str, url: str, json: Any = None, *, wait_seconds: float = 0.0
    ) -> Any:
        """The one place requests go through. Returns the decoded JSON of a 2xx answer;
        raises ``GatewayResponseError`` for anything else. ``wait_seconds``: what the
        gateway may wait before answering, on top of the client's timeout."""
        headers = self._headers()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        extra: dict[str, Any] = {}  # none: the session's timeout
        if wait_seconds:
            total = (self._timeout.total or 0.0) + wait_seconds
            extra["timeout"] = aiohttp.ClientTimeout(total=total)
        try:
            async with self._session.request(
                method, url, json=json, headers=headers, **extra
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayResponseError(f"{method} {url}: {exc}", retryable=True) from exc
        try:
            body: Any = jsonlib.loads(raw) if raw else None
            decoded = raw != b""
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            body, decoded = None, False
        if status >= 400:
            if isinstance(body, dict) and isinstance(body.get("detail"), str):
                detail = body["detail"]
            else:
                detail = raw.decode("utf-8", "replace")[:MAX_DETAIL_CHARS] or "(empty body)"
            raise GatewayResponseError(
                f"{method} {url}: {status} {detail}",
                retryable=status >= 500 or status == 429,
                status=status,
                retry_after=retry_after,
            )
        if not decoded:
            raise _malformed(method, url, status, "body is not JSON")
        return body

    async def submit(self, request: JobRequest) -> None:
        await self.submit_and_wait(request, 0.0)

    async def submit_and_wait(self, request: JobRequest, wait_seconds: float) -> JobState:
        """Submit, and have the gateway answer once the job is final or after
        ``wait_seconds`` (at most 30, the gateway's limit; 0: once it is queued). The job as
        the answer has it: a short job comes back done, with no status request."""
        payload: dict[str, Any] = {
            "job_id": request.job_id,
            "backend": self._target(request.backend).backend_name,
            "qasm": request.qasm,
            "primitive": request.primitive,
            "shots": request.shots,
            "observables": list(request.observables),
        }
        if request.remote_job_id is not None:
            payload["remote_job_id"] = request.remote_job_id
        if wait_seconds:
            payload["wait_seconds"] = wait_seconds
        url = f"{self._url(request.backend)}/v1/jobs"
        body = await self._request("POST", url, json=payload, wait_seconds=wait_seconds)
        return _job_or_raise(body, "POST", url)

    async def status(
        self, backend: str, job_ids: Iterable[str], *, wait_seconds: float = 0.0
    ) -> dict[str, JobState]:
        """The jobs' states (unknown ids left out). ``wait_seconds``: a long poll, answered
        once one of the jobs is final or after that long."""
        url = f"{self._url(backend)}/v1/jobs/status"
        payload: dict[str, Any] = {"job_ids": list(job_ids)}
        if wait_seconds:
            payload["wait_seconds"] = wait_seconds
        body = await self._request("POST", url, json=payload, wait_seconds=wait_seconds)
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(jobs, list):
            raise _malformed("POST", url, 200, "expected an object with a 'jobs' list")
        states = (_job_or_raise(job, "POST", url) for job in jobs)
        return {state.job_id: state for state in states}

    async def cancel(self, backend: str, job_id: str) -> None:
        url = f"{self._url(backend)}/v1/jobs/{job_id}"
        _job_or_raise(await self._request("DELETE", url), "DELETE", url)

    async def backend_info(self, backend: str) -> dict[str, Any]:
        """Backend, queue and calibration summary (``GET /v1/backend``)."""
        url = f"{self._url(backend)}/v1/backend"
        info = await self._request("GET", url)
        if not isinstance(info, dict):
            raise _malformed("GET", url, 200, "expected a JSON object")
        return info

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class MalformedJobError(ValueError):
    """A job object that does not have the documented shape; the message says which field."""


def job_state(job: Any) -> JobState:
    """A gateway's job JSON as a ``JobState``. ``job_id`` and ``phase`` are required; the
    other fields may be missing (older gateways) but not of another type."""
    if not isinstance(job, dict):
        raise MalformedJobError(f"a job must be an object, not {type(job).__name__}")

    def typed(name: str, kinds: tuple[type, ...], default: Any = ...) -> Any:
        value = job.get(name, default)
        if value is ...:
            raise MalformedJobError(f"job has no {name!r}")
        if value is not default and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        ):
            raise MalformedJobError(f"job field {name!r} has type {type(value).__name__}")
        return value

    job_id = typed("job_id", (str,))
    phase = typed("phase", (str,))
    try:
        parsed_phase = JobPhase(phase)
    except ValueError:
        raise MalformedJobError(f"job {job_id!r} has unknown phase {phase!r}") from None
    return JobState(
        job_id=job_id,
        phase=parsed_phase,
        message=typed("message", (str,), ""),
        result=typed("result", (dict,), None),
        qpu_seconds=float(typed("qpu_seconds", (int, float), 0.0)),
        permanent=typed("permanent", (bool,), False),
        remote_job_id=typed("remote_job_id", (str,), None),
        queue_seconds=_seconds(typed("queue_seconds", (int, float), None)),
        execution_seconds=_seconds(typed("execution_seconds", (int, float), None)),
        queue_position=_position(typed("queue_position", (int,), None)),
    )


def _position(value: int | None) -> int | None:
    return value if value is not None and value >= 0 else None


def _seconds(value: float | None) -> float | None:
    """A duration from a gateway: finite and not negative, else not known."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _job_or_raise(job: Any, method: str, url: str) -> JobState:
    try:
        return job_state(job)
    except MalformedJobError as exc:
        raise _malformed(method, url, 200, str(exc)) from exc


def _malformed(method: str, url: str, status: int, why: str) -> GatewayResponseError:
    # A 2xx the client cannot read: likely a proxy or a gateway mid-upgrade; try again.
    return GatewayResponseError(
        f"{method} {url}: malformed response: {why}", retryable=True, status=status
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
