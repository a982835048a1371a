"""``HttpGatewayClient``: the operator's client of ``qorch gateway`` services (aiohttp)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiohttp

from qorch.gateway.base import GatewayError, GatewayTarget, JobRequest
from qorch.orchestrator.snapshot import JobPhase, JobState


class HttpGatewayClient:
    """``backend`` arguments are QuantumBackend names; ``targets`` (kept current from the
    QuantumBackend objects by the operator) says where each one's gateway answers."""

    def __init__(
        self, targets: dict[str, GatewayTarget] | None = None, timeout_seconds: float = 10.0
    ) -> None:
        self.targets: dict[str, GatewayTarget] = targets if targets is not None else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _target(self, backend: str) -> GatewayTarget:
        try:
            return self.targets[backend]
        except KeyError:
            raise GatewayError(
                f"no gateway known for backend {backend!r}", retryable=True
            ) from None

    def _url(self, backend: str) -> str:
        return self._target(backend).url.rstrip("/")

    async def _request(self, method: str, url: str, json: Any = None) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, url, json=json) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    detail = body.get("detail") if isinstance(body, dict) else body
                    raise GatewayError(
                        f"{method} {url}: {resp.status} {detail}",
                        retryable=resp.status >= 500 or resp.status == 429,
                    )
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayError(f"{method} {url}: {exc}", retryable=True) from exc

    async def submit(self, request: JobRequest) -> None:
        await self._request(
            "POST",
            f"{self._url(request.backend)}/v1/jobs",
            json={
                "job_id": request.job_id,
                "backend": self._target(request.backend).backend_name,
                "qasm": request.qasm,
                "primitive": request.primitive,
                "shots": request.shots,
                "observables": list(request.observables),
            },
        )

    async def status(self, backend: str, job_ids: Iterable[str]) -> dict[str, JobState]:
        body = await self._request(
            "POST", f"{self._url(backend)}/v1/jobs/status", json={"job_ids": list(job_ids)}
        )
        return {job["job_id"]: job_state(job) for job in body.get("jobs", [])}

    async def cancel(self, backend: str, job_id: str) -> None:
        await self._request("DELETE", f"{self._url(backend)}/v1/jobs/{job_id}")

    async def backend_info(self, backend: str) -> dict[str, Any]:
        """Backend, queue and calibration summary (``GET /v1/backend``)."""
        info: dict[str, Any] = await self._request("GET", f"{self._url(backend)}/v1/backend")
        return info

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def job_state(job: dict[str, Any]) -> JobState:
    return JobState(
        job_id=job["job_id"],
        phase=JobPhase(job["phase"]),
        message=job.get("message", ""),
        result=job.get("result"),
        qpu_seconds=float(job.get("qpu_seconds") or 0.0),
    )
