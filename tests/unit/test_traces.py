"""The trace readers: typed rows from small slices written here, a file:line error for every
bad or truncated variant, and (when ../shared/data is present) each real file's row count."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qorch import traces
from qorch.traces import TraceError

JOBS_HEADER = (
    "backend,created_at,status,queue_s,run_s,circuits,shots,depth,width,memory_slots,"
    "backend_qubits,gate_ops,pulse"
)
JOBS_LINES = [
    "ibmq_rome,2020-09-02T10:00:00Z,DONE,31.5,4.2,1,8192,12,5,5,5,20,0",
    "ibmq_paris,2020-09-02T10:05:30Z,CANCELLED,0.0,0.0,0,0,0,0,0,0,0,1",
    "ibmq_rome,2020-09-02T11:00:00Z,ERROR,2.0,0.0,2,1024,3,2,2,5,7,0",
]
QUEUE_LENGTH_LINES = [
    "backend,minute_utc,pending_jobs,operational,status_msg",
    "ibm_cairo,2023-11-16T13:59Z,15,1,active",
    "ibm_perth,2023-11-16T13:59Z,3,1,internal",
    "ibm_cairo,2023-11-16T14:00Z,16,1,active",
]
RUNTIME_LINES = [
    "two_qubit_gates,depth_sum,qubits_sum,shots,circuits,time_taken_s",
    "2900,4200,84,4000,20,24.7",
    "12,30,5,1000,1,2.5",
]
PODS_LINES = [
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
    "deletion_time,scheduled_time",
    "pod-a,12000,16384,1,1000,,LS,Running,0,100,0",
    "pod-b,6000,12288,1,460,V100M16,BE,Pending,50,80,",
]
NODES_LINES = [
    "sn,cpu_milli,memory_mib,gpu,model",
    "node-a,64000,262144,2,P100",
    "node-b,96000,393216,8,G2",
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def jobs_file(tmp_path: Path, lines: list[str] | None = None) -> Path:
    return write(tmp_path / "jobs.csv", [JOBS_HEADER, *(JOBS_LINES if lines is None else lines)])


def calibration_doc() -> dict[str, object]:
    def qubit(t1: float) -> list[dict[str, object]]:
        return [
            {"date": "2023-01-01T08:00:00+01:00", "name": "T1", "unit": "us", "value": t1},
            {"date": "2023-01-01T08:00:00+01:00", "name": "T2", "unit": "us", "value": 90.0},
            {"date": "2023-01-01T08:00:00+01:00", "name": "frequency", "unit": "GHz", "value": 5},
            {
                "date": "2023-01-01T08:00:00+01:00",
                "name": "readout_error",
                "unit": "",
                "value": 0.02,
            },
            {
                "date": "2023-01-01T08:00:00+01:00",
                "name": "readout_length",
                "unit": "us",
                "value": 0.7,
            },
        ]

    def gate(name: str, kind: str, qubits: list[int], error: float) -> dict[str, object]:
        return {
            "qubits": qubits,
            "gate": kind,
            "name": name,
            "parameters": [
                {
                    "date": "2023-01-01T08:00:00+01:00",
                    "name": "gate_error",
                    "unit": "",
                    "value": error,
                },
                {
                    "date": "2023-01-01T08:00:00+01:00",
                    "name": "gate_length",
                    "unit": "ns",
                    "value": 400,
                },
            ],
        }

    return {
        "backend_name": "ibm_perth",
        "backend_version": "1.1.38",
        "last_update_date": "2023-01-01T08:40:00+01:00",
        "qubits": [qubit(200.0), qubit(2.0), qubit(120.0)],
        "gates": [
            gate("sx0", "sx", [0], 0.0002),
            gate("sx1", "sx", [1], 0.0004),
            gate("rz0", "rz", [0], 0.0),
            gate("cx0_1", "cx", [0, 1], 0.01),
            gate("cx1_2", "cx", [1, 2], 0.03),
        ],
        "general": [],
    }


def write_calibration(folder: Path, day: str, doc: object, *, pretty: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{day}.json"
    path.write_text(json.dumps(doc, indent=1 if pretty else None))
    return path


# ---- IBM queue jobs ---------------------------------------------------------------------------
def test_queue_jobs_are_typed(tmp_path: Path) -> None:
    jobs = traces.read_queue_jobs(jobs_file(tmp_path))
    assert len(jobs) == 3
    first = jobs[0]
    assert first.backend == "ibmq_rome" and first.status == "DONE"
    assert first.created_at == datetime(2020, 9, 2, 10, 0, tzinfo=UTC)
    assert first.queue_s == 31.5 and first.shots == 8192 and first.pulse is False
    assert first.started_at == datetime(2020, 9, 2, 10, 0, 31, 500000, tzinfo=UTC)
    assert jobs[1].pulse is True and jobs[1].status == "CANCELLED"


def test_missing_column_names_file_and_header_line(tmp_path: Path) -> None:
    header = JOBS_HEADER.replace(",queue_s", "")
    bad = write(
        tmp_path / "jobs.csv",
        [header, *(",".join(x.split(",")[:3] + x.split(",")[4:]) for x in JOBS_LINES)],
    )
    with pytest.raises(TraceError, match=r"jobs\.csv:1: header lacks column\(s\) queue_s"):
        traces.read_queue_jobs(bad)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "ibmq_rome,2020-09-02T12:00:00Z,DONE,soon,4.2,1,8192,12,5,5,5,20,0",
            "column 'queue_s': 'soon' is not a number",
        ),
        (
            "ibmq_rome,2020-09-02T12:00:00Z,DONE,nan,4.2,1,8192,12,5,5,5,20,0",
            "column 'queue_s': 'nan' is not a finite",
        ),
        (
            "ibmq_rome,2020-09-02T12:00:00Z,DONE,-1,4.2,1,8192,12,5,5,5,20,0",
            "column 'queue_s': '-1' is below 0",
        ),
        (
            "ibmq_rome,2020-09-02T12:00:00Z,DONE,1,4.2,1.5,8192,12,5,5,5,20,0",
            "column 'circuits': '1.5' is not an integer",
        ),
        (
            "ibmq_rome,2020-09-02T12:00:00Z,LOST,1,4.2,1,8192,12,5,5,5,20,0",
            "column 'status': 'LOST' is not one of",
        ),
        (
            "ibmq_rome,yesterday,DONE,1,4.2,1,8192,12,5,5,5,20,0",
            "column 'created_at': 'yesterday' is not an ISO",
        ),
        ("ibmq_rome,2020-09-02T12:00:00,DONE,1,4.2,1,8192,12,5,5,5,20,0", "has no time zone"),
        (
            "ibmq_rome,2020-09-02T12:00:00Z,DONE,1,4.2,1,8192,12,5,5,5,20,2",
            "column 'pulse': '2' is not 0 or 1",
        ),
        (
            "ibmq_rome,2020-09-02T12:00:00Z,DONE,1,4.2,1,8192,12,5,5,5,20",
            "expected 13 fields, got 12",
        ),
        (
            "ibmq_rome,2020-09-02T12:00:00Z,DONE,1,4.2,1,8192,12,5,5,5,20,0,9",
            "expected 13 fields, got 14",
        ),
        (",2020-09-02T12:00:00Z,DONE,1,4.2,1,8192,12,5,5,5,20,0", "column 'backend': empty value"),
    ],
)
def test_bad_job_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = jobs_file(tmp_path, [JOBS_LINES[0], JOBS_LINES[1], line, JOBS_LINES[2]])
    with pytest.raises(TraceError) as info:
        traces.read_queue_jobs(path)
    assert str(info.value).startswith(f"{path}:4: "), info.value
    assert message in str(info.value)
    assert info.value.path == path and info.value.line == 4


def test_truncated_csv_names_the_cut_line(tmp_path: Path) -> None:
    text = "\n".join([JOBS_HEADER, *JOBS_LINES])
    path = tmp_path / "jobs.csv"
    path.write_text(text[: len(text) - 12])  # cut inside the last line
    with pytest.raises(TraceError, match=r"jobs\.csv:4: expected 13 fields"):
        traces.read_queue_jobs(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "jobs.csv"
    empty.write_text("")
    with pytest.raises(TraceError, match=r"jobs\.csv:1: empty file"):
        traces.read_queue_jobs(empty)
    with pytest.raises(TraceError, match=r"nope\.csv: cannot open"):
        traces.read_queue_jobs(tmp_path / "nope.csv")


def test_unterminated_quote_is_an_error_not_a_skip(tmp_path: Path) -> None:
    path = jobs_file(tmp_path, [JOBS_LINES[0], '"ibmq_rome,2020-09-02T12:00:00Z,DONE,1'])
    with pytest.raises(TraceError, match=r"jobs\.csv:3"):
        traces.read_queue_jobs(path)


def test_default_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ibm-queue-jobs").mkdir()
    jobs_file(tmp_path / "ibm-queue-jobs")
    monkeypatch.setenv(traces.ENV_TRACES_DIR, str(tmp_path))
    assert traces.default_traces_dir() == tmp_path
    assert len(traces.read_queue_jobs()) == 3
    monkeypatch.delenv(traces.ENV_TRACES_DIR)
    assert traces.default_traces_dir().parts[-2:] == ("shared", "data")


# ---- queue length (gzip) ---------------------------------------------------------------------
def gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_queue_lengths_from_gzip(tmp_path: Path) -> None:
    samples = traces.read_queue_lengths(gz(tmp_path / "pending_jobs.csv.gz", QUEUE_LENGTH_LINES))
    assert [s.pending_jobs for s in samples] == [15, 3, 16]
    assert samples[0].minute == datetime(2023, 11, 16, 13, 59, tzinfo=UTC)
    assert samples[1].status_msg == "internal" and samples[1].operational


def test_truncated_gzip_names_file_and_line(tmp_path: Path) -> None:
    lines = [QUEUE_LENGTH_LINES[0]] + [
        f"ibm_cairo,2023-11-16T{h:02d}:{m:02d}Z,{(h * m) % 50},1,active"
        for h in range(24)
        for m in range(60)
    ]
    path = gz(tmp_path / "pending_jobs.csv.gz", lines)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        TraceError, match=r"pending_jobs\.csv\.gz:\d+: truncated or corrupt gzip"
    ) as info:
        traces.read_queue_lengths(path)
    assert info.value.line is not None and info.value.line > 1


def test_corrupt_gzip_header(tmp_path: Path) -> None:
    path = tmp_path / "pending_jobs.csv.gz"
    path.write_bytes(b"this is not gzip at all\n")
    with pytest.raises(TraceError, match=r"pending_jobs\.csv\.gz:1: truncated or corrupt gzip"):
        traces.read_queue_lengths(path)


def test_bad_queue_length_value(tmp_path: Path) -> None:
    lines = [*QUEUE_LENGTH_LINES, "ibm_cairo,2023-11-16T14:01Z,many,1,active"]
    with pytest.raises(TraceError, match=r"pending_jobs\.csv\.gz:5: column 'pending_jobs'"):
        traces.read_queue_lengths(gz(tmp_path / "pending_jobs.csv.gz", lines))


# ---- run times ------------------------------------------------------------------------------
def test_runtime_jobs(tmp_path: Path) -> None:
    jobs = traces.read_runtime_jobs(write(tmp_path / "runtime.csv", RUNTIME_LINES))
    assert jobs[0] == traces.RuntimeJob(2900, 4200, 84, 4000, 20, 24.7)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("12,30,5,1000,1,0", "column 'time_taken_s': 0.0 is not a positive"),
        ("12,30,5,1000,0,2.5", "column 'circuits': '0' is below 1"),
        ("12,30,5,1000,1,abc", "column 'time_taken_s': 'abc' is not a number"),
        ("12,30,5,1000,1", "expected 6 fields, got 5"),
    ],
)
def test_bad_runtime_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "runtime.csv", [*RUNTIME_LINES, line])
    with pytest.raises(TraceError, match=r"runtime\.csv:4: ") as info:
        traces.read_runtime_jobs(path)
    assert message in str(info.value)


# ---- GPU cluster ------------------------------------------------------------------------------
def test_gpu_pods_and_nodes(tmp_path: Path) -> None:
    pods = traces.read_gpu_pods(write(tmp_path / "pods.csv", PODS_LINES))
    assert pods[0].gpu_spec == "" and pods[0].scheduled_time == 0
    assert pods[1].scheduled_time is None and pods[1].gpu_spec == "V100M16"
    nodes = traces.read_gpu_nodes(write(tmp_path / "nodes.csv", NODES_LINES))
    assert [n.gpu for n in nodes] == [2, 8] and nodes[1].model == "G2"


def test_bad_gpu_lines(tmp_path: Path) -> None:
    pods = write(tmp_path / "pods.csv", [*PODS_LINES, "pod-c,1,1,1,1,,LS,Running,x,1,1"])
    with pytest.raises(TraceError, match=r"pods\.csv:4: column 'creation_time'"):
        traces.read_gpu_pods(pods)
    nodes = write(tmp_path / "nodes.csv", [NODES_LINES[0].replace(",model", ""), "a,1,1,1"])
    with pytest.raises(TraceError, match=r"nodes\.csv:1: header lacks column\(s\) model"):
        traces.read_gpu_nodes(nodes)


# ---- calibrations ---------------------------------------------------------------------------
def test_calibration_medians_and_units(tmp_path: Path) -> None:
    write_calibration(tmp_path, "2023-01-02", calibration_doc())
    write_calibration(tmp_path, "2023-01-01", calibration_doc())
    days = traces.read_calibrations(tmp_path)
    assert [c.day.isoformat() for c in days] == ["2023-01-01", "2023-01-02"]
    cal = days[0]
    assert cal.backend_name == "ibm_perth" and len(cal.qubits) == 3 and len(cal.gates) == 5
    assert cal.median_t1_us == 120.0 and cal.median_t2_us == 90.0
    assert cal.median_readout_error == pytest.approx(0.02)
    assert cal.median_two_qubit_error == pytest.approx(0.02)
    assert cal.median_single_qubit_error == pytest.approx(0.0003)  # rz (virtual) left out
    assert cal.qubits[0].readout_length_ns == pytest.approx(700.0)  # us -> ns
    assert cal.gates[3].qubits == (0, 1) and cal.gates[3].length_ns == 400.0
    assert cal.properties["backend_name"] == "ibm_perth"


def test_truncated_calibration_json_names_line_and_column(tmp_path: Path) -> None:
    path = write_calibration(tmp_path, "2023-01-01", calibration_doc())
    text = path.read_text()
    path.write_text(text[:500])
    with pytest.raises(TraceError, match=r"2023-01-01\.json:1:\d+: invalid JSON"):
        traces.read_calibrations(tmp_path)


def test_calibration_missing_parameter_points_at_the_qubit(tmp_path: Path) -> None:
    doc = calibration_doc()
    qubits = doc["qubits"]
    assert isinstance(qubits, list)
    qubits[1] = [p for p in qubits[1] if p["name"] != "T1"]
    path = write_calibration(tmp_path, "2023-01-01", doc, pretty=True)
    with pytest.raises(TraceError) as info:
        traces.read_calibration(path)
    message = str(info.value)
    assert "qubits[1]: no 'T1' parameter" in message
    # Pretty-printed: the line is the one where qubit 1's first parameter starts.
    line = info.value.line
    assert line is not None and line > 1
    assert '"name": "T2"' in "\n".join(path.read_text().splitlines()[line - 1 : line + 3])
    assert message.startswith(f"{path}:{line}:{info.value.column}: ")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["gates"][0]["parameters"][0].update(value="high"),
            "gates[0].parameters[0].value: 'high' is not a number",
        ),
        (
            lambda d: d["qubits"][0][0].update(unit="fortnights"),
            "unexpected unit 'fortnights' for T1",
        ),
        (lambda d: d.pop("gates"), "$: missing key 'gates'"),
        (lambda d: d["gates"][1].update(qubits=["q1"]), "gates[1].qubits"),
        (lambda d: d.update(last_update_date="soon"), "'soon' is not a timestamp"),
    ],
)
def test_bad_calibration_values(tmp_path: Path, mutate: object, message: str) -> None:
    doc = calibration_doc()
    assert callable(mutate)
    mutate(doc)
    path = write_calibration(tmp_path, "2023-01-01", doc)
    with pytest.raises(TraceError, match=r"2023-01-01\.json:1:\d+: ") as info:
        traces.read_calibration(path)
    assert message in str(info.value)


def test_calibration_file_name_must_be_a_day(tmp_path: Path) -> None:
    path = write_calibration(tmp_path, "latest", calibration_doc())
    with pytest.raises(TraceError, match=r"latest\.json: file name is not YYYY-MM-DD"):
        traces.read_calibration(path)


# ---- the real files (skipped where ../shared/data is absent) --------------------------------
REAL = traces.default_traces_dir()
needs_real = pytest.mark.skipif(not (REAL / "README.md").exists(), reason=f"no traces at {REAL}")


@needs_real
def test_real_traces_read_whole() -> None:
    jobs = traces.read_queue_jobs()
    assert len(jobs) == 4091
    assert sum(j.status == "DONE" for j in jobs) == 3680
    assert len({j.backend for j in jobs}) == 23
    assert len(traces.read_queue_lengths()) == 109486
    assert len(traces.read_runtime_jobs()) == 5896
    assert len(traces.read_gpu_pods()) == 8152
    assert len(traces.read_gpu_nodes()) == 1213
    days = traces.read_calibrations()
    assert len(days) == 120 and all(len(c.qubits) == 7 for c in days)
    assert min(q.t1_us for c in days for q in c.qubits) < 5  # the drift the README describes
