"""The exogenous world of the digital twin, replayed from real traces (``qorch.traces``).

Four models, each built once from its trace and then queried on the twin's clock, in float
seconds since the start of the replay:

- :class:`QueueReplay`: the pending-job count of 12 IBM backends, minute by minute (2023).
- :class:`ServiceTimes`: the empirical run time of one IBM job (2019-2020), which turns a
  queue LENGTH into a WAIT (:meth:`ServiceTimes.wait`).
- :class:`CalibrationDays`: one ``CalibrationSummary`` a day from ibm_perth's snapshots.
- :class:`GpuBackground`: the busy fraction of a production GPU cluster (Alibaba openb).

Pure: no network, no global state; every bad or truncated file raises ``TraceError`` naming
the file (and the line, where there is one) through the readers of ``qorch.traces``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from qorch.api.backend import CalibrationSummary
from qorch.traces import (
    NODES_FILE,
    PODS_FILE,
    QUEUE_JOBS_FILE,
    Calibration,
    TraceError,
    read_calibrations,
    read_gpu_nodes,
    read_gpu_pods,
    read_queue_jobs,
    read_queue_lengths,
)
from qorch.traces._io import resolve

DAY_S: Final = 86_400.0
MINUTE_S: Final = 60.0
# Up to this many jobs ahead, a wait is an exact sum of sampled run times; beyond, the sum is
# normal by the central limit theorem (and summing thousands of samples per query is slow).
EXACT_WAIT_MAX_JOBS: Final = 50
# A backend needs this many DONE jobs for a run-time distribution of its own.
MIN_JOBS_PER_BACKEND: Final = 30


def _step_index(times: Sequence[float], t: float) -> int:
    """Index of the last entry of ``times`` (sorted) at or before ``t``; -1 when none."""
    return bisect.bisect_right(times, t) - 1


# ---- queue lengths ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _QueueSeries:
    """One backend's samples, by time; each holds until the next."""

    times: tuple[float, ...]
    pending: tuple[int, ...]
    operational: tuple[bool, ...]
    status: tuple[str, ...]


