"""`qorch train`'s history reader against a REAL Prometheus (Debian's package).

Two ways real samples get in:
- backfill: the PMA metrics of two gateways (``GatewayMetrics``, the exporters' own
  registry) are rendered at simulated scrape times over 90 minutes, turned into TSDB blocks
  with the package's ``promtool tsdb create-blocks-from openmetrics`` and loaded by a
  Prometheus started on them; every value the reader returns is known exactly;
- live: the same server scrapes a prometheus_client HTTP exporter started here.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from devenv import prometheus as prom_mod
from devenv.controlplane import free_port
from qorch.metrics.exporters import GatewayMetrics
from qorch.predictor.training import prometheus_history as ph
from qorch.predictor.training.prometheus_history import (
    PrometheusHistory,
    PrometheusHistoryError,
    QueueWaitObservation,
    read_history,
)

pytestmark = pytest.mark.prometheus

MINUTE = 60.0
T0 = (math.floor(time.time() / 3600) - 3) * 3600.0  # an hour boundary, 3-4 hours before import
END = datetime.fromtimestamp(T0 + 95 * MINUTE, UTC)
SINCE = timedelta(minutes=100)
STEP = timedelta(minutes=1)


def at(minutes: float) -> datetime:
    return datetime.fromtimestamp(T0 + minutes * MINUTE, UTC)


# ---- the simulated gateways -----------------------------------------------------------------
@dataclass
class Gateway:
    backend: str
    metrics: GatewayMetrics

    @classmethod
    def start(cls, backend: str, t1: float) -> Gateway:
        m = GatewayMetrics.create()
        m.queue_wait.labels(backend=backend)  # children exist (at 0) from the first scrape
        m.execution.labels(backend=backend, primitive="sampler")
        m.num_qubits.labels(backend=backend).set(127)
        m.queue_length.labels(backend=backend).set(0)
        m.two_qubit_error.labels(backend=backend).set(0.01)
        m.readout_error.labels(backend=backend).set(0.02)
        m.t1.labels(backend=backend).set(t1)
        m.t2.labels(backend=backend).set(80e-6)
        return cls(backend, m)

    def waits(self, *seconds: float) -> None:
        for s in seconds:
            self.metrics.queue_wait.labels(backend=self.backend).observe(s)

    def runs(self, *seconds: float) -> None:
        for s in seconds:
            self.metrics.execution.labels(backend=self.backend, primitive="sampler").observe(s)


def openmetrics_lines(
    registry: CollectorRegistry, ts: float, extra: dict[str, str]
) -> Iterator[tuple[str, str, str]]:
    """(family name, type, sample line with timestamp) of every sample in ``registry``."""
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = {**sample.labels, **extra}
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            yield family.name, family.type, f"{sample.name}{{{text}}} {sample.value!r} {ts:.0f}"


def simulate() -> str:
    """90 minutes of two gateways scraped every 30 s, as OpenMetrics text. Events happen
    5 s after a minute's scrape, so they show at the grid point one minute later."""
    alpha = Gateway.start("ibm_alpha", t1=100e-6)
    beta = Gateway.start("ibm_beta", t1=90e-6)

    def busy_alpha() -> None:
        alpha.waits(20, 20, 40, 40)
        alpha.runs(2, 2, 2, 2)

    events: dict[int, Callable[[], None]] = {
        10: busy_alpha,
        20: lambda: beta.waits(50, 50, 50),
        30: lambda: alpha.waits(*[4.0] * 25),
        40: lambda: alpha.waits(100),
        45: lambda: alpha.metrics.t1.labels(backend="ibm_alpha").set(120e-6),
        60: lambda: beta.waits(100, 100, 100),
    }
    families: dict[str, tuple[str, list[str]]] = {}
    for k in range(0, 181):  # a scrape every 30 s
        ts = T0 + 30 * k
        minute, offset = divmod(30 * k, 60)
        for gw, instance in ((alpha, "gw-alpha:8080"), (beta, "gw-beta:8080")):
            gw.metrics.backend_pending_jobs.labels(backend=gw.backend).set(minute)
            extra = {"job": "qorch-gateway", "instance": instance}
            for name, kind, line in openmetrics_lines(gw.metrics.registry, ts, extra):
                families.setdefault(name, (kind, []))[1].append(line)
        if offset == 0 and minute in events:  # 5 s after this scrape
            events[minute]()
        if offset == 0 and minute == 50:  # beta's gateway restarts: counters start over
            beta = Gateway.start("ibm_beta", t1=90e-6)
    out = []
    for name, (kind, lines) in families.items():
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    out.append("# EOF")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[prom_mod.Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus-history")
    source = workdir / "history.om"
    source.write_text(simulate())
    promtool = prom_mod.prometheus_binary().parent / "promtool"
    out = subprocess.run(
        [
            str(promtool),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(source),
            str(workdir / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with prom_mod.running(workdir) as server:
        yield server


@pytest.fixture(scope="module")
def history(prom: prom_mod.Prometheus) -> PrometheusHistory:
    return read_history(prom.url, SINCE, STEP, end=END)


def by_end(history: PrometheusHistory, backend: str) -> dict[float, QueueWaitObservation]:
    return {
        (o.end.timestamp() - T0) / MINUTE: o for o in history.queue_waits if o.backend == backend
    }


# ---- backfilled history ---------------------------------------------------------------------
def test_queue_wait_observations_per_interval(history: PrometheusHistory) -> None:
    alpha = by_end(history, "ibm_alpha")
    beta = by_end(history, "ibm_beta")
    assert sorted(alpha) == [11, 31, 41] and sorted(beta) == [21, 61]
    first = alpha[11]
    assert first.start == at(10) and first.end == at(11)
    assert first.jobs == 4 and first.mean_wait_s == pytest.approx(30)
    # histogram_quantile on the buckets (10, 30] x2 and (30, 60] x2
    assert first.p50_wait_s == pytest.approx(30) and first.p90_wait_s == pytest.approx(54)
    assert first.submitted_at == at(10)  # midpoint 10.5 min minus the 30 s mean wait
    assert (first.recent_wait_p50_s, first.recent_wait_p90_s, first.recent_wait_count) == (0, 0, 0)
    assert first.backend_qubits == 127 and first.pending_jobs == 10 and first.queue_length == 0
    busy = alpha[31]
    assert busy.jobs == 25 and busy.mean_wait_s == pytest.approx(4.0)
    assert busy.p50_wait_s == pytest.approx(3.75) and busy.p90_wait_s == pytest.approx(4.75)
    # history at submission (30.5 min - 4 s): the 4 jobs of minute 10 only
    assert busy.recent_wait_count == 4
    assert busy.recent_wait_p50_s == pytest.approx(30)
    assert busy.recent_wait_p90_s == pytest.approx(54)
    late = alpha[41]
    assert late.jobs == 1 and late.mean_wait_s == pytest.approx(100)
    # 29 earlier jobs: the latest 20 are all from minute 30, in the (2.5, 5] bucket
    assert late.recent_wait_count == 20
    assert late.recent_wait_p50_s == pytest.approx(3.75)
    assert late.recent_wait_p90_s == pytest.approx(4.75)
    assert late.pending_jobs == 38  # the gauge at submission (40.5 min - 100 s)


def test_counter_reset_of_a_restarted_gateway_is_not_a_negative_increase(
    history: PrometheusHistory,
) -> None:
    beta = by_end(history, "ibm_beta")
    assert beta[21].jobs == 3 and beta[21].mean_wait_s == pytest.approx(50)
    assert beta[21].p50_wait_s == pytest.approx(45) and beta[21].p90_wait_s == pytest.approx(57)
    after = beta[61]  # counters went 3 -> 0 at minute 50, then 3 new jobs
    assert after.jobs == 3 and after.mean_wait_s == pytest.approx(100)
    assert (after.recent_wait_count, after.recent_wait_p50_s) == (3, pytest.approx(45))
    assert all(o.jobs > 0 for o in history.queue_waits)


def test_executions_calibrations_and_gauge_series(history: PrometheusHistory) -> None:
    (run,) = history.executions
    assert (run.backend, run.primitive, run.end) == ("ibm_alpha", "sampler", at(11))
    assert run.jobs == 4 and run.mean_s == pytest.approx(2.0)
    assert run.p50_s == pytest.approx(1.75) and run.p90_s == pytest.approx(2.35)

    alpha = [c for c in history.calibrations if c.backend == "ibm_alpha"]
    assert [c.t1_seconds for c in alpha] == [pytest.approx(100e-6), pytest.approx(120e-6)]
    assert [c.at for c in alpha] == [at(0), at(46)]
    assert alpha[0].two_qubit_error == pytest.approx(0.01)
    assert alpha[0].readout_error == pytest.approx(0.02)
    assert [c.t1_seconds for c in history.calibrations if c.backend == "ibm_beta"] == [
        pytest.approx(90e-6)
    ]
    pending = dict(history.gauges["pending_jobs"]["ibm_alpha"])
    assert pending[at(0)] == 0 and pending[at(37)] == 37 and pending[at(90)] == 90
    assert at(-1) not in pending  # before the first sample: nothing, not zero
    assert set(history.gauges["queue_length"]) == {"ibm_alpha", "ibm_beta"}
    assert history.backends == ["ibm_alpha", "ibm_beta"] and not history.empty
    assert "calibrations: 3 samples" in history.describe()
    assert "backends ibm_alpha, ibm_beta" in history.describe()


def test_rows_for_the_queue_wait_dataset(history: PrometheusHistory) -> None:
    from qorch.predictor.training import queue_wait

    fill = {"num_qubits": 5.0, "depth": 20.0, "shots": 4000.0, "circuits": 1.0}
    fill["backend_qubits"] = 27.0
    data = history.queue_wait_data(fill)
    assert len(data.wait) == 4 + 20 + 1 + 3 + 3  # an interval gives at most 20 rows
    assert list(data.submitted) == sorted(data.submitted)
    col = {name: i for i, name in enumerate(queue_wait.FEATURES)}
    first = data.backend == "ibm_alpha"
    assert sorted(data.wait[first][:4]) == pytest.approx([15, 25, 37.5, 52.5])
    assert set(data.x[first][:, col["backend_qubits"]]) == {127.0}  # the gauge, not the fill
    assert set(data.x[:, col["shots"]]) == {4000.0}
    assert data.x[first][-1, col["recent_wait_count"]] == 20
    assert data.x[first][0, col["hour_of_day_utc"]] == at(10).hour


def test_chunked_range_queries_give_the_same_history(
    prom: prom_mod.Prometheus, history: PrometheusHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ph, "MAX_POINTS_PER_QUERY", 7)
    chunked = read_history(prom.url, SINCE, STEP, end=END)
    assert chunked.queue_waits == history.queue_waits
    assert chunked.calibrations == history.calibrations
    assert chunked.gauges == history.gauges


def test_a_coarser_step_sums_the_intervals(prom: prom_mod.Prometheus) -> None:
    coarse = read_history(prom.url, SINCE, timedelta(minutes=30), end=END)
    jobs = {(o.backend, (o.end.timestamp() - T0) / MINUTE): o.jobs for o in coarse.queue_waits}
    assert jobs == {
        ("ibm_alpha", 30): 4,
        ("ibm_alpha", 60): 26,
        ("ibm_beta", 30): 3,
        ("ibm_beta", 90): 3,
    }


# ---- empty and errors ---------------------------------------------------------------------
def test_nothing_matching_is_an_empty_history_not_an_error(prom: prom_mod.Prometheus) -> None:
    empty = read_history(prom.url, SINCE, STEP, end=END, selector='backend="ibm_nowhere"')
    assert empty.empty and empty.queue_waits == () and empty.backends == []
    assert "no PMA history" in empty.describe() and 'backend="ibm_nowhere"' in empty.describe()


def test_a_query_prometheus_refuses_is_a_clear_error(prom: prom_mod.Prometheus) -> None:
    with pytest.raises(PrometheusHistoryError, match=r"refused the range query .*backend=~"):
        read_history(prom.url, SINCE, STEP, end=END, selector='backend=~"("')


def test_unreachable_prometheus_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(PrometheusHistoryError, match=rf"Prometheus at {url} is unreachable"):
        read_history(url, SINCE, STEP, timeout_seconds=2)
    assert time.monotonic() - started < 15


# ---- live scrape ----------------------------------------------------------------------------
def wait_until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_scraped_exporter_history(prom: prom_mod.Prometheus) -> None:
    live = Gateway.start("ibm_live", t1=50e-6)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=live.metrics.registry)
    try:
        prom.set_targets("live-gateway", [f"127.0.0.1:{port}"])
        count = 'qorch_gateway_queue_wait_seconds_count{backend="ibm_live"}'
        wait_until("the first scrape", lambda: prom.query(count))
        live.waits(3, 3, 3, 3, 3)
        live.metrics.backend_pending_jobs.labels(backend="ibm_live").set(7)
        wait_until(
            "the jobs scraped",
            lambda: (r := prom.query(count)) and r[0]["value"][1] == "5",
        )
        time.sleep(1.5)  # the step grid's next point is at or after that scrape
        history = read_history(
            prom.url,
            timedelta(minutes=2),
            timedelta(seconds=1),
            selector='job="live-gateway"',
            end=datetime.now(UTC) + timedelta(seconds=1),
        )
    finally:
        server.shutdown()
        thread.join(5)
    assert {o.backend for o in history.queue_waits} == {"ibm_live"}
    (obs,) = history.queue_waits
    assert obs.jobs == 5 and obs.mean_wait_s == pytest.approx(3.0)
    assert obs.p50_wait_s == pytest.approx(3.75)  # (2.5, 5] bucket, as histogram_quantile
    assert history.gauges["pending_jobs"]["ibm_live"][-1][1] == 7
    assert [c.t1_seconds for c in history.calibrations] == [pytest.approx(50e-6)]


# ---- qorch train end to end ----------------------------------------------------------------
def test_qorch_train_uses_the_history(
    prom: prom_mod.Prometheus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import onnx

    from qorch import cli
    from qorch.predictor import training
    from qorch.predictor.training import queue_wait
    from qorch.traces import default_traces_dir

    traces = default_traces_dir()
    if not (traces / "ibm-queue-jobs" / "jobs.csv").is_file():
        pytest.skip(f"no real traces at {traces}")
    monkeypatch.setattr(training, "EVALUATIONS", (queue_wait.evaluate,))  # the one that uses it
    out = tmp_path / "models"
    # T0 was fixed when this module was imported, which may be many minutes before this
    # test runs in a long session: reach back to it from now, not a fixed 4 h.
    since_minutes = math.ceil((time.time() - T0) / MINUTE) + 5
    code = cli.main(
        [
            "train",
            "--quick",
            "--prometheus-url",
            prom.url,
            "--prometheus-selector",
            'job="qorch-gateway"',
            "--since",
            f"{since_minutes}m",
            "--step",
            "1m",
            "--output-dir",
            str(out),
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "queue waits: 5 intervals, 36 jobs started" in printed.out
    assert "rows from the cluster's history (Prometheus)" in printed.out
    assert "execution history is reported, not trained on" in printed.out
    model = onnx.load(str(out / "queue_wait_p50.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert f"PMA history from Prometheus at {prom.url}" in meta["qorch.sources"]
    assert "31 rows of the cluster's history" in meta["qorch.split"]
