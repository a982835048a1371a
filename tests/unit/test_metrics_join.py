"""The join of live metrics to QuantumBackend objects (issue 13, item 5).

Gateways label their series with the provider's backend name (``backend=fake_torino``),
which several QuantumBackends may share, and, when told (``--quantum-backend``, the chart
does), with the object they serve (``quantum_backend=torino-a``). The operator must look
live data up by object: before this, it looked the object name up among backend names and
Prometheus never changed a decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import kopf
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qorch import cli
from qorch.api.backend import CalibrationSummary, Provider
from qorch.api.workflow import HybridWorkflowSpec, HybridWorkflowStatus
from qorch.metrics.exporters import GatewayMetrics
from qorch.metrics.reader import PrometheusReader, join_backends
from qorch.operator.handlers import quantum_backends
from qorch.operator.runtime import Runtime, build_snapshot
from qorch.operator.settings import OperatorSettings
from qorch.orchestrator import BackendInfo, CircuitInfo, RulePolicy, SubmitJob, plan
from qorch.orchestrator.snapshot import BackendMetrics, MetricsView

GHZ = "OPENQASM 3.0; qubit[3] q; h q[0]; cx q[0], q[1]; cx q[1], q[2];"


def info(name: str, backend_name: str, **kw: Any) -> BackendInfo:
    return BackendInfo(name, Provider.FAKE, 5, backend_name=backend_name, **kw)


def sample(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [0, str(value)]}


class CannedReader(PrometheusReader):
    """The real reader's parsing over canned PromQL answers: ``answers`` maps a metric
    name to the samples of every query that reads it."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]]) -> None:
        self.url = "http://prometheus.test"
        self.answers = answers
        self.queries: list[str] = []

    def _query(self, promql: str) -> list[dict[str, Any]]:
        self.queries.append(promql)
        return next((a for metric, a in self.answers.items() if metric in promql), [])


# ---- the gateway's labels ------------------------------------------------------------


