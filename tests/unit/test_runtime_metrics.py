"""The operator's cached metrics view: one Prometheus query round at a time."""

from __future__ import annotations

import asyncio
import threading
import time

from qorch.operator.runtime import Runtime
from qorch.operator.settings import OperatorSettings
from qorch.orchestrator.placement import RulePolicy
from qorch.orchestrator.snapshot import MetricsView


class SlowReader:
    """Counts reads and how many overlap, as a slow Prometheus would be seen."""

    def __init__(self) -> None:
        self.reads = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()

    def read(self) -> MetricsView:
        with self._lock:
            self.reads += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        time.sleep(0.05)
        with self._lock:
            self.concurrent -= 1
        return MetricsView(available=True)


def runtime_with(reader: SlowReader, refresh: float) -> Runtime:
    settings = OperatorSettings(metrics_refresh_seconds=refresh)
    return Runtime(
        settings=settings,
        core=None,  # type: ignore[arg-type]
        custom=None,  # type: ignore[arg-type]
        gateway=None,  # type: ignore[arg-type]
        applier=None,  # type: ignore[arg-type]
        policy=RulePolicy(),
        gateway_targets={},
        metrics_reader=reader,
    )


def test_fifty_daemons_share_one_prometheus_reading_when_the_cache_expires() -> None:
    reader = SlowReader()
    runtime = runtime_with(reader, refresh=60)

    async def many() -> list[MetricsView | None]:
        return await asyncio.gather(*(runtime.metrics_view() for _ in range(50)))

    views = asyncio.run(many())
    assert all(v is not None and v.available for v in views)
    assert reader.reads == 1  # before: one query round per daemon (50)
    assert reader.max_concurrent == 1


def test_an_expired_view_is_read_again() -> None:
    reader = SlowReader()
    runtime = runtime_with(reader, refresh=0)

    async def twice() -> None:
        await runtime.metrics_view()
        await asyncio.sleep(0.01)
        await runtime.metrics_view()

    asyncio.run(twice())
    assert reader.reads == 2
