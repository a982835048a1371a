"""Performance Monitoring Agent: the metrics gateways and workers export.

Naming follows Prometheus conventions (base units in names, ``_total`` counters,
``_seconds``). Label sets are bounded: ``backend`` is the one backend a gateway serves (the
provider's name, e.g. ``fake_torino``), ``quantum_backend`` the one QuantumBackend object it
serves (only when the gateway was told, ``qorch gateway --quantum-backend``: the chart does;
without it the label set is exactly ``backend`` as before), ``primitive`` and ``outcome``
are fixed vocabularies, ``method``/``device`` come from Aer's short lists. Each process
creates the metrics it needs on its own registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry
    queue_length: Gauge
    backend_pending_jobs: Gauge
    queue_wait: Histogram
    execution: Histogram
    jobs: Counter
    qpu_seconds: Counter
    price: Gauge
    cost: Counter
    two_qubit_error: Gauge
    readout_error: Gauge
    t1: Gauge
    t2: Gauge
    num_qubits: Gauge
    healthy: Gauge
    # The QuantumBackend object this gateway serves, exported as the ``quantum_backend``
    # label: the operator's unambiguous join (two objects may share one backend name).
    quantum_backend: str | None = None

    @classmethod
    def create(
        cls, registry: CollectorRegistry | None = None, *, quantum_backend: str | None = None
    ) -> GatewayMetrics:
        r = registry or CollectorRegistry()
        b = ["backend", "quantum_backend"] if quantum_backend else ["backend"]
        return cls(
            quantum_backend=quantum_backend or None,
            registry=r,
            queue_length=Gauge(
                "qorch_gateway_queue_length", "Jobs waiting in this gateway.", b, registry=r
            ),
            backend_pending_jobs=Gauge(
                "qorch_backend_pending_jobs",
                "Jobs pending on the backend itself (IBM: backend.status().pending_jobs).",
                b,
                registry=r,
            ),
            queue_wait=Histogram(
                "qorch_gateway_queue_wait_seconds",
                "Time from submission to start of execution.",
                b,
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            execution=Histogram(
                "qorch_gateway_execution_seconds",
                "Wall time of one execution (a batch counts once per job).",
                [*b, "primitive"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            jobs=Counter(
                "qorch_gateway_jobs_total",
                "Jobs finished, by outcome.",
                [*b, "outcome"],
                registry=r,
            ),
            qpu_seconds=Counter(
                "qorch_gateway_qpu_seconds_total",
                "QPU time billed (IBM job.usage()); 0 for simulators.",
                b,
                registry=r,
            ),
            price=Gauge(
                "qorch_gateway_price_usd_per_qpu_second",
                "Price of one QPU second on this backend.",
                b,
                registry=r,
            ),
            cost=Counter(
                "qorch_gateway_cost_usd_total", "Money spent on this backend.", b, registry=r
            ),
            two_qubit_error=Gauge(
                "qorch_backend_median_two_qubit_error",
                "Median two-qubit gate error from the calibration.",
                b,
                registry=r,
            ),
            readout_error=Gauge(
                "qorch_backend_median_readout_error",
                "Median readout error from the calibration.",
                b,
                registry=r,
            ),
            t1=Gauge(
                "qorch_backend_median_t1_seconds", "Median T1 from the calibration.", b, registry=r
            ),
            t2=Gauge(
                "qorch_backend_median_t2_seconds", "Median T2 from the calibration.", b, registry=r
            ),
            num_qubits=Gauge("qorch_backend_qubits", "Qubits of the backend.", b, registry=r),
            healthy=Gauge("qorch_backend_up", "1 when the backend accepts jobs.", b, registry=r),
        )

    def labels_for(self, backend: str) -> dict[str, str]:
        """The identifying labels of every gateway series: ``backend`` and, when known,
        ``quantum_backend``."""
        if self.quantum_backend:
            return {"backend": backend, "quantum_backend": self.quantum_backend}
        return {"backend": backend}


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry
    execution: Histogram
    runs: Counter
    peak_memory: Gauge
    cpu_seconds: Counter
    gpu_utilisation: Gauge
    gateway_latency: Histogram
    cost_per_second: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        r = registry or CollectorRegistry()
        return cls(
            registry=r,
            execution=Histogram(
                "qorch_worker_execution_seconds",
                "Wall time of one circuit simulation or user command.",
                ["method", "device"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            runs=Counter(
                "qorch_worker_runs_total", "Runs finished, by outcome.", ["outcome"], registry=r
            ),
            peak_memory=Gauge(
                "qorch_worker_peak_memory_bytes",
                "Peak resident memory of the worker process.",
                registry=r,
            ),
            cpu_seconds=Counter(
                "qorch_worker_cpu_seconds_total", "CPU time used by the worker process.", registry=r
            ),
            gpu_utilisation=Gauge(
                "qorch_worker_gpu_utilisation_ratio",
                "GPU utilisation 0..1 (NVML), absent without a GPU.",
                registry=r,
            ),
            gateway_latency=Histogram(
                "qorch_worker_gateway_latency_seconds",
                "Round-trip time to the quantum gateway's /healthz.",
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            cost_per_second=Gauge(
                "qorch_worker_cost_usd_per_second",
                "Price of the node this worker runs on, per second.",
                registry=r,
            ),
        )
