"""The twin's exogenous world (``qorch.sim.exogenous``): exact answers on tiny slices written
here, file:line errors for bad rows, and plausible invariants on the real traces (skipped
where ../shared/data is absent)."""

from __future__ import annotations

import gzip
import json
import math
import random
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qorch.sim.exogenous import (
    EXACT_WAIT_MAX_JOBS,
    CalibrationDays,
    GpuBackground,
    QueueReplay,
    ServiceTimes,
)
from qorch.traces import TraceError, default_traces_dir


def write(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# ---- queue replay ----------------------------------------------------------------------------
QUEUE_HEADER = "backend,minute_utc,pending_jobs,operational,status_msg"
QUEUE_LINES = [
    "ibm_a,2023-11-16T14:00Z,5,1,active",  # t = 0
    "ibm_b,2023-11-16T14:00Z,7,1,internal",
    "ibm_a,2023-11-16T14:01Z,5,1,active",  # t = 60, no change
    "ibm_b,2023-11-16T14:01Z,9,1,active",
    "ibm_a,2023-11-16T14:02Z,8,1,active",  # t = 120
    # a gap of 3 minutes in the trace
    "ibm_a,2023-11-16T14:05Z,8,0,active",  # t = 300, down
    "ibm_b,2023-11-16T14:05Z,9,1,active",
]


def queue_file(tmp_path: Path, lines: list[str] = QUEUE_LINES) -> Path:
    return write(tmp_path / "pending_jobs.csv.gz", [QUEUE_HEADER, *lines])


def test_queue_length_is_a_step_function(tmp_path: Path) -> None:
    replay = QueueReplay.load(queue_file(tmp_path))
    assert replay.backends == ("ibm_a", "ibm_b")
    assert replay.start == datetime(2023, 11, 16, 14, 0, tzinfo=UTC)
    assert replay.duration_seconds == 360.0  # the last sample covers its minute
    at = {t: replay.queue_length("ibm_a", t) for t in (0, 59.9, 60, 119.99, 120, 200, 300, 1e6)}
    assert at == {0: 5, 59.9: 5, 60: 5, 119.99: 5, 120: 8, 200: 8, 300: 8, 1e6: 8}
    assert replay.operational("ibm_a", 299.9) is True
    assert replay.operational("ibm_a", 300) is False
    assert replay.queue_length("ibm_b", 59) == 7 and replay.queue_length("ibm_b", 60) == 9
    assert replay.status("ibm_b", 0) == "internal" and replay.status("ibm_b", 60) == "active"


def test_queue_lookups_outside_the_trace_are_errors(tmp_path: Path) -> None:
    replay = QueueReplay.load(queue_file(tmp_path))
    with pytest.raises(ValueError, match="before the first sample of ibm_a"):
        replay.queue_length("ibm_a", -0.5)
    with pytest.raises(KeyError, match="ibm_z"):
        replay.queue_length("ibm_z", 0)
    with pytest.raises(KeyError, match="ibm_z"):
        replay.changes("ibm_z")


def test_queue_changes_are_where_a_value_changes(tmp_path: Path) -> None:
    replay = QueueReplay.load(queue_file(tmp_path))
    assert replay.changes("ibm_a") == [(0.0, 5, True), (120.0, 8, True), (300.0, 8, False)]
    assert replay.changes("ibm_b") == [(0.0, 7, True), (60.0, 9, True)]


def test_queue_duplicate_minute_keeps_the_later_line(tmp_path: Path) -> None:
    lines = [*QUEUE_LINES[:5], "ibm_a,2023-11-16T14:02Z,11,1,active", *QUEUE_LINES[5:]]
    replay = QueueReplay.load(queue_file(tmp_path, lines))
    assert replay.queue_length("ibm_a", 120) == 11
    assert replay.changes("ibm_a") == [(0.0, 5, True), (120.0, 11, True), (300.0, 8, False)]


def test_queue_backends_start_and_days_select_a_window(tmp_path: Path) -> None:
    path = queue_file(tmp_path)
    only_b = QueueReplay.load(path, backends=["ibm_b"])
    assert only_b.backends == ("ibm_b",)
    with pytest.raises(ValueError, match="ibm_z"):
        QueueReplay.load(path, backends=["ibm_b", "ibm_z"])

    # Between samples: the samples in force at the start are carried in at t = 0.
    late = QueueReplay.load(path, start=datetime(2023, 11, 16, 14, 1, 30, tzinfo=UTC))
    assert late.queue_length("ibm_a", 0) == 5 and late.queue_length("ibm_b", 0) == 9
    assert late.queue_length("ibm_a", 29.9) == 5 and late.queue_length("ibm_a", 30) == 8
    assert late.changes("ibm_a")[0] == (0.0, 5, True)
    assert late.duration_seconds == 270.0
    later = QueueReplay.load(path, start=datetime(2023, 11, 16, 14, 2, 30, tzinfo=UTC))
    assert later.changes("ibm_b") == [(0.0, 9, True)]  # 7 was replaced before the start
    assert later.changes("ibm_a") == [(0.0, 8, True), (150.0, 8, False)]

    two_minutes = QueueReplay.load(
        path, start=datetime(2023, 11, 16, 14, 0, tzinfo=UTC), days=2 / 1440
    )
    assert two_minutes.duration_seconds == pytest.approx(120.0)
    assert two_minutes.queue_length("ibm_a", 1000) == 5  # 14:02 is outside the window

    with pytest.raises(ValueError, match="time zone"):
        QueueReplay.load(path, start=datetime(2023, 11, 16, 14, 0))
    with pytest.raises(ValueError, match="no queue samples"):
        QueueReplay.load(path, start=datetime(2023, 11, 17, tzinfo=UTC))


def test_queue_garbled_row_names_file_and_line(tmp_path: Path) -> None:
    lines = [*QUEUE_LINES[:3], "ibm_b,2023-11-16T14:01Z,nine,1,active", *QUEUE_LINES[4:]]
    path = queue_file(tmp_path, lines)
    with pytest.raises(TraceError) as info:
        QueueReplay.load(path)
    assert info.value.path == path and info.value.line == 5
    assert str(info.value).startswith(f"{path}:5:") and "pending_jobs" in str(info.value)


def test_queue_truncated_gzip_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "pending_jobs.csv.gz"
    data = gzip.compress(("\n".join([QUEUE_HEADER, *QUEUE_LINES * 200]) + "\n").encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError) as info:
        QueueReplay.load(path)
    assert info.value.path == path and info.value.line is not None and info.value.line > 1
    assert str(info.value).startswith(f"{path}:{info.value.line}:")


# ---- service times ---------------------------------------------------------------------------
JOBS_HEADER = (
    "backend,created_at,status,queue_s,run_s,circuits,shots,depth,width,memory_slots,"
    "backend_qubits,gate_ops,pulse"
)


def job(backend: str, run_s: float, status: str = "DONE") -> str:
    return f"{backend},2020-09-02T10:00:00Z,{status},10.0,{run_s},1,1024,5,2,2,5,10,0"


def jobs_file(tmp_path: Path, lines: list[str]) -> Path:
    return write(tmp_path / "jobs.csv", [JOBS_HEADER, *lines])


def mixed_jobs() -> list[str]:
    return [
        *(job("ibmq_x", float(k)) for k in range(1, 31)),  # 30 DONE jobs: 1..30 s
        job("ibmq_y", 100.0),
        job("ibmq_y", 200.0),
        job("ibmq_y", 300.0),
        job("ibmq_y", 50.0, "ERROR"),
        job("ibmq_y", 60.0, "CANCELLED"),
        job("ibmq_y", 0.0),  # DONE but never ran
        job("ibmq_qasm_simulator", 1000.0),
    ]


def test_service_times_fit_done_jobs_of_devices(tmp_path: Path) -> None:
    fit = ServiceTimes.fit(jobs_file(tmp_path, mixed_jobs()))
    expected = [*range(1, 31), 100, 200, 300]
    assert fit.samples == tuple(float(x) for x in expected)
    assert fit.mean == pytest.approx(statistics.fmean(expected))
    assert fit.variance == pytest.approx(statistics.pvariance(expected))
    assert fit.backend is None
    own = fit.for_backend("ibmq_x")
    assert own.backend == "ibmq_x" and own.samples == tuple(float(k) for k in range(1, 31))
    assert fit.for_backend("ibmq_y") is fit  # 3 jobs: too few for a fit of its own
    assert fit.for_backend("ibm_perth") is fit

    with_sim = ServiceTimes.fit(jobs_file(tmp_path, mixed_jobs()), include_simulators=True)
    assert with_sim.samples[-1] == 1000.0 and len(with_sim.samples) == len(expected) + 1


def test_service_times_without_a_usable_job_is_an_error(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, [job("ibmq_y", 50.0, "ERROR"), job("ibmq_y", 0.0)])
    with pytest.raises(TraceError, match=r"jobs\.csv: no DONE job"):
        ServiceTimes.fit(path)
    with pytest.raises(ValueError):
        ServiceTimes(())
    with pytest.raises(ValueError):
        ServiceTimes((1.0, -2.0))


def test_service_time_quantiles_interpolate() -> None:
    fit = ServiceTimes((4.0, 1.0, 3.0, 2.0))
    assert fit.samples == (1.0, 2.0, 3.0, 4.0) and fit.mean == 2.5
    assert [fit.quantile(q) for q in (0.0, 1 / 3, 0.5, 1.0)] == pytest.approx([1, 2, 2.5, 4])
    with pytest.raises(ValueError):
        fit.quantile(1.5)


def test_wait_is_a_sum_of_sampled_service_times() -> None:
    fit = ServiceTimes((1.0, 2.0, 3.0, 10.0))
    assert fit.wait(0, random.Random(1)) == 0.0
    with pytest.raises(ValueError):
        fit.wait(-1, random.Random(1))
    replayed = random.Random(7)
    draws = [fit.sample(replayed) for _ in range(5)]
    assert set(draws) <= set(fit.samples)
    assert fit.wait(5, random.Random(7)) == pytest.approx(sum(draws))

    rng = random.Random(3)
    waits = [fit.wait(10, rng) for _ in range(3000)]
    assert statistics.fmean(waits) == pytest.approx(10 * fit.mean, rel=0.03)
    assert min(waits) >= 10 * 1.0 and max(waits) <= 10 * 10.0


def test_wait_for_a_long_queue_is_normal_with_the_sums_moments() -> None:
    fit = ServiceTimes((1.0, 2.0, 3.0, 10.0))
    rng = random.Random(11)
    waits = [fit.wait(500, rng) for _ in range(3000)]
    assert statistics.fmean(waits) == pytest.approx(500 * fit.mean, rel=0.02)
    assert statistics.pstdev(waits) == pytest.approx(math.sqrt(500 * fit.variance), rel=0.1)


def test_wait_is_exact_up_to_the_threshold_and_clipped_beyond() -> None:
    # Heavy tail: the normal approximation of 51 jobs puts much mass below 0.
    fit = ServiceTimes((1.0,) * 999 + (1e6,))
    rng = random.Random(5)
    exact = [fit.wait(EXACT_WAIT_MAX_JOBS, rng) for _ in range(200)]
    assert min(exact) >= EXACT_WAIT_MAX_JOBS * 1.0  # a true sum of 50 run times of >= 1 s
    approx = [fit.wait(EXACT_WAIT_MAX_JOBS + 1, rng) for _ in range(200)]
    assert min(approx) == 0.0 and all(w >= 0.0 for w in approx)


def test_jobs_garbled_row_names_file_and_line(tmp_path: Path) -> None:
    lines = mixed_jobs()
    lines[2] = lines[2].replace(",3.0,", ",three,")
    path = jobs_file(tmp_path, lines)
    with pytest.raises(TraceError) as info:
        ServiceTimes.fit(path)
    assert info.value.path == path and info.value.line == 4
    assert str(info.value).startswith(f"{path}:4:") and "run_s" in str(info.value)


# ---- calibrations ----------------------------------------------------------------------------
def calibration_doc(cx_error: float | None, t1_us: float, updated: str) -> dict[str, object]:
    def param(name: str, value: float, unit: str = "") -> dict[str, object]:
        return {"date": updated, "name": name, "unit": unit, "value": value}

    def gate(name: str, kind: str, qubits: list[int], error: float) -> dict[str, object]:
        return {
            "qubits": qubits,
            "gate": kind,
            "name": name,
            "parameters": [param("gate_error", error), param("gate_length", 400, "ns")],
        }

    qubits = [
        [param("T1", t1, "us"), param("T2", 50.0, "us"), param("readout_error", 0.02)]
        for t1 in (t1_us - 100, t1_us, t1_us + 100)
    ]
    gates = [gate("sx0", "sx", [0], 0.0004), gate("rz0", "rz", [0], 0.0)]
    if cx_error is not None:
        gates.append(gate("cx0_1", "cx", [0, 1], cx_error))
    return {
        "backend_name": "ibm_perth",
        "backend_version": "1.1.38",
        "last_update_date": updated,
        "qubits": qubits,
        "gates": gates,
        "general": [],
    }


def calibration_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ibm_perth"
    folder.mkdir()
    days = [  # written out of order: the days sort by date
        ("2023-01-03", None, 300.0),  # no two-qubit gate that day
        ("2023-01-01", 0.01, 100.0),
        ("2023-01-02", 0.02, 200.0),
    ]
    for day, cx, t1 in days:
        doc = calibration_doc(cx, t1, f"{day}T08:00:00+01:00")
        (folder / f"{day}.json").write_text(json.dumps(doc, indent=1))
    return folder


def test_calibration_days_summarise_each_day_in_order(tmp_path: Path) -> None:
    cal = CalibrationDays.load(calibration_dir(tmp_path))
    assert cal.days == 3
    first = cal.summary(0)
    assert first.medianTwoQubitError == pytest.approx(0.01)
    assert first.medianT1Seconds == pytest.approx(100e-6)
    assert first.medianT2Seconds == pytest.approx(50e-6)
    assert first.medianReadoutError == pytest.approx(0.02)
    assert first.medianSingleQubitError == pytest.approx(0.0004)  # rz is virtual: left out
    assert first.updatedAt == "2023-01-01T07:00:00Z"
    assert cal.summary(1).medianTwoQubitError == pytest.approx(0.02)
    assert cal.summary(2).medianTwoQubitError is None
    assert cal.summary(2).medianT1Seconds == pytest.approx(300e-6)
    assert cal.calibration(1).day.isoformat() == "2023-01-02"


def test_calibration_days_cycle_and_change_at_day_boundaries(tmp_path: Path) -> None:
    cal = CalibrationDays.load(calibration_dir(tmp_path))
    assert cal.summary(3) == cal.summary(0) and cal.summary(7) == cal.summary(1)
    day = 86_400.0
    assert cal.summary_at(0.0) == cal.summary(0)
    assert cal.summary_at(day - 0.001) == cal.summary(0)
    assert cal.summary_at(day) == cal.summary(1)
    assert cal.summary_at(3 * day + 5) == cal.summary(0)
    assert cal.summary_at(2 * day + 1, start_day=2) == cal.summary(1)  # day 4 -> 4 % 3
    assert cal.summary_at(-1.0, start_day=1) == cal.summary(0)
    with pytest.raises(ValueError):
        cal.summary_at(-1.0)
    with pytest.raises(ValueError):
        cal.summary(-1)


def test_calibration_bad_file_names_file_and_line(tmp_path: Path) -> None:
    folder = calibration_dir(tmp_path)
    bad = folder / "2023-01-02.json"
    bad.write_text('{\n "backend_name": "ibm_perth",\n "qubits": [\n')  # truncated
    with pytest.raises(TraceError) as info:
        CalibrationDays.load(folder)
    assert info.value.path == bad and info.value.line == 4
    assert str(info.value).startswith(f"{bad}:4:")


# ---- GPU background --------------------------------------------------------------------------
PODS_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
    "deletion_time,scheduled_time"
)
# (name, num_gpu, gpu_milli, phase, deletion, scheduled); 4 GPUs in all.
PODS = [
    ("whole", 1, 1000, "Running", "500", "100"),  # 1 GPU over [100, 500)
    ("half", 1, 500, "Running", "300", "200"),  # 0.5 GPU over [200, 300)
    ("pair", 2, 1000, "Running", "400", "300"),  # 2 GPUs over [300, 400)
    ("waiting", 4, 1000, "Pending", "450", ""),  # never scheduled: holds nothing
    ("cpu", 0, 0, "Succeeded", "600", "150"),  # no GPU; the last event: the end is 600
    ("quarter", 1, 250, "Running", "", "450"),  # 0.25 GPU from 450 to the end
]
NODES_LINES = ["sn,cpu_milli,memory_mib,gpu,model", "n-a,64000,262144,2,P100", "n-b,1,1,2,T4"]
# Replay time (trace time - 100) -> busy fraction of 4 GPUs.
EXPECTED_CHANGES = [
    (0.0, 0.25),
    (100.0, 0.375),
    (200.0, 0.75),  # half ends, pair starts
    (300.0, 0.25),
    (350.0, 0.3125),
    (400.0, 0.0625),
]