def series(registry: Any) -> dict[str, list[dict[str, str]]]:
    """Label sets of every exported sample, by sample name (the text the scrape reads)."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append(dict(s.labels))
    return out


def test_gateway_told_its_quantum_backend_labels_every_series_with_it() -> None:
    m = GatewayMetrics.create(quantum_backend="torino-a")
    labels = m.labels_for("fake_torino")
    assert labels == {"backend": "fake_torino", "quantum_backend": "torino-a"}
    m.queue_length.labels(**labels).set(7)
    m.jobs.labels(**labels, outcome="done").inc()
    m.execution.labels(**labels, primitive="sampler").observe(0.2)
    found = series(m.registry)
    assert found["qorch_gateway_queue_length"] == [labels]
    assert found["qorch_gateway_jobs_total"] == [{**labels, "outcome": "done"}]
    assert {**labels, "primitive": "sampler"} == found["qorch_gateway_execution_seconds_count"][0]


def test_gateway_not_told_keeps_the_old_label_set() -> None:
    """Hand-run gateways and dashboards see exactly the series they saw before."""
    m = GatewayMetrics.create()
    labels = m.labels_for("aer")
    assert labels == {"backend": "aer"}
    m.jobs.labels(**labels, outcome="done").inc()
    text = generate_latest(m.registry).decode()
    assert 'qorch_gateway_jobs_total{backend="aer",outcome="done"} 1.0' in text
    assert "quantum_backend" not in text


def test_cli_takes_the_quantum_backend_and_refuses_a_backend_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[Any] = []

    def capture(args: Any) -> int:
        parsed.append(args)
        return 0

    monkeypatch.setattr(cli, "_gateway", capture)
    argv = ["gateway", "--provider", "fake", "--backend", "fake_torino"]
    assert cli.main([*argv, "--quantum-backend", "torino-a"]) == 0
    assert cli.main(argv) == 0
    assert [a.quantum_backend for a in parsed] == ["torino-a", None]
    cli._check_object_name("--quantum-backend", "torino-a")
    cli._check_object_name("--quantum-backend", None)
    for bad in ("fake_torino", "Torino", "-a", "a" * 254, ""):
        with pytest.raises(ValueError, match="--quantum-backend"):
            cli._check_object_name("--quantum-backend", bad)


def test_index_records_the_backend_name_the_gateway_labels_with() -> None:
    def index(name: str, spec: dict[str, Any]) -> dict[str, BackendInfo]:
        body = kopf.Body({"metadata": {"name": name}, "spec": spec, "status": {}})
        # kopf types the decorated function as an index callback: call it as written.
        fn = cast(Callable[..., Awaitable[dict[str, BackendInfo]]], quantum_backends)
        return asyncio.run(fn(name=name, spec=body.spec, status=body.status))

    [(name, backend)] = index(
        "torino-a", {"provider": "fake", "backendName": "fake_torino"}
    ).items()
    assert (name, backend.name, backend.backend_name) == ("torino-a", "torino-a", "fake_torino")
    # Without a backendName the gateway serves (and labels) its default name.
    assert index("sim", {"provider": "aer"})["sim"].backend_name == "aer_simulator"


# ---- the reader ----------------------------------------------------------------------


def test_reader_keys_labelled_series_by_object_and_the_rest_by_backend_name() -> None:
    reader = CannedReader(
        {
            "qorch_gateway_queue_length": [
                sample(12, backend="fake_torino", quantum_backend="torino-a"),
                sample(0, backend="fake_torino", quantum_backend="torino-b"),
                sample(3, backend="aer_local"),
            ],
            "qorch_backend_median_two_qubit_error": [
                sample(0.02, backend="fake_torino", quantum_backend="torino-a"),
            ],
            "qorch_backend_up": [sample(1, backend="aer_local")],
        }
    )
    view = reader.read()
    assert view.available
    assert view.backends == {
        "torino-a": BackendMetrics(queue_length=12, two_qubit_error=0.02),
        "torino-b": BackendMetrics(queue_length=0),
    }
    assert view.by_backend_name == {"aer_local": BackendMetrics(queue_length=3, up=True)}
    gauges = [q for q in reader.queries if "qorch_gateway_queue_length" in q]
    assert gauges == ["max by (backend, quantum_backend) (qorch_gateway_queue_length)"]
    assert all("by (backend, quantum_backend" in q for q in reader.queries if "qorch_ga" in q)


# ---- the join ------------------------------------------------------------------------


def test_explicit_label_joins_each_object_even_when_they_share_a_backend_name() -> None:
    view = MetricsView(
        available=True,
        backends={"torino-a": BackendMetrics(queue_length=12), "torino-b": BackendMetrics(0)},
    )
    joined, problems = join_backends(
        view, [info("torino-a", "fake_torino"), info("torino-b", "fake_torino")]
    )
    assert problems == () and joined.reason == ""
    assert joined.backends["torino-a"].queue_length == 12
    assert joined.backends["torino-b"].queue_length == 0


def test_unlabelled_series_join_the_one_object_with_that_backend_name() -> None:
    """A hand-run gateway (no --quantum-backend): its object is named differently from the
    backend, which the old lookup by object name never found."""
    view = MetricsView(available=True, by_backend_name={"aer_local": BackendMetrics(4)})
    joined, problems = join_backends(view, [info("local", "aer_local"), info("t", "fake_torino")])
    assert problems == ()
    assert joined.backends == {"local": BackendMetrics(queue_length=4)}


def test_unlabelled_series_of_a_shared_backend_name_are_not_guessed() -> None:
    view = MetricsView(available=True, by_backend_name={"fake_torino": BackendMetrics(9)})
    joined, problems = join_backends(
        view, [info("torino-b", "fake_torino"), info("torino-a", "fake_torino")]
    )
    assert joined.backends == {}
    [problem] = problems
    assert "'fake_torino'" in problem and "torino-a, torino-b" in problem
    assert "--quantum-backend" in problem
    assert joined.available and joined.reason == problem


def test_labelled_and_unlabelled_gateways_of_one_backend_name_each_join_their_own() -> None:
    """One object served by a chart gateway (labelled), another by a hand-run one: the
    unlabelled series can only be the second's."""
    view = MetricsView(
        available=True,
        backends={"torino-a": BackendMetrics(queue_length=12)},
        by_backend_name={"fake_torino": BackendMetrics(queue_length=1)},
    )
    joined, problems = join_backends(
        view, [info("torino-a", "fake_torino"), info("torino-b", "fake_torino")]
    )
    assert problems == ()
    assert joined.backends["torino-a"].queue_length == 12
    assert joined.backends["torino-b"].queue_length == 1