@dataclass(frozen=True)
class QueueReplay:
    """Replay of the per-minute queue LENGTH of IBM backends (``pending_jobs.csv.gz``).

    Each value is a step function: the last sample at or before ``t`` holds until the next
    sample, across gaps in the trace, and after the last sample for good (the trace is not
    wrapped: see :attr:`duration_seconds`). Asking before a backend's first sample is an error.
    """

    start: datetime  # UTC wall time of t = 0
    duration_seconds: float
    _series: Mapping[str, _QueueSeries] = field(repr=False)

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        backends: Sequence[str] | None = None,
        start: datetime | None = None,
        days: float | None = None,
    ) -> QueueReplay:
        """Read the trace (default: the traces directory) and keep ``backends`` (default:
        all), from ``start`` (default: the first minute of the kept backends) for ``days``
        (default: to the end). When ``start`` falls between samples, the sample in force at
        ``start`` is carried in as the value at t = 0."""
        if start is not None and start.tzinfo is None:
            raise ValueError(f"start {start.isoformat()} has no time zone")
        if days is not None and days <= 0:
            raise ValueError(f"days must be positive, got {days}")
        samples = read_queue_lengths(path)
        wanted = set(backends) if backends is not None else None
        if wanted is not None:
            unknown = wanted - {s.backend for s in samples}
            if unknown:
                raise ValueError(f"backend(s) not in the queue trace: {', '.join(sorted(unknown))}")
            samples = tuple(s for s in samples if s.backend in wanted)
        if not samples:
            raise ValueError("the queue trace has no samples")
        origin = start.astimezone(UTC) if start is not None else min(s.minute for s in samples)
        end = origin + timedelta(days=days) if days is not None else None
        # Stable sort: of two samples of the same minute, the later line wins below.
        kept = [s for s in sorted(samples, key=lambda s: s.minute) if end is None or s.minute < end]
        if not any(s.minute >= origin for s in kept):
            raise ValueError(f"no queue samples in the window from {origin.isoformat()}")
        by_backend: dict[str, list[tuple[float, int, bool, str]]] = defaultdict(list)
        for s in kept:
            t = max((s.minute - origin).total_seconds(), 0.0)  # carry-in lands on t = 0
            rows = by_backend[s.backend]
            if rows and rows[-1][0] == t:
                rows.pop()
            rows.append((t, s.pending_jobs, s.operational, s.status_msg))
        last = max(rows[-1][0] for rows in by_backend.values()) + MINUTE_S
        if end is not None:
            last = min(last, (end - origin).total_seconds())
        series = {
            name: _QueueSeries(
                times=tuple(r[0] for r in rows),
                pending=tuple(r[1] for r in rows),
                operational=tuple(r[2] for r in rows),
                status=tuple(r[3] for r in rows),
            )
            for name, rows in sorted(by_backend.items())
        }
        return cls(start=origin, duration_seconds=last, _series=series)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self._series)

    def _at(self, backend: str, t: float) -> tuple[_QueueSeries, int]:
        try:
            series = self._series[backend]
        except KeyError:
            raise KeyError(f"backend {backend!r} is not in this replay") from None
        i = _step_index(series.times, t)
        if i < 0:
            raise ValueError(f"t={t:g} s is before the first sample of {backend}")
        return series, i

    def queue_length(self, backend: str, t: float) -> int:
        """Pending jobs of ``backend`` at ``t`` (the last sample at or before ``t``)."""
        series, i = self._at(backend, t)
        return series.pending[i]

    def operational(self, backend: str, t: float) -> bool:
        series, i = self._at(backend, t)
        return series.operational[i]

    def down_intervals(self, backend: str) -> list[tuple[float, float]]:
        """``(from, to)`` stretches in which the backend took no work: not operational, or
        its status other than ``active`` (``to`` is inf when it stays so to the end)."""
        series, _ = self._at(backend, self._series[backend].times[0])
        out: list[tuple[float, float]] = []
        since: float | None = None
        for t, up, status in zip(series.times, series.operational, series.status, strict=True):
            down = not up or status != "active"
            if down and since is None:
                since = t
            elif not down and since is not None:
                out.append((since, t))
                since = None
        if since is not None:
            out.append((since, math.inf))
        return out

    def status(self, backend: str, t: float) -> str:
        """The backend's status message at ``t``: ``active``, or ``internal``/``dedicated``
        when IBM reserved it (``operational`` stays true then)."""
        series, i = self._at(backend, t)
        return series.status[i]

    def changes(self, backend: str) -> list[tuple[float, int, bool]]:
        """``(t, queue_length, operational)`` at the first sample and wherever either value
        changes: the times at which the twin schedules queue events."""
        try:
            s = self._series[backend]
        except KeyError:
            raise KeyError(f"backend {backend!r} is not in this replay") from None
        out: list[tuple[float, int, bool]] = []
        for t, pending, up in zip(s.times, s.pending, s.operational, strict=True):
            if not out or (pending, up) != out[-1][1:]:
                out.append((t, pending, up))
        return out