def pod_line(name: str, num_gpu: int, milli: int, phase: str, deleted: str, sched: str) -> str:
    created = sched or "0"
    return f"{name},1000,1024,{num_gpu},{milli},,LS,{phase},{created},{deleted},{sched}"


def gpu_files(tmp_path: Path, pods: list[str] | None = None) -> tuple[Path, Path]:
    lines = [pod_line(*p) for p in PODS] if pods is None else pods
    return (
        write(tmp_path / "pods.csv", [PODS_HEADER, *lines]),
        write(tmp_path / "nodes.csv", NODES_LINES),
    )


def test_gpu_background_counts_whole_and_fractional_gpus(tmp_path: Path) -> None:
    background = GpuBackground.load(*gpu_files(tmp_path))
    assert background.total_gpus == 4 and background.period_seconds == 500.0
    assert background.changes() == EXPECTED_CHANGES
    assert background.peak_fraction == 0.75
    lookups = {t: background.busy_fraction(t) for t in (0, 99.9, 100, 250, 300, 499)}
    assert lookups == {0: 0.25, 99.9: 0.25, 100: 0.375, 250: 0.75, 300: 0.25, 499: 0.0625}
    assert background.busy_gpus(200, 16) == 12.0
    with pytest.raises(ValueError):
        background.busy_gpus(200, -1)


