"""A cluster's own history, read back from Prometheus, for ``qorch train``.

The gateways export the PMA metrics (``qorch.metrics.exporters``); Prometheus keeps them.
``read_history`` runs range queries over a window (``--since``, one point per ``--step``)
and turns them into typed rows:

- ``QueueWaitObservation``: per backend and step interval, the jobs that STARTED executing
  in it (``qorch_gateway_queue_wait_seconds``): how many, their mean wait (increase of
  ``_sum`` / increase of ``_count``), P50/P90 (Prometheus' ``histogram_quantile``
  algorithm on the increase of each bucket), with the history features the queue_wait
  model uses at the jobs' (approximate) submission time, and the queue gauges;
- ``ExecutionObservation``: the same for ``qorch_gateway_execution_seconds`` per backend
  and primitive;
- ``CalibrationSample``: the calibration gauges of a backend, one sample per change;
- ``gauges``: the pending-jobs and queue-length series of each backend.

Increases are computed here, from the raw counters at the step boundaries, series by series
(a counter that goes down is a restarted gateway: the new value is the increase), not with
PromQL ``increase()``/``rate()``, which extrapolate to the window's edges and give
fractional job counts. The first value of a series in the window is its baseline: jobs
counted before it are not seen (Prometheus' own ``increase()`` does the same).

Approximations (Prometheus keeps aggregates, not jobs):

- submission time of an interval's jobs = the interval's midpoint minus their mean wait;
- ``recent_wait_p50_s``/``p90_s``/``count`` (``training/history.py``: the backend's latest
  20 jobs that started before submission) = the bucket counts of the latest intervals that
  ENDED at or before that submission time, walking back until 20 jobs (the oldest interval
  taken in proportion, so exactly 20), quantiles interpolated inside the buckets as
  ``histogram_quantile`` does; count = min(20, jobs seen), 0 with no earlier job (then
  p50 = p90 = 0, as in training). The walk stops at the window's start: early intervals
  have less history, as the trace's first jobs do;
- rows for the queue_wait dataset (``PrometheusHistory.queue_wait_data``): an interval
  with n jobs gives min(n, 20) rows whose waits are the interval's bucket quantiles at
  (i + 0.5) / rows; the PMA exports no job shape, so ``num_qubits``, ``depth``, ``shots``
  and ``circuits`` are the caller's fill values (the trace medians), and ``backend_qubits``
  the ``qorch_backend_qubits`` gauge (else the fill value).

QPU run time: the qpu_runtime model maps a job's circuit quantities (depth, qubits, gates,
shots, circuits) to seconds, and the PMA exports none of them, so ``ExecutionObservation``
rows cannot become its training rows; ``qorch train`` reports them and leaves that model
to the traces.

Errors are ``PrometheusHistoryError`` with the URL and the query: unreachable, a query
Prometheus refuses, an answer that is not the Prometheus API. An empty answer is no error:
``PrometheusHistory.empty`` is true and training goes on from the traces alone.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from qorch.predictor.training import queue_wait
from qorch.predictor.training.common import FloatArray, Row, interval_coverage, median_width, row
from qorch.predictor.training.history import RECENT_JOBS
from qorch.traces import PathLike

# ---- what is read (names as qorch.metrics.exporters creates them) --------------------------
QUEUE_WAIT: Final = "qorch_gateway_queue_wait_seconds"
EXECUTION: Final = "qorch_gateway_execution_seconds"
GAUGES: Final[Mapping[str, str]] = {
    "pending_jobs": "qorch_backend_pending_jobs",
    "queue_length": "qorch_gateway_queue_length",
    "qubits": "qorch_backend_qubits",
    "two_qubit_error": "qorch_backend_median_two_qubit_error",
    "readout_error": "qorch_backend_median_readout_error",
    "t1_seconds": "qorch_backend_median_t1_seconds",
    "t2_seconds": "qorch_backend_median_t2_seconds",
}
CALIBRATION: Final = ("two_qubit_error", "readout_error", "t1_seconds", "t2_seconds")

MAX_POINTS_PER_QUERY: Final = 10_000  # Prometheus refuses more than 11,000 per series
MAX_STEPS: Final = 200_000  # --since / --step beyond this is a mistake, not a request
MAX_ROWS_PER_INTERVAL: Final = RECENT_JOBS  # queue_wait rows one interval may give
CIRCUIT_FILL: Final = ("num_qubits", "depth", "shots", "circuits", "backend_qubits")
MIN_CLUSTER_HELDOUT: Final = 20  # rows of the cluster's latest quarter for a held-out figure


class PrometheusHistoryError(RuntimeError):
    """Prometheus could not give the history: the message says where and why."""


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNITS: Final = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}


def parse_duration(text: str) -> timedelta:
    """A Prometheus duration (``90s``, ``30m``, ``7d``, ``1h30m``); ValueError if not one."""
    spec = text.strip()
    parts = _DURATION.findall(spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 7d or 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return timedelta(seconds=seconds)


# ---- typed rows -------------------------------------------------------------------------
Buckets = tuple[tuple[float, float], ...]  # (le, cumulative count), le ascending, +Inf last


@dataclass(frozen=True)
class QueueWaitObservation:
    """Jobs of one backend that started executing in the interval (start, end]."""

    backend: str
    start: datetime
    end: datetime
    jobs: float
    mean_wait_s: float
    p50_wait_s: float
    p90_wait_s: float
    buckets: Buckets = field(repr=False)  # the interval's increase of each bucket
    submitted_at: datetime  # approximate: midpoint minus mean wait
    recent_wait_p50_s: float
    recent_wait_p90_s: float
    recent_wait_count: float
    backend_qubits: float | None  # qorch_backend_qubits at submission
    pending_jobs: float | None  # qorch_backend_pending_jobs at submission
    queue_length: float | None  # qorch_gateway_queue_length at submission

    def waits(self) -> list[float]:
        """min(jobs, 20) wait values spread over the interval's distribution: its bucket
        quantiles at (i + 0.5) / n (the mean wait where the buckets say nothing)."""
        n = max(1, min(round(self.jobs), MAX_ROWS_PER_INTERVAL))
        values = [bucket_quantile((i + 0.5) / n, self.buckets) for i in range(n)]
        return [v if math.isfinite(v) else self.mean_wait_s for v in values]


@dataclass(frozen=True)
class ExecutionObservation:
    """Executions of one backend and primitive that finished in the interval (start, end]."""

    backend: str
    primitive: str
    start: datetime
    end: datetime
    jobs: float
    mean_s: float
    p50_s: float
    p90_s: float


@dataclass(frozen=True)
class CalibrationSample:
    """The calibration gauges of a backend from ``at`` on (None: not exported)."""

    backend: str
    at: datetime
    two_qubit_error: float | None
    readout_error: float | None
    t1_seconds: float | None
    t2_seconds: float | None


Series = tuple[tuple[datetime, float], ...]


@dataclass(frozen=True)
class PrometheusHistory:
    url: str
    start: datetime
    end: datetime
    step: timedelta
    selector: str
    queue_waits: tuple[QueueWaitObservation, ...]
    executions: tuple[ExecutionObservation, ...]
    calibrations: tuple[CalibrationSample, ...]
    gauges: Mapping[str, Mapping[str, Series]]  # GAUGES key -> backend -> points

    @property
    def empty(self) -> bool:
        return not (
            self.queue_waits
            or self.executions
            or self.calibrations
            or any(self.gauges.get(k) for k in GAUGES)
        )

    @property
    def backends(self) -> list[str]:
        names = {o.backend for o in self.queue_waits} | {o.backend for o in self.executions}
        names |= {c.backend for c in self.calibrations}
        for series in self.gauges.values():
            names |= set(series)
        return sorted(names)

    def source(self) -> str:
        """How a model file cites this history (``qorch.sources``)."""
        sel = f" {{{self.selector}}}" if self.selector else ""
        return (
            f"PMA history from Prometheus at {self.url}{sel}, "
            f"{self.start.isoformat(timespec='seconds')} to "
            f"{self.end.isoformat(timespec='seconds')}, step {_fmt_step(self.step)}"
        )

    def describe(self) -> str:
        """A few lines for the terminal."""
        if self.empty:
            return (
                f"no PMA history in Prometheus at {self.url} from "
                f"{self.start.isoformat(timespec='seconds')} to "
                f"{self.end.isoformat(timespec='seconds')}"
                f"{' matching {' + self.selector + '}' if self.selector else ''}"
            )
        jobs = sum(o.jobs for o in self.queue_waits)
        runs = sum(o.jobs for o in self.executions)
        return "\n".join(
            [
                f"{self.source()}: backends {', '.join(self.backends)}",
                f"  queue waits: {len(self.queue_waits)} intervals, {jobs:.0f} jobs started",
                f"  executions: {len(self.executions)} intervals, {runs:.0f} executions",
                f"  calibrations: {len(self.calibrations)} samples; backends per gauge: "
                + ", ".join(f"{k} {len(v)}" for k, v in self.gauges.items() if v),
            ]
        )

    def queue_wait_data(self, fill: Mapping[str, float]) -> queue_wait.QueueData:
        """Rows in the queue_wait model's dataset shape (``queue_wait.QueueData``, columns
        ``queue_wait.FEATURES``), ordered by submission time. ``fill``: the value of each
        ``CIRCUIT_FILL`` column the PMA does not export (e.g. the trace medians)."""
        missing = [c for c in CIRCUIT_FILL if c not in fill]
        if missing:
            raise ValueError(f"fill values missing for {missing}")
        x: list[list[float]] = []
        wait: list[float] = []
        submitted: list[float] = []
        backend: list[str] = []
        for obs in sorted(self.queue_waits, key=lambda o: o.submitted_at):
            if obs.jobs <= 0:
                continue
            qubits = fill["backend_qubits"] if obs.backend_qubits is None else obs.backend_qubits
            hour, day = float(obs.submitted_at.hour), float(obs.submitted_at.weekday())
            values = {
                **fill,
                "backend_qubits": qubits,
                "recent_wait_p50_s": obs.recent_wait_p50_s,
                "recent_wait_p90_s": obs.recent_wait_p90_s,
                "recent_wait_count": obs.recent_wait_count,
                "hour_of_day_utc": hour,
                "day_of_week": day,
            }
            features = [float(values[name]) for name in queue_wait.FEATURES]
            for w in obs.waits():
                x.append(features)
                wait.append(w)
                submitted.append(obs.submitted_at.timestamp())
                backend.append(obs.backend)
        return queue_wait.QueueData(
            np.array(x, dtype=np.float64).reshape(-1, len(queue_wait.FEATURES)),
            np.array(wait, dtype=np.float64),
            np.array(submitted, dtype=np.float64),
            np.array(backend, dtype=np.str_),
        )


def _fmt_step(step: timedelta) -> str:
    seconds = step.total_seconds()
    return f"{seconds:g}s"


# ---- histogram arithmetic -----------------------------------------------------------------
def bucket_quantile(q: float, buckets: Buckets) -> float:
    """Prometheus' ``histogram_quantile``: linear inside the bucket the rank falls in (the
    first bucket starts at 0), the upper bound of the last finite bucket when it falls in
    +Inf; NaN with no observation or no +Inf bucket."""
    if not buckets or not math.isinf(buckets[-1][0]):
        return math.nan
    les = [le for le, _ in buckets]
    counts = list(np.maximum.accumulate([c for _, c in buckets]))  # monotone, as Prometheus
    total = counts[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    i = next(k for k, c in enumerate(counts) if c >= rank)
    if i == len(les) - 1:
        return les[-2] if len(les) > 1 else math.nan
    if i == 0 and les[0] <= 0:
        return les[0]
    lower_le = 0.0 if i == 0 else les[i - 1]
    lower_count = 0.0 if i == 0 else counts[i - 1]
    width = counts[i] - lower_count
    if width <= 0:
        return les[i]
    return float(lower_le + (les[i] - lower_le) * (rank - lower_count) / width)


def increments(values: Sequence[float]) -> FloatArray:
    """Increase of one counter series over each interval of a grid: ``values[k]`` is the
    counter at grid point k (NaN: no sample); the result has ``len(values) - 1`` entries.
    The first sample is the baseline; a value below the previous one is a reset (the new
    value is the increase); after a gap the increase lands on the interval that ends at
    the next sample."""
    out = np.zeros(max(len(values) - 1, 0), dtype=np.float64)
    last: float | None = None
    for k, v in enumerate(values):
        if not math.isfinite(v):
            continue
        if last is not None:
            out[k - 1] = v - last if v >= last else v
        last = v
    return out


# ---- reading ------------------------------------------------------------------------------
RangeResult = list[dict[str, Any]]


class PrometheusHistoryReader:
    """Range queries over the PMA metrics (prometheus-api-client's ``custom_query_range``).

    ``selector``: label matchers ANDed to every query, e.g. ``namespace="qorch"``.
    """

    def __init__(self, url: str, *, selector: str = "", timeout_seconds: float = 30.0) -> None:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.url = url.rstrip("/")
        self.selector = selector.strip().removeprefix("{").removesuffix("}").strip()
        self._timeout = timeout_seconds
        # One quick retry: an unreachable server must be reported, not waited out.
        self._prom = PrometheusConnect(
            url=self.url,
            disable_ssl=True,
            retry=Retry(total=1, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
            timeout=math.ceil(timeout_seconds),
        )

    def _sel(self, metric: str) -> str:
        return f"{metric}{{{self.selector}}}" if self.selector else metric

    def query_range(self, promql: str, grid: Sequence[datetime], step: timedelta) -> RangeResult:
        """``custom_query_range`` over ``grid`` (evenly spaced by ``step``), in chunks of at
        most ``MAX_POINTS_PER_QUERY`` points; the series of all chunks merged."""
        import requests
        from prometheus_api_client.exceptions import PrometheusApiClientException

        merged: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        step_text = _fmt_step(step)
        for first in range(0, len(grid), MAX_POINTS_PER_QUERY):
            chunk = grid[first : first + MAX_POINTS_PER_QUERY]
            try:
                answer = self._prom.custom_query_range(
                    promql,
                    start_time=chunk[0],
                    end_time=chunk[-1],
                    step=step_text,
                    params={"timeout": f"{int(self._timeout * 1000)}ms"},
                )
            except PrometheusApiClientException as exc:
                raise PrometheusHistoryError(
                    f"Prometheus at {self.url} refused the range query {promql!r}: {exc}"
                ) from exc
            except (ValueError, KeyError, TypeError) as exc:
                # a 200 whose body is not JSON or lacks data.result (requests' JSON error
                # is a ValueError): something else answers at that URL
                raise PrometheusHistoryError(
                    f"{self.url} answered the range query {promql!r} with something that is "
                    f"not the Prometheus API ({type(exc).__name__}: {exc}); is it the "
                    "Prometheus server's base URL?"
                ) from exc
            except requests.RequestException as exc:
                raise PrometheusHistoryError(
                    f"Prometheus at {self.url} is unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(answer, list) or not all(
                isinstance(s, dict) and isinstance(s.get("values"), list) for s in answer
            ):
                raise PrometheusHistoryError(
                    f"Prometheus at {self.url} answered the range query {promql!r} with "
                    f"something other than a matrix: {str(answer)[:200]}"
                )
            for series in answer:
                labels = {str(k): str(v) for k, v in dict(series.get("metric", {})).items()}
                key = tuple(sorted(labels.items()))
                entry = merged.setdefault(key, {"metric": labels, "values": []})
                entry["values"].extend(series["values"])
        return list(merged.values())

    def read(
        self, since: timedelta, step: timedelta, *, end: datetime | None = None
    ) -> PrometheusHistory:
        """The history of the window ``(end - since, end]`` (``end``: now), one interval per
        ``step``; the grid is aligned to multiples of the step (UTC epoch)."""
        step_s = step.total_seconds()
        if step_s < 1 or step_s != int(step_s):
            raise ValueError(f"step must be a whole number of seconds >= 1, not {step_s:g}s")
        if since < step:
            raise ValueError(
                f"--since ({since.total_seconds():g}s) is shorter than --step ({step_s:g}s)"
            )
        steps = int(since.total_seconds() // step_s)
        if steps > MAX_STEPS:
            raise ValueError(
                f"--since/--step gives {steps} steps per series; at most {MAX_STEPS}: "
                "choose a larger --step"
            )
        now = (end or datetime.now(UTC)).timestamp()
        last = math.floor(now / step_s) * step_s
        # One point before the window: the baseline of the first interval's increase.
        grid = [datetime.fromtimestamp(last - (steps - k) * step_s, UTC) for k in range(steps + 1)]
        times = np.array([g.timestamp() for g in grid], dtype=np.float64)

        gauges = {
            name: self._gauge(f"max by (backend) ({self._sel(metric)})", grid, step, times)
            for name, metric in GAUGES.items()
        }
        waits = self._histogram(QUEUE_WAIT, ("backend",), grid, step, times)
        runs = self._histogram(EXECUTION, ("backend", "primitive"), grid, step, times)

        queue = [
            obs
            for (backend,), hist in sorted(waits.items())
            for obs in _queue_observations(backend, hist, grid, times, gauges)
        ]
        executions = [
            ExecutionObservation(backend, primitive, s, e, jobs, mean, p50, p90)
            for (backend, primitive), hist in sorted(runs.items())
            for s, e, jobs, mean, p50, p90, _ in hist.intervals(grid)
        ]
        return PrometheusHistory(
            url=self.url,
            start=grid[0],
            end=grid[-1],
            step=step,
            selector=self.selector,
            queue_waits=tuple(queue),
            executions=tuple(executions),
            calibrations=tuple(_calibrations(gauges, grid)),
            gauges={
                name: {
                    b: tuple((grid[k], float(v)) for k, v in enumerate(values) if math.isfinite(v))
                    for b, values in sorted(series.items())
                }
                for name, series in gauges.items()
            },
        )

    def _values(self, series: dict[str, Any], times: FloatArray) -> FloatArray:
        """A range-query series on the grid (NaN where it has no point)."""
        out = np.full(len(times), np.nan)
        index = {round(float(t)): k for k, t in enumerate(times)}
        for pair in series["values"]:
            k = index.get(round(float(pair[0])))
            if k is not None:
                try:
                    out[k] = float(pair[1])
                except (TypeError, ValueError):
                    out[k] = np.nan
        return out

    def _gauge(
        self, promql: str, grid: Sequence[datetime], step: timedelta, times: FloatArray
    ) -> dict[str, FloatArray]:
        result = self.query_range(promql, grid, step)
        out: dict[str, FloatArray] = {}
        for series in result:
            values = self._values(series, times)
            values[~np.isfinite(values)] = np.nan
            out[series["metric"].get("backend", "")] = values
        return out

    def _histogram(
        self,
        metric: str,
        keys: tuple[str, ...],
        grid: Sequence[datetime],
        step: timedelta,
        times: FloatArray,
    ) -> dict[tuple[str, ...], _Histogram]:
        """Per key (e.g. backend), the increase of ``_count``, ``_sum`` and each bucket over
        every interval, summed over the series (gateway replicas, restarts)."""
        out: dict[tuple[str, ...], _Histogram] = {}
        n = len(times) - 1

        def entry(labels: Mapping[str, str]) -> _Histogram:
            key = tuple(labels.get(k, "") for k in keys)
            return out.setdefault(key, _Histogram(np.zeros(n), np.zeros(n), {}))

        for suffix in ("_count", "_sum", "_bucket"):
            for series in self.query_range(self._sel(metric + suffix), grid, step):
                labels = series["metric"]
                inc = increments(list(self._values(series, times)))
                hist = entry(labels)
                if suffix == "_count":
                    hist.count += inc
                elif suffix == "_sum":
                    hist.total += inc
                else:
                    le = float(labels.get("le", "nan"))
                    if math.isnan(le):
                        raise PrometheusHistoryError(
                            f"{metric}_bucket series without a numeric le label: {labels}"
                        )
                    hist.buckets[le] = hist.buckets.get(le, np.zeros(n)) + inc
        return out


@dataclass
class _Histogram:
    count: FloatArray  # [intervals]
    total: FloatArray
    buckets: dict[float, FloatArray]  # le -> [intervals]

    def bucket_matrix(self) -> tuple[list[float], FloatArray]:
        les = sorted(self.buckets)
        if not les:
            return [], np.zeros((len(self.count), 0))
        return les, np.column_stack([self.buckets[le] for le in les])

    def intervals(
        self, grid: Sequence[datetime]
    ) -> Iterable[tuple[datetime, datetime, float, float, float, float, Buckets]]:
        """(start, end, jobs, mean, p50, p90, buckets) of every interval with a job."""
        les, matrix = self.bucket_matrix()
        for k in (int(i) for i in np.flatnonzero(self.count > 0)):
            buckets = tuple(zip(les, (float(c) for c in matrix[k]), strict=True))
            jobs = float(self.count[k])
            yield (
                grid[k],
                grid[k + 1],
                jobs,
                float(self.total[k] / jobs),
                bucket_quantile(0.5, buckets),
                bucket_quantile(0.9, buckets),
                buckets,
            )


def _at(values: FloatArray | None, times: FloatArray, when: float) -> float | None:
    """The gauge's latest finite value at or before ``when`` (None: none)."""
    if values is None:
        return None
    k = int(np.searchsorted(times, when, side="right")) - 1
    while k >= 0:
        if math.isfinite(values[k]):
            return float(values[k])
        k -= 1
    return None


def _queue_observations(
    backend: str,
    hist: _Histogram,
    grid: Sequence[datetime],
    times: FloatArray,
    gauges: Mapping[str, Mapping[str, FloatArray]],
) -> list[QueueWaitObservation]:
    les, matrix = hist.bucket_matrix()
    ends = times[1:]
    jobs_cum = np.cumsum(hist.count)
    buckets_cum = np.cumsum(matrix, axis=0) if matrix.size else matrix
    out = []
    for start, end, jobs, mean, p50, p90, buckets in hist.intervals(grid):
        middle = (start.timestamp() + end.timestamp()) / 2
        submitted = middle - (mean if math.isfinite(mean) else 0.0)
        recent = _recent(les, ends, jobs_cum, buckets_cum, hist.count, matrix, submitted)

        def gauge(name: str, when: float = submitted) -> float | None:
            return _at(gauges.get(name, {}).get(backend), times, when)

        out.append(
            QueueWaitObservation(
                backend=backend,
                start=start,
                end=end,
                jobs=jobs,
                mean_wait_s=mean,
                p50_wait_s=p50,
                p90_wait_s=p90,
                buckets=buckets,
                submitted_at=datetime.fromtimestamp(submitted, UTC),
                recent_wait_p50_s=recent[0],
                recent_wait_p90_s=recent[1],
                recent_wait_count=recent[2],
                backend_qubits=gauge("qubits"),
                pending_jobs=gauge("pending_jobs"),
                queue_length=gauge("queue_length"),
            )
        )
    return out


def _recent(
    les: list[float],
    ends: FloatArray,
    jobs_cum: FloatArray,
    buckets_cum: FloatArray,
    jobs: FloatArray,
    matrix: FloatArray,
    when: float,
) -> tuple[float, float, float]:
    """(p50, p90, count) of the latest ``RECENT_JOBS`` jobs of the intervals that ended at or
    before ``when`` (see the module's docstring)."""
    last = int(np.searchsorted(ends, when, side="right")) - 1
    if last < 0 or jobs_cum[last] <= 0:
        return 0.0, 0.0, 0.0
    total = float(jobs_cum[last])
    if total <= RECENT_JOBS:
        counts = buckets_cum[last] if matrix.size else np.zeros(0)
        taken = total
    else:
        # the latest interval i such that intervals i..last hold >= 20 jobs: the jobs
        # before it number at most total - 20 (``before`` grows with i)
        before = jobs_cum[: last + 1] - jobs[: last + 1]
        i = int(np.searchsorted(before, total - RECENT_JOBS, side="right")) - 1
        after = total - float(jobs_cum[i])  # jobs of intervals i+1..last
        fraction = (RECENT_JOBS - after) / float(jobs[i]) if jobs[i] > 0 else 0.0
        if matrix.size:
            counts = buckets_cum[last] - buckets_cum[i] + fraction * matrix[i]
        else:
            counts = np.zeros(0)
        taken = float(RECENT_JOBS)
    buckets = tuple(zip(les, (float(c) for c in counts), strict=True))
    p50, p90 = bucket_quantile(0.5, buckets), bucket_quantile(0.9, buckets)
    if not (math.isfinite(p50) and math.isfinite(p90)):
        return 0.0, 0.0, 0.0
    return p50, p90, min(taken, float(RECENT_JOBS))


def _calibrations(
    gauges: Mapping[str, Mapping[str, FloatArray]], grid: Sequence[datetime]
) -> list[CalibrationSample]:
    """One sample per backend and change of its calibration gauges."""
    backends = sorted({b for name in CALIBRATION for b in gauges.get(name, {})})
    out = []
    for backend in backends:
        previous: tuple[float | None, ...] | None = None
        for k, at in enumerate(grid):
            values = tuple(_point(gauges.get(name, {}).get(backend), k) for name in CALIBRATION)
            if all(v is None for v in values) or values == previous:
                continue
            previous = values
            out.append(CalibrationSample(backend, at, *values))
    return out


def _point(values: FloatArray | None, k: int) -> float | None:
    if values is None or not math.isfinite(values[k]):
        return None
    return float(values[k])


def read_history(
    url: str,
    since: timedelta,
    step: timedelta,
    *,
    selector: str = "",
    end: datetime | None = None,
    timeout_seconds: float = 30.0,
) -> PrometheusHistory:
    """``PrometheusHistoryReader(url, selector=...).read(since, step, end=end)``."""
    reader = PrometheusHistoryReader(url, selector=selector, timeout_seconds=timeout_seconds)
    return reader.read(since, step, end=end)


# ---- the training side --------------------------------------------------------------------
Evaluation = Callable[[PathLike | None, bool, Path | None], list[Row]]


def evaluations(history: PrometheusHistory | None) -> tuple[Evaluation, ...]:
    """``qorch.predictor.training.EVALUATIONS`` with the queue_wait entry fed the cluster's
    history (when there is some); the others unchanged (see the module's docstring for why
    qpu_runtime cannot use it)."""
    from qorch.predictor import training

    if history is None or not history.queue_waits:
        return tuple(training.EVALUATIONS)
    return tuple(
        queue_wait_with_history(history) if ev is queue_wait.evaluate else ev
        for ev in training.EVALUATIONS
    )


def trace_fill(data: queue_wait.QueueData) -> dict[str, float]:
    """The trace medians of the columns the PMA does not export."""
    return {
        name: float(np.median(data.x[:, queue_wait.FEATURES.index(name)])) if len(data.x) else 0.0
        for name in CIRCUIT_FILL
    }


def merge(
    a: queue_wait.QueueData, b: queue_wait.QueueData
) -> tuple[queue_wait.QueueData, npt.NDArray[np.bool_]]:
    """Both datasets' rows, ordered by submission time (stable), and which rows are ``b``'s."""
    submitted = np.concatenate([a.submitted, b.submitted])
    order = np.argsort(submitted, kind="stable")
    merged = queue_wait.QueueData(
        np.concatenate([a.x, b.x])[order],
        np.concatenate([a.wait, b.wait])[order],
        submitted[order],
        np.concatenate([a.backend, b.backend])[order],
    )
    return merged, np.asarray(order >= len(a.wait), dtype=np.bool_)


def queue_wait_with_history(history: PrometheusHistory) -> Evaluation:
    """queue_wait's ``evaluate``, plus the cluster's rows:

    - the trace figures are ``queue_wait.evaluate``'s own (time split at 2020-09-01);
    - with at least ``MIN_CLUSTER_HELDOUT`` rows in the latest quarter of the window, two more
      rows: P10-P90 coverage and interval score there, of the model trained on the
      traces' training period plus the cluster's earlier rows, beside the same model
      trained on the traces alone;
    - the exported model is trained on the traces' training period (what
      ``queue_wait.evaluate`` exports) plus every row of the cluster's history.
    """

    @functools.wraps(queue_wait.evaluate)
    def evaluate(
        traces_dir: PathLike | None = None, quick: bool = False, export_to: Path | None = None
    ) -> list[Row]:
        traces = queue_wait.load(traces_dir)
        cluster = history.queue_wait_data(trace_fill(traces))
        if len(cluster.wait) == 0:
            return queue_wait.evaluate(traces_dir, quick, export_to)
        rows = queue_wait.evaluate(traces_dir, quick, None)
        data, is_cluster = merge(traces, cluster)
        cutoff = queue_wait.CUTOFF.timestamp()
        trace_train = np.flatnonzero(~is_cluster & (data.submitted < cutoff))
        cluster_idx = np.flatnonzero(is_cluster)  # time-ordered
        held = cluster_idx[round(len(cluster_idx) * 0.75) :]
        note = (
            f"{len(cluster_idx)} rows from {len(history.queue_waits)} intervals of "
            f"{history.source()}"
        )
        if len(held) >= MIN_CLUSTER_HELDOUT:
            rows.extend(_cluster_rows(data, trace_train, cluster_idx, held, quick, note))
        else:
            rows.append(
                row(
                    queue_wait.NAME,
                    "rows from the cluster's history (Prometheus)",
                    "all appended to training",
                    float(len(cluster_idx)),
                    method="PMA history, expanded from histogram buckets",
                    note=f"{note}; fewer than {MIN_CLUSTER_HELDOUT} rows in the window's "
                    "latest quarter: no held-out figure on the cluster",
                )
            )
        score = next(
            (float(r["value"]) for r in rows if str(r["metric"]).startswith("interval score")),
            float("nan"),
        )
        train_idx = np.sort(np.concatenate([trace_train, cluster_idx]))
        final = queue_wait.train(data, train_idx, quick=quick, heldout_error=score)
        final = replace(
            final,
            split=f"{queue_wait.SPLIT}; the exported model also trained on the "
            f"{len(cluster_idx)} rows of the cluster's history",
            sources=(*final.sources, history.source()),
        )
        if export_to is not None:
            queue_wait.export(final, export_to)
        return rows

    return evaluate


def _cluster_rows(
    data: queue_wait.QueueData,
    trace_train: npt.NDArray[np.int64],
    cluster_idx: npt.NDArray[np.int64],
    held: npt.NDArray[np.int64],
    quick: bool,
    note: str,
) -> list[Row]:
    earlier = cluster_idx[: len(cluster_idx) - len(held)]
    with_history = queue_wait.train(
        data, np.sort(np.concatenate([trace_train, earlier])), quick=quick
    )
    traces_only = queue_wait.train(data, trace_train, quick=quick)
    log_wait = np.log(np.maximum(data.wait[held], queue_wait.MIN_WAIT_S))
    y = data.wait[held]

    def figures(model: Any) -> tuple[float, float, float]:
        q = model.predict_native(data.x[held])
        low, high = np.exp(q["p10"]), np.exp(q["p90"])
        return (
            interval_coverage(low, high, y),
            median_width(low, high),
            queue_wait.interval_score(q["p10"], q["p90"], log_wait),
        )

    mine, base = figures(with_history), figures(traces_only)
    split = "cluster history (Prometheus): latest quarter of the window"
    method = f"{with_history.details['variant']}, traces + cluster's earlier rows"
    baselines = "trained on the traces alone"
    return [
        row(
            queue_wait.NAME,
            "P10-P90 coverage",
            split,
            mine[0],
            method=method,
            baselines={baselines: base[0]},
            goal=">= 0.80",
            note=f"{note}; {len(held)} held-out rows",
        ),
        row(
            queue_wait.NAME,
            "interval score, log s (lower is better)",
            split,
            mine[2],
            method=method,
            baselines={baselines: base[2]},
        ),
    ]


__all__ = [
    "CalibrationSample",
    "ExecutionObservation",
    "PrometheusHistory",
    "PrometheusHistoryError",
    "PrometheusHistoryReader",
    "QueueWaitObservation",
    "bucket_quantile",
    "evaluations",
    "increments",
    "parse_duration",
    "read_history",
]
