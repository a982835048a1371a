"""The PromQL the orchestrator needs, behind a small interface with a fake.

``PrometheusReader.read()`` never raises: when Prometheus is unreachable or answers
garbage it returns ``MetricsView(available=False, reason=...)`` so the operator can say
so in a status condition and carry on with pod and job states.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from qorch.orchestrator.snapshot import BackendMetrics, MetricsView

log = logging.getLogger(__name__)

QUEUE_WINDOW = "10m"
WORKER_WINDOW = "30m"

BACKEND_GAUGES: dict[str, str] = {
    "queue_length": "max by (backend) (qorch_gateway_queue_length)",
    "pending_jobs": "max by (backend) (qorch_backend_pending_jobs)",
    "two_qubit_error": "max by (backend) (qorch_backend_median_two_qubit_error)",
    "readout_error": "max by (backend) (qorch_backend_median_readout_error)",
    "t1_seconds": "max by (backend) (qorch_backend_median_t1_seconds)",
    "t2_seconds": "max by (backend) (qorch_backend_median_t2_seconds)",
    "up": "max by (backend) (qorch_backend_up)",
    "queue_wait_p50_seconds": (
        "histogram_quantile(0.5, sum by (backend, le) "
        f"(rate(qorch_gateway_queue_wait_seconds_bucket[{QUEUE_WINDOW}])))"
    ),
    "execution_p50_seconds": (
        "histogram_quantile(0.5, sum by (backend, le) "
        f"(rate(qorch_gateway_execution_seconds_bucket[{QUEUE_WINDOW}])))"
    ),
}
# With no increase inside the window (a quiet gateway, or jobs that finished before the
# first scrape) the rate-based quantile is NaN: fall back to the whole histogram.
BACKEND_FALLBACKS: dict[str, str] = {
    "queue_wait_p50_seconds": (
        "histogram_quantile(0.5, sum by (backend, le) (qorch_gateway_queue_wait_seconds_bucket))"
    ),
    "execution_p50_seconds": (
        "histogram_quantile(0.5, sum by (backend, le) (qorch_gateway_execution_seconds_bucket))"
    ),
}
# Workers are short-lived, one run each: a rate would often see no increase at all. The
# largest value each worker's buckets reached in the window, summed over workers, is the
# distribution of the runs seen in that window.
WORKER_EXECUTION_P50 = (
    "histogram_quantile(0.5, sum by (method, device, le) "
    f"(max_over_time(qorch_worker_execution_seconds_bucket[{WORKER_WINDOW}])))"
)
GPU_UTILISATION = "avg(qorch_worker_gpu_utilisation_ratio)"


class MetricsReader(Protocol):
    def read(self) -> MetricsView: ...


@dataclass
class StaticMetricsReader:
    """A fake for tests and the digital twin: returns the view it was given."""

    view: MetricsView = field(default_factory=lambda: MetricsView(available=True))

    def read(self) -> MetricsView:
        return self.view


class PrometheusReader:
    def __init__(self, url: str, timeout_seconds: float = 5.0) -> None:
        from prometheus_api_client import PrometheusConnect

        self.url = url
        self._prom = PrometheusConnect(url=url, disable_ssl=True)
        self._timeout = timeout_seconds

    def _query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._prom.custom_query(
            promql, params={"timeout": f"{int(self._timeout * 1000)}ms"}
        )
        return result

    def read(self) -> MetricsView:
        try:
            backends: dict[str, BackendMetrics] = {}
            for attr, promql in BACKEND_GAUGES.items():
                queries = [
                    promql,
                    *([BACKEND_FALLBACKS[attr]] if attr in BACKEND_FALLBACKS else []),
                ]
                for query in queries:
                    for sample in self._query(query):
                        name = sample["metric"].get("backend")
                        value = _value(sample)
                        current = backends.get(name or "", BackendMetrics())
                        if name is None or value is None or getattr(current, attr) is not None:
                            continue
                        converted: Any = bool(value) if attr == "up" else value
                        backends[name] = replace(current, **{attr: converted})
            workers = {
                (s["metric"].get("method", ""), s["metric"].get("device", "")): v
                for s in self._query(WORKER_EXECUTION_P50)
                if (v := _value(s)) is not None
            }
            gpu = next(
                (v for s in self._query(GPU_UTILISATION) if (v := _value(s)) is not None), None
            )
        except Exception as exc:  # connection refused, timeouts, HTTP errors, bad JSON
            reason = f"Prometheus at {self.url} unavailable: {type(exc).__name__}: {exc}"
            log.warning("%s", reason)
            return MetricsView(available=False, reason=reason[:1024])
        return MetricsView(
            available=True,
            backends=backends,
            worker_execution_p50_seconds=workers,
            gpu_utilisation=gpu,
        )


def _value(sample: dict[str, Any]) -> float | None:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value