def test_gpu_background_wraps_around_and_scales_time(tmp_path: Path) -> None:
    background = GpuBackground.load(*gpu_files(tmp_path))
    assert background.busy_fraction(500) == 0.25  # the end is the next lap's start
    assert background.busy_fraction(600) == 0.375
    assert background.busy_fraction(5 * 500 + 200) == 0.75
    assert background.busy_fraction(-1) == 0.0625

    slow = GpuBackground.load(*gpu_files(tmp_path), time_scale=2.0)
    assert slow.period_seconds == 1000.0
    assert slow.changes() == [(2 * t, f) for t, f in EXPECTED_CHANGES]
    assert slow.busy_fraction(199) == 0.25 and slow.busy_fraction(200) == 0.375
    with pytest.raises(ValueError):
        GpuBackground.load(*gpu_files(tmp_path), time_scale=0.0)


def test_gpu_background_is_clipped_at_a_full_cluster(tmp_path: Path) -> None:
    pods = [
        pod_line("big", 8, 1000, "Running", "100", "0"),
        pod_line("x", 0, 0, "Failed", "200", "0"),
    ]
    background = GpuBackground.load(*gpu_files(tmp_path, pods))
    assert background.changes() == [(0.0, 1.0), (100.0, 0.0)]


def test_gpu_pods_garbled_or_inconsistent_name_the_file(tmp_path: Path) -> None:
    lines = [pod_line(*p) for p in PODS]
    lines[1] = lines[1].replace(",500,", ",5x0,", 1)
    pods, nodes = gpu_files(tmp_path, lines)
    with pytest.raises(TraceError) as info:
        GpuBackground.load(pods, nodes)
    assert info.value.path == pods and info.value.line == 3
    assert str(info.value).startswith(f"{pods}:3:") and "gpu_milli" in str(info.value)

    backwards = [pod_line("late", 1, 1000, "Running", "10", "20")]
    pods, nodes = gpu_files(tmp_path, backwards)
    with pytest.raises(TraceError, match=r"pods\.csv: pod late is deleted before scheduled"):
        GpuBackground.load(pods, nodes)
    pods, nodes = gpu_files(tmp_path, [pod_line("waiting", 1, 1000, "Pending", "10", "")])
    with pytest.raises(TraceError, match="no pod was ever scheduled"):
        GpuBackground.load(pods, nodes)