def test_an_unavailable_view_is_left_as_it_is() -> None:
    view = MetricsView(available=False, reason="down")
    assert join_backends(view, [info("a", "x")]) == (view, ())


# ---- through the operator's snapshot into the pure planner ---------------------------


def runtime() -> Runtime:
    return Runtime(
        settings=OperatorSettings(),
        core=None,
        custom=None,
        gateway=None,  # type: ignore[arg-type]
        applier=None,  # type: ignore[arg-type]
        policy=RulePolicy(),
        gateway_targets={},
    )


def placed_on(
    backends: list[BackendInfo], metrics: MetricsView | None, rt: Runtime | None = None
) -> str:
    spec = HybridWorkflowSpec.model_validate(
        {
            "subtasks": [{"name": "q", "circuit": {"qasm": GHZ}}],
            "resources": {"quantumBackends": [b.name for b in backends]},
        }
    )
    snapshot = build_snapshot(
        namespace="ns",
        name="wf",
        generation=1,
        spec=spec,
        status=HybridWorkflowStatus(),
        pods=[],
        jobs={},
        backends=backends,
        circuits_info={"q": CircuitInfo(num_qubits=3, depth=3)},
        runtime=rt or runtime(),
        metrics=metrics,
    )
    [submit] = [a for a in plan(snapshot, RulePolicy()).actions if isinstance(a, SubmitJob)]
    return submit.backend


def test_a_queue_read_from_prometheus_changes_where_work_goes() -> None:
    # The statuses tie (both 0): by name the planner would pick torino-a.
    backends = [info("torino-a", "fake_torino"), info("torino-b", "fake_torino")]
    assert placed_on(backends, None) == "torino-a"
    view = MetricsView(
        available=True,
        backends={"torino-a": BackendMetrics(queue_length=12), "torino-b": BackendMetrics(0)},
    )
    assert placed_on(backends, view) == "torino-b"


def test_an_ambiguous_view_changes_nothing_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backends = [info("torino-a", "fake_torino"), info("torino-b", "fake_torino")]
    view = MetricsView(available=True, by_backend_name={"fake_torino": BackendMetrics(12)})
    rt = runtime()
    with caplog.at_level(logging.WARNING, logger="qorch.operator.runtime"):
        assert placed_on(backends, view, rt) == "torino-a"
        assert placed_on(backends, view, rt) == "torino-a"
    warnings = [r.getMessage() for r in caplog.records if "live metrics" in r.getMessage()]
    assert len(warnings) == 1 and "torino-a, torino-b" in warnings[0]


def test_live_health_and_calibration_replace_the_status() -> None:
    status_cal = CalibrationSummary(
        medianTwoQubitError=0.01,
        medianSingleQubitError=0.001,
        medianReadoutError=0.02,
        medianT1Seconds=1e-4,
        medianT2Seconds=1e-4,
        updatedAt="2026-01-05T00:00:00Z",
    )
    backend = info("torino-a", "fake_torino", calibration=status_cal)
    spec = HybridWorkflowSpec.model_validate(
        {"subtasks": [{"name": "q", "circuit": {"qasm": GHZ}}]}
    )

    def seen(live: BackendMetrics) -> BackendInfo:
        snap = build_snapshot(
            namespace="ns",
            name="wf",
            generation=1,
            spec=spec,
            status=HybridWorkflowStatus(),
            pods=[],
            jobs={},
            backends=[backend],
            circuits_info={},
            runtime=runtime(),
            metrics=MetricsView(available=True, backends={"torino-a": live}),
        )
        return snap.backends["torino-a"]

    same = seen(BackendMetrics(two_qubit_error=0.01, readout_error=0.02, up=True))
    assert same.calibration == status_cal and same.healthy
    worse = seen(BackendMetrics(two_qubit_error=0.05, t1_seconds=5e-5, up=False))
    assert worse.healthy is False
    assert worse.calibration is not None
    assert worse.calibration.medianTwoQubitError == 0.05
    assert worse.calibration.medianT1Seconds == 5e-5
    assert worse.calibration.medianSingleQubitError == 0.001  # Prometheus lacks it
    # Newer than the status says: its date no longer applies (no old-day cache is used).
    assert worse.calibration.updatedAt is None
