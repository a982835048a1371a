"""The PromQL the orchestrator needs, behind a small interface with a fake.

``PrometheusReader.read()`` never raises: when Prometheus is unreachable or answers
garbage it returns ``MetricsView(available=False, reason=...)`` so the operator can say
so in a status condition and carry on with pod and job states.

The join to QuantumBackend objects: a gateway started with ``--quantum-backend NAME`` (the
chart passes it) labels its series ``quantum_backend=NAME``; those are read into
``MetricsView.backends[NAME]``. A gateway without it labels them with the provider's
backend name only (``backend=fake_torino``), which several QuantumBackends may share; those
go to ``MetricsView.by_backend_name`` and ``join_backends`` hands them to the one
QuantumBackend with that ``spec.backendName`` — never when it would be a guess.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from qorch.orchestrator.snapshot import BackendInfo, BackendMetrics, MetricsView

log = logging.getLogger(__name__)

QUEUE_WINDOW = "10m"
WORKER_WINDOW = "30m"
# A gateway's identity in PromQL: its provider's backend name and, when it was told, the
# QuantumBackend object it serves (absent from its series otherwise).
BY = "backend, quantum_backend"

BACKEND_GAUGES: dict[str, str] = {
    "queue_length": f"max by ({BY}) (qorch_gateway_queue_length)",
    "pending_jobs": f"max by ({BY}) (qorch_backend_pending_jobs)",
    "two_qubit_error": f"max by ({BY}) (qorch_backend_median_two_qubit_error)",
    "readout_error": f"max by ({BY}) (qorch_backend_median_readout_error)",
    "t1_seconds": f"max by ({BY}) (qorch_backend_median_t1_seconds)",
    "t2_seconds": f"max by ({BY}) (qorch_backend_median_t2_seconds)",
    "up": f"max by ({BY}) (qorch_backend_up)",
    "queue_wait_p50_seconds": (
        f"histogram_quantile(0.5, sum by ({BY}, le) "
        f"(rate(qorch_gateway_queue_wait_seconds_bucket[{QUEUE_WINDOW}])))"
    ),
    "execution_p50_seconds": (
        f"histogram_quantile(0.5, sum by ({BY}, le) "
        f"(rate(qorch_gateway_execution_seconds_bucket[{QUEUE_WINDOW}])))"
    ),
}
# With no increase inside the window (a quiet gateway, or jobs that finished before the
# first scrape) the rate-based quantile is NaN: fall back to the whole histogram.
BACKEND_FALLBACKS: dict[str, str] = {
    "queue_wait_p50_seconds": (
        f"histogram_quantile(0.5, sum by ({BY}, le) (qorch_gateway_queue_wait_seconds_bucket))"
    ),
    "execution_p50_seconds": (
        f"histogram_quantile(0.5, sum by ({BY}, le) (qorch_gateway_execution_seconds_bucket))"
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
            # By QuantumBackend object (the quantum_backend label), and by the provider's
            # backend name for series of gateways that did not say which object they serve.
            labelled: dict[str, BackendMetrics] = {}
            unlabelled: dict[str, BackendMetrics] = {}
            for attr, promql in BACKEND_GAUGES.items():
                queries = [
                    promql,
                    *([BACKEND_FALLBACKS[attr]] if attr in BACKEND_FALLBACKS else []),
                ]
                for query in queries:
                    for sample in self._query(query):
                        labels = sample["metric"]
                        obj = labels.get("quantum_backend")
                        into, name = (labelled, obj) if obj else (unlabelled, labels.get("backend"))
                        value = _value(sample)
                        current = into.get(name or "", BackendMetrics())
                        if not name or value is None or getattr(current, attr) is not None:
                            continue
                        converted: Any = bool(value) if attr == "up" else value
                        into[name] = replace(current, **{attr: converted})
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
            backends=labelled,
            by_backend_name=unlabelled,
            worker_execution_p50_seconds=workers,
            gpu_utilisation=gpu,
        )


def join_backends(
    view: MetricsView, backends: Iterable[BackendInfo]
) -> tuple[MetricsView, tuple[str, ...]]:
    """``view`` with ``backends`` keyed by QuantumBackend object for every object that has
    live data, and what could not be joined (one line each, for a log or a condition).

    A gateway's ``quantum_backend`` label names its object outright. Series without it
    carry only the provider's backend name; they go to the one QuantumBackend with that
    ``spec.backendName`` that has no labelled series of its own. When several such objects
    share the name, no object gets them: which gateway is which cannot be told apart, and a
    wrong guess would steer work by another gateway's queue. The lines are also the
    joined view's ``reason`` (empty when everything joined).
    """
    if not view.available:
        return view, ()
    joined = dict(view.backends)
    claimants: dict[str, list[str]] = {}
    for b in backends:
        if b.name not in joined and b.backend_name in view.by_backend_name:
            claimants.setdefault(b.backend_name, []).append(b.name)
    problems: list[str] = []
    for backend_name, names in sorted(claimants.items()):
        if len(names) == 1:
            joined[names[0]] = view.by_backend_name[backend_name]
        else:
            problems.append(
                f"metrics of backend {backend_name!r} carry no quantum_backend label and "
                f"QuantumBackends {', '.join(sorted(names))} all have that backendName: "
                "not used for any of them (start each gateway with --quantum-backend NAME)"
            )
    reason = "; ".join(problems)[:1024] if problems else view.reason
    return replace(view, backends=joined, reason=reason), tuple(problems)


def _value(sample: dict[str, Any]) -> float | None:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value