# ---- the real traces (skipped where ../shared/data is absent) --------------------------------
REAL = default_traces_dir()
needs_real = pytest.mark.skipif(not (REAL / "README.md").exists(), reason=f"no traces at {REAL}")


@needs_real
def test_real_queue_replay_is_a_week_of_twelve_backends() -> None:
    replay = QueueReplay.load()
    assert len(replay.backends) == 12
    assert 6 * 86_400 <= replay.duration_seconds <= 7 * 86_400
    for backend in replay.backends:
        changes = replay.changes(backend)
        times = [t for t, _, _ in changes]
        assert times[0] == 0.0 and times == sorted(times) and times[-1] < replay.duration_seconds
        assert len(changes) > 100  # a live queue moves
        assert all(n >= 0 for _, n, _ in changes)
        t, n, up = changes[len(changes) // 2]
        assert replay.queue_length(backend, t) == n and replay.operational(backend, t) is up


@needs_real
def test_real_service_times_are_plausible() -> None:
    fit = ServiceTimes.fit()
    assert 1.0 <= fit.mean <= 3600.0
    assert fit.quantile(0.1) <= fit.quantile(0.5) <= fit.quantile(0.9)
    assert fit.quantile(0.5) < fit.mean  # run times are right-skewed
    assert fit.per_backend and all(len(f.samples) >= 30 for f in fit.per_backend.values())
    rng = random.Random(2)
    waits = [fit.wait(10, rng) for _ in range(2000)]
    assert statistics.fmean(waits) == pytest.approx(10 * fit.mean, rel=0.1)


@needs_real
def test_real_calibration_days_are_plausible() -> None:
    cal = CalibrationDays.load()
    assert 100 <= cal.days <= 130  # 2023-01-01 .. 2023-04-30
    summaries = [cal.summary(d) for d in range(cal.days)]
    two_q = [s.medianTwoQubitError for s in summaries]
    # Broken couplers report an error of 1.0, so a day's median may pass 0.5; typical days
    # are around 1%.
    assert all(e is not None and 0 < e <= 1 for e in two_q)
    assert statistics.median(e for e in two_q if e is not None) < 0.05
    assert all(s.medianT1Seconds is not None and 1e-6 < s.medianT1Seconds < 1e-3 for s in summaries)
    assert len({s.updatedAt for s in summaries}) > cal.days // 2
    assert cal.summary_at(cal.days * 86_400.0) == summaries[0]


@needs_real
def test_real_gpu_background_is_a_varying_fraction() -> None:
    background = GpuBackground.load()
    fractions = [f for _, f in background.changes()]
    assert all(0.0 <= f <= 1.0 for f in fractions) and len(set(fractions)) > 10
    assert background.total_gpus > 0 and background.period_seconds > 86_400
    t = background.period_seconds / 3
    assert background.busy_fraction(t + background.period_seconds) == background.busy_fraction(t)