# ---- service times ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceTimes:
    """Empirical run time of one IBM Quantum job (seconds), from the DONE jobs of Ravi et
    al.'s trace (``ibm-queue-jobs/jobs.csv``).

    This is how the twin turns the replayed queue LENGTH into a WAIT: a job behind ``n``
    pending jobs waits for their ``n`` run times (:meth:`wait`), each drawn from the measured
    run times rather than from an assumed distribution. It ignores that IBM's fair-share
    scheduler may reorder the queue, and that 2023 jobs need not run as long as 2019-2020
    ones."""

    samples: tuple[float, ...]  # sorted ascending, all > 0
    backend: str | None = None  # None: pooled over backends
    per_backend: Mapping[str, ServiceTimes] = field(default_factory=dict, repr=False)
    mean: float = field(init=False)
    variance: float = field(init=False)  # population variance of the samples

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("no service-time samples")
        if not all(math.isfinite(s) and s > 0 for s in self.samples):
            raise ValueError("service times must be finite and positive")
        ordered = tuple(sorted(self.samples))
        mean = statistics.fmean(ordered)
        object.__setattr__(self, "samples", ordered)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "variance", statistics.pvariance(ordered, mu=mean))

    @classmethod
    def fit(
        cls,
        path: Path | None = None,
        *,
        min_jobs_per_backend: int = MIN_JOBS_PER_BACKEND,
        include_simulators: bool = False,
    ) -> ServiceTimes:
        """Fit on the DONE jobs with ``run_s`` > 0. Simulator backends (a name containing
        ``simulator``) are left out by default: the twin replays real devices' queues.
        Backends with at least ``min_jobs_per_backend`` such jobs get their own fit."""
        file = resolve(path, QUEUE_JOBS_FILE)
        by_backend: dict[str, list[float]] = defaultdict(list)
        for job in read_queue_jobs(file):
            if job.status != "DONE" or job.run_s <= 0:
                continue
            if not include_simulators and "simulator" in job.backend:
                continue
            by_backend[job.backend].append(job.run_s)
        if not by_backend:
            raise TraceError(file, None, "no DONE job with a positive run_s")
        own = {
            name: cls(tuple(times), backend=name)
            for name, times in sorted(by_backend.items())
            if len(times) >= min_jobs_per_backend
        }
        pooled = tuple(itertools.chain.from_iterable(by_backend.values()))
        return cls(pooled, per_backend=own)

    def for_backend(self, name: str) -> ServiceTimes:
        """The backend's own fit where it had enough jobs, else this (pooled) one."""
        return self.per_backend.get(name, self)

    def quantile(self, q: float) -> float:
        """Empirical quantile, linear between order statistics (numpy's default)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        pos = q * (len(self.samples) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(self.samples) - 1)
        return self.samples[low] + (pos - low) * (self.samples[high] - self.samples[low])

    def sample(self, rng: random.Random) -> float:
        """One measured run time, drawn uniformly (empirical resampling)."""
        return rng.choice(self.samples)

    def wait(self, queue_length: int, rng: random.Random) -> float:
        """Seconds a job waits behind ``queue_length`` pending jobs: the sum of that many
        sampled run times; for more than ``EXACT_WAIT_MAX_JOBS`` jobs, a normal draw with the
        same mean and variance as that sum (n x mean, n x variance), clipped at 0."""
        if queue_length < 0:
            raise ValueError(f"queue length must be >= 0, got {queue_length}")
        if queue_length <= EXACT_WAIT_MAX_JOBS:
            return math.fsum(self.sample(rng) for _ in range(queue_length))
        mu = queue_length * self.mean
        sigma = math.sqrt(queue_length * self.variance)
        return max(0.0, rng.gauss(mu, sigma))


# ---- calibrations ----------------------------------------------------------------------------
def _known(value: float) -> float | None:
    return None if math.isnan(value) else value


def calibration_summary(calibration: Calibration) -> CalibrationSummary:
    """A day's snapshot as a ``QuantumBackend``'s ``status.calibration``: the trace reader's
    medians (the gateway reports the same ones), T1/T2 in seconds, ``updatedAt`` the
    device's own ``last_update_date``."""
    return CalibrationSummary(
        medianTwoQubitError=_known(calibration.median_two_qubit_error),
        medianSingleQubitError=_known(calibration.median_single_qubit_error),
        medianReadoutError=_known(calibration.median_readout_error),
        medianT1Seconds=calibration.median_t1_us * 1e-6,
        medianT2Seconds=calibration.median_t2_us * 1e-6,
        updatedAt=calibration.last_update.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


@dataclass(frozen=True)
class CalibrationDays:
    """ibm_perth's daily calibrations (``ibm-calibrations/ibm_perth/*.json``), oldest first;
    a replay longer than the trace cycles through it again."""

    calibrations: tuple[Calibration, ...]
    _summaries: tuple[CalibrationSummary, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.calibrations:
            raise ValueError("no calibration days")
        summaries = tuple(calibration_summary(c) for c in self.calibrations)
        object.__setattr__(self, "_summaries", summaries)

    @classmethod
    def load(cls, directory: Path | None = None) -> CalibrationDays:
        """Every ``YYYY-MM-DD.json`` of ``directory``, parsed once (a bad file raises
        ``TraceError`` naming it)."""
        return cls(read_calibrations(directory))

    @property
    def days(self) -> int:
        return len(self.calibrations)

    def calibration(self, day_index: int) -> Calibration:
        """The full snapshot of day ``day_index`` (cycled), e.g. for an Aer noise model."""
        if day_index < 0:
            raise ValueError(f"day index must be >= 0, got {day_index}")
        return self.calibrations[day_index % self.days]

    def summary(self, day_index: int) -> CalibrationSummary:
        if day_index < 0:
            raise ValueError(f"day index must be >= 0, got {day_index}")
        return self._summaries[day_index % self.days]

    def summary_at(self, t: float, start_day: int = 0) -> CalibrationSummary:
        """The calibration in force at replay time ``t``: day ``start_day + floor(t / 1 d)``."""
        return self.summary(start_day + math.floor(t / DAY_S))


# ---- GPU cluster background ------------------------------------------------------------------
@dataclass(frozen=True)
class GpuBackground:
    """Fraction of the trace cluster's GPUs that its pods hold, over time (Alibaba openb).

    A scheduled pod holds ``num_gpu`` whole GPUs, or ``gpu_milli / 1000`` of one when it
    shares one, from ``scheduled_time`` until ``deletion_time`` (a pod without one holds to
    the end of the trace); pods never scheduled hold nothing. t = 0 is the first scheduled
    pod; past the end of the trace the curve starts over, so any replay has load."""

    times: tuple[float, ...]  # replay seconds of each change, first 0.0
    fractions: tuple[float, ...]  # busy fraction from times[i] on, in [0, 1]
    period_seconds: float  # the curve repeats after this long
    total_gpus: int  # GPUs of the trace's nodes

    @classmethod
    def load(
        cls,
        pod_list: Path | None = None,
        node_list: Path | None = None,
        time_scale: float = 1.0,
    ) -> GpuBackground:
        """``time_scale`` is replay seconds per trace second (0.1 plays it 10x faster)."""
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        pods_file = resolve(pod_list, PODS_FILE)
        nodes_file = resolve(node_list, NODES_FILE)
        total = sum(n.gpu for n in read_gpu_nodes(nodes_file))
        if total <= 0:
            raise TraceError(nodes_file, None, "the nodes have no GPUs")
        # (pod, scheduled, deleted or None) of every pod that was ever scheduled
        spans = [
            (p, p.scheduled_time, p.deletion_time)
            for p in read_gpu_pods(pods_file)
            if p.scheduled_time is not None
        ]
        if not spans:
            raise TraceError(pods_file, None, "no pod was ever scheduled")
        for pod, begin, stop in spans:
            if stop is not None and stop < begin:
                raise TraceError(pods_file, None, f"pod {pod.name} is deleted before scheduled")
        first = min(begin for _, begin, _ in spans)
        end = max(begin if stop is None else stop for _, begin, stop in spans)
        if end <= first:
            raise TraceError(pods_file, None, "the scheduled pods span no time")
        delta: dict[int, int] = defaultdict(int)  # trace second -> change in milli-GPUs held
        for pod, begin, stop in spans:
            fractional = pod.num_gpu == 1 and 0 < pod.gpu_milli < 1000
            milli = pod.gpu_milli if fractional else pod.num_gpu * 1000
            delta[begin] += milli
            delta[end if stop is None else stop] -= milli
        times: list[float] = []
        fractions: list[float] = []
        held = 0
        for second in sorted(delta):
            held += delta[second]
            if second >= end:
                break  # the end is the start of the next lap
            # Clipped: the pod list may ask for more than the node list has.
            fraction = min(1.0, held / (total * 1000))
            if not fractions or fraction != fractions[-1]:
                times.append((second - first) * time_scale)
                fractions.append(fraction)
        return cls(tuple(times), tuple(fractions), (end - first) * time_scale, total)

    def busy_fraction(self, t: float) -> float:
        """Busy fraction at replay time ``t`` (wrapped into one lap of the trace)."""
        return self.fractions[_step_index(self.times, t % self.period_seconds)]

    def busy_gpus(self, t: float, pool_gpus: int) -> float:
        """GPUs of a pool of ``pool_gpus`` that the background holds at ``t``."""
        if pool_gpus < 0:
            raise ValueError(f"pool_gpus must be >= 0, got {pool_gpus}")
        return self.busy_fraction(t) * pool_gpus

    @property
    def peak_fraction(self) -> float:
        """Highest busy fraction of the trace (to rescale a sparse trace, if wanted)."""
        return max(self.fractions)

    def changes(self) -> list[tuple[float, float]]:
        """``(t, busy_fraction)`` at t = 0 and at every change within one lap; the next lap
        repeats them shifted by ``period_seconds``."""
        return list(zip(self.times, self.fractions, strict=True))
