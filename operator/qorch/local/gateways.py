"""The quantum backends of a local run: one ``qorch gateway`` per backend, in this process.

Each is the gateway the chart deploys (``GatewayService`` behind ``make_app``), served on
127.0.0.1 at a free port, so that the operator's own ``HttpGatewayClient`` submits to it and
a variational loop's worker process sends its batches to it, exactly as in a cluster. Only
local providers run here: the Aer simulator, and IBM devices' fake backends with their
recorded calibrations.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from qorch.api.backend import CalibrationSummary, Provider, QuantumBackendSpec
from qorch.gateway.backends import BackendConfigError, build_backend
from qorch.gateway.base import GatewayTarget
from qorch.gateway.client import HttpGatewayClient
from qorch.gateway.http import make_app
from qorch.gateway.service import GatewayService
from qorch.metrics.exporters import GatewayMetrics
from qorch.orchestrator.snapshot import BackendInfo


class LocalBackendError(ValueError):
    """A backend that cannot run here (unknown fake device, too many qubits asked)."""


@dataclass
class LocalGateway:
    name: str  # the QuantumBackend's name, as workflows say it
    spec: QuantumBackendSpec
    service: GatewayService
    runner: web.AppRunner
    url: str
    calibration: CalibrationSummary | None

    def info(self) -> BackendInfo:
        """The backend as the planner sees a QuantumBackend's status."""
        adapter = self.service.adapter
        return BackendInfo(
            name=self.name,
            provider=self.spec.provider,
            num_qubits=adapter.num_qubits,
            healthy=True,
            queue_length=len(self.service.queued()),
            price_per_qpu_second=self.spec.pricePerQpuSecondUSD,
            calibration=self.calibration,
            backend_name=adapter.name,
        )


class LocalGateways:
    """Start with ``await LocalGateways.start(specs)``; ``close()`` stops them."""

    def __init__(self, gateways: dict[str, LocalGateway]) -> None:
        self.gateways = gateways
        self.targets = {
            name: GatewayTarget(url=g.url, backend_name=g.service.adapter.name)
            for name, g in gateways.items()
        }
        self.client = HttpGatewayClient(self.targets, timeout_seconds=30.0)

    @classmethod
    async def start(cls, specs: dict[str, QuantumBackendSpec]) -> LocalGateways:
        started: dict[str, LocalGateway] = {}
        try:
            for name, spec in specs.items():
                started[name] = await _start_one(name, spec)
        except BaseException:
            await cls(started).close()
            raise
        return cls(started)

    def infos(self) -> list[BackendInfo]:
        return [g.info() for g in self.gateways.values()]

    async def close(self) -> None:
        await self.client.close()
        for gateway in self.gateways.values():
            await gateway.runner.cleanup()


async def _start_one(name: str, spec: QuantumBackendSpec) -> LocalGateway:
    if spec.provider is Provider.IBM:
        raise LocalBackendError(f"backend {name!r}: IBM devices do not run locally")
    try:
        adapter = await asyncio.to_thread(
            build_backend,
            spec.provider,
            spec.backendName,
            max_qubits=spec.numQubits if spec.provider is Provider.AER else None,
            # Simulated here, in a worker thread of this process: no child per job.
            isolate=False,
        )
    except BackendConfigError as exc:
        raise LocalBackendError(f"backend {name!r}: {exc}") from exc
    service = GatewayService(
        adapter,
        GatewayMetrics.create(quantum_backend=name),
        price_per_qpu_second=spec.pricePerQpuSecondUSD,
        bill_held_seconds=True,  # a local device's jobs are billed the seconds they held it
        transpile_workers=1,  # a laptop's run: one transpiler process per backend
    )
    runner = web.AppRunner(make_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    calibration = await asyncio.to_thread(adapter.calibration)
    return LocalGateway(name, spec, service, runner, f"http://{host}:{port}", calibration)
