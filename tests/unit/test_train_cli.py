"""`qorch train`: arguments, the missing extra, the output directory, Prometheus errors; and
the pieces of the history reader that need no server (durations, bucket quantiles, counter
increases, the queue_wait adapter on synthetic data)."""

from __future__ import annotations

import http.server
import json
import math
import re
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from qorch import cli
from qorch.predictor import training
from qorch.predictor.training import prometheus_history as ph
from qorch.predictor.training import queue_wait
from qorch.predictor.training.common import row

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fake_evaluate(traces_dir: Any, quick: bool, export_to: Path | None) -> list[dict[str, Any]]:
    """Stands in for a model's evaluate: writes one model file and returns one figure."""
    if export_to is not None:
        (Path(export_to) / "fake_model.onnx").write_bytes(b"onnx")
    return [
        row(
            "fake_model",
            "median relative error",
            "a split",
            0.0425,
            method="a method",
            baselines={"a baseline": 0.5},
            goal="<= 0.08",
            note=f"quick={quick} traces={Path(traces_dir).name}",
        )
    ]


def failing_evaluate(traces_dir: Any, quick: bool, export_to: Path | None) -> list[Any]:
    raise RuntimeError("broken on purpose")


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    path = tmp_path / "traces"
    path.mkdir()
    return path


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "EVALUATIONS", (fake_evaluate,))


# ---- arguments ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "7x"], "'7x' is not a duration"),
        (["--since", "0d"], "'0d' is not a positive duration"),
        (["--step", "five"], "'five' is not a duration"),
        (["--output"], "expected one argument"),
        (["--epochs", "3"], "unrecognized arguments: --epochs"),
    ],
)
def test_argument_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_durations_parse_like_prometheus() -> None:
    assert ph.parse_duration("7d") == timedelta(days=7)
    assert ph.parse_duration("1h30m") == timedelta(minutes=90)
    assert ph.parse_duration("90s") == timedelta(seconds=90)
    assert ph.parse_duration("1w") == timedelta(days=7)
    for bad in ("", "7", "d", "7 d", "-1h", "1.5h", "7days"):
        with pytest.raises(ValueError, match="not a duration"):
            ph.parse_duration(bad)


def test_a_step_longer_than_the_window_is_refused() -> None:
    reader = ph.PrometheusHistoryReader(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="shorter than --step"):
        reader.read(timedelta(minutes=5), timedelta(hours=1))
    with pytest.raises(ValueError, match="choose a larger --step"):
        reader.read(timedelta(days=365), timedelta(seconds=1))
    with pytest.raises(ValueError, match="whole number of seconds"):
        reader.read(timedelta(hours=1), timedelta(milliseconds=1500))


# ---- environment ---------------------------------------------------------------------------
def test_missing_train_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    traces: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "onnxmltools", None)
    out = tmp_path / "out"
    code = cli.main(["train", "--traces-dir", str(traces), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing: lightgbm, onnxmltools" in err and "pip install 'qorch[train]'" in err
    assert not out.exists()


def test_missing_traces_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--traces-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"no traces directory at {tmp_path / 'nowhere'}" in err and "QORCH_TRACES_DIR" in err


def test_other_commands_never_import_the_training_code() -> None:
    code = (
        "import sys, io, contextlib; from qorch import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()): cli.main(['crds'])\n"
        "bad = [m for m in sys.modules if m.startswith('qorch.predictor.training')"
        " or m.split('.')[0] in ('lightgbm', 'sklearn', 'onnxmltools', 'skl2onnx')]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


# ---- output directory ----------------------------------------------------------------------
@pytest.mark.usefixtures("fake_models")
def test_default_output_is_a_new_directory_with_models_and_results(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    traces: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--traces-dir", str(traces), "--quick"]) == 0
    printed = capsys.readouterr().out
    (made,) = tmp_path.glob("qorch-models-*")
    assert sorted(p.name for p in made.iterdir()) == ["fake_model.onnx", "results.json"]
    assert "no --prometheus-url: training from the traces alone" in printed
    assert "fake_model  median relative error  0.0425  <= 0.08" in printed
    assert "baseline a baseline: 0.5000" in printed and "quick=True traces=traces" in printed
    results = json.loads((made / "results.json").read_text())
    assert results["quick"] is True and results["prometheus"] is None
    assert [r["value"] for r in results["rows"]] == [0.0425]
    assert not (REPO / "models" / "fake_model.onnx").exists()


@pytest.mark.usefixtures("fake_models")
def test_existing_models_are_not_overwritten_unless_asked(
    tmp_path: Path, traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models"
    out.mkdir()
    (out / "queue_wait_p50.onnx").write_bytes(b"keep me")
    args = ["train", "--traces-dir", str(traces), "--output-dir", str(out)]
    assert cli.main(args) == 2
    assert "already holds models (queue_wait_p50.onnx); pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["queue_wait_p50.onnx"]
    assert cli.main([*args, "--overwrite"]) == 0
    assert (out / "fake_model.onnx").read_bytes() == b"onnx"


@pytest.mark.usefixtures("fake_models")
def test_an_empty_existing_directory_is_used_and_a_file_is_refused(
    tmp_path: Path, traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--traces-dir", str(traces), "--output-dir", str(empty)]) == 0
    assert (empty / "fake_model.onnx").exists()
    file = tmp_path / "file"
    file.write_text("")
    assert cli.main(["train", "--traces-dir", str(traces), "--output-dir", str(file)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_a_failing_model_fails_the_command_but_not_the_others(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    traces: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(training, "EVALUATIONS", (failing_evaluate, fake_evaluate))
    out = tmp_path / "out"
    assert cli.main(["train", "--traces-dir", str(traces), "--output-dir", str(out)]) == 1
    printed = capsys.readouterr()
    assert "FAILED" in printed.out and "RuntimeError: broken on purpose" in printed.out
    assert re.search(r"\nfake_model +median relative error +0\.0425", printed.out)
    assert "failed: test_train_cli.failing_evaluate" in printed.err.replace("tests.unit.", "")
    assert (out / "fake_model.onnx").exists()


@pytest.mark.usefixtures("fake_models")
def test_unreachable_prometheus_stops_before_training(
    tmp_path: Path, traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    args = ["train", "--traces-dir", str(traces), "--output-dir", str(out)]
    assert cli.main([*args, "--prometheus-url", url, "--since", "1h", "--step", "1m"]) == 1
    err = capsys.readouterr().err
    assert f"Prometheus at {url} is unreachable" in err
    assert "without --prometheus-url, qorch train uses the traces alone" in err
    assert not out.exists()


class _NotPrometheus(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>a login page</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_something_else_at_the_url_is_a_clear_error() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotPrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ph.PrometheusHistoryError, match="not the Prometheus API"):
            ph.read_history(url, timedelta(hours=1), timedelta(minutes=1))
    finally:
        server.shutdown()
        thread.join(5)


# ---- histogram arithmetic ------------------------------------------------------------------
INF = math.inf


def test_bucket_quantile_is_prometheus_histogram_quantile() -> None:
    buckets = ((10.0, 0.0), (30.0, 2.0), (60.0, 4.0), (INF, 4.0))
    assert ph.bucket_quantile(0.5, buckets) == pytest.approx(30)
    assert ph.bucket_quantile(0.9, buckets) == pytest.approx(54)
    assert ph.bucket_quantile(0.25, ((1.0, 4.0), (INF, 4.0))) == pytest.approx(0.25)  # from 0
    assert ph.bucket_quantile(0.9, ((1.0, 1.0), (5.0, 1.0), (INF, 3.0))) == 5.0  # in +Inf
    assert math.isnan(ph.bucket_quantile(0.5, ((1.0, 0.0), (INF, 0.0))))  # nothing observed
    assert math.isnan(ph.bucket_quantile(0.5, ((1.0, 3.0), (5.0, 3.0))))  # no +Inf bucket


def test_counter_increments_baseline_reset_and_gap() -> None:
    nan = math.nan
    assert list(ph.increments([nan, 2, 2, 5, 1, nan, 4, 10])) == [0, 0, 3, 1, 0, 3, 6]
    assert list(ph.increments([7])) == []
    assert list(ph.increments([nan, nan])) == [0]


# ---- the queue_wait adapter ----------------------------------------------------------------
def synthetic_traces(n: int = 300) -> queue_wait.QueueData:
    rng = np.random.default_rng(0)
    backend = rng.choice(np.array(["ibmq_a", "ibmq_b", "ibmq_c"]), size=n)
    start = datetime(2020, 6, 1, tzinfo=UTC).timestamp()
    submitted = np.sort(start + rng.uniform(0, 150 * 86400, size=n))
    wait = 300 * rng.lognormal(0.0, 1.0, size=n)
    from qorch.predictor.training.history import recent_wait_all

    hist = recent_wait_all(backend, submitted, wait)
    x = np.column_stack(
        [
            rng.integers(1, 6, n),
            rng.integers(1, 50, n),
            rng.choice([1024, 8192], n),
            rng.integers(1, 10, n),
            np.full(n, 27),
            hist,
            np.zeros(n),
            np.zeros(n),
        ]
    ).astype(float)
    return queue_wait.QueueData(x, wait, submitted, backend)


def synthetic_history(intervals: int = 40) -> ph.PrometheusHistory:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    step = timedelta(minutes=5)
    buckets = ((10.0, 0.0), (30.0, 1.0), (60.0, 3.0), (INF, 3.0))
    obs = tuple(
        ph.QueueWaitObservation(
            backend="cluster_qpu",
            start=start + k * step,
            end=start + (k + 1) * step,
            jobs=3.0,
            mean_wait_s=40.0,
            p50_wait_s=45.0,
            p90_wait_s=57.0,
            buckets=buckets,
            submitted_at=start + k * step,
            recent_wait_p50_s=40.0 if k else 0.0,
            recent_wait_p90_s=55.0 if k else 0.0,
            recent_wait_count=float(min(3 * k, 20)),
            backend_qubits=133.0,
            pending_jobs=2.0,
            queue_length=0.0,
        )
        for k in range(intervals)
    )
    return ph.PrometheusHistory(
        url="http://prometheus.test:9090",
        start=start,
        end=start + intervals * step,
        step=step,
        selector="",
        queue_waits=obs,
        executions=(),
        calibrations=(),
        gauges={},
    )


def test_evaluations_swap_in_the_adapter_only_with_queue_history() -> None:
    assert ph.evaluations(None) == tuple(training.EVALUATIONS)
    empty = synthetic_history(0)
    assert empty.empty and ph.evaluations(empty) == tuple(training.EVALUATIONS)
    swapped = ph.evaluations(synthetic_history())
    assert len(swapped) == len(training.EVALUATIONS)
    changed = [a for a, b in zip(swapped, training.EVALUATIONS, strict=True) if a is not b]
    assert len(changed) == 1 and queue_wait.evaluate not in swapped


def test_queue_wait_adapter_trains_on_the_cluster_rows_and_cites_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    traces = synthetic_traces()
    monkeypatch.setattr(queue_wait, "load", lambda traces_dir=None: traces)
    trace_rows = [
        row("queue_wait", "interval score, log s (lower is better)", "s", 3.5, method="m")
    ]
    exported: list[Any] = []
    monkeypatch.setattr(
        queue_wait,
        "evaluate",
        lambda traces_dir=None, quick=False, export_to=None: (
            exported.append(export_to) or [dict(r) for r in trace_rows]
        ),
    )
    trained: list[int] = []
    real_train = queue_wait.train

    def spy(data: queue_wait.QueueData, idx: Any, **kw: Any) -> Any:
        trained.append(len(idx))
        return real_train(data, idx, **kw)

    monkeypatch.setattr(queue_wait, "train", spy)
    history = synthetic_history(40)  # 40 intervals x 3 jobs = 120 rows, 30 held out
    rows = ph.queue_wait_with_history(history)(None, True, tmp_path)

    assert exported == [None]  # the trace figures are computed; the export is the adapter's
    n_before = int(np.sum(traces.submitted < queue_wait.CUTOFF.timestamp()))
    assert trained == [n_before + 90, n_before, n_before + 120]
    cluster = [r for r in rows if r["split"].startswith("cluster history")]
    assert [r["metric"] for r in cluster] == [
        "P10-P90 coverage",
        "interval score, log s (lower is better)",
    ]
    assert set(cluster[0]["baselines"]) == {"trained on the traces alone"}
    assert 0.0 <= cluster[0]["value"] <= 1.0 and "30 held-out rows" in cluster[0]["note"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "queue_wait_p90.onnx")).metadata_props}
    assert "PMA history from Prometheus at http://prometheus.test:9090" in meta["qorch.sources"]
    assert "120 rows of the cluster's history" in meta["qorch.split"]
    assert float(meta["qorch.heldout_error"]) == 3.5  # the trace figure, as without history


def test_queue_wait_adapter_without_enough_rows_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(queue_wait, "load", lambda traces_dir=None: synthetic_traces())
    monkeypatch.setattr(queue_wait, "evaluate", lambda *a, **k: [])
    rows = ph.queue_wait_with_history(synthetic_history(4))(None, True, tmp_path)
    (info,) = rows
    assert info["value"] == 12 and "no held-out figure on the cluster" in info["note"]
    assert (tmp_path / "queue_wait_p50.onnx").exists()


def test_queue_wait_rows_need_every_fill_value() -> None:
    with pytest.raises(ValueError, match="fill values missing"):
        synthetic_history(2).queue_wait_data({"num_qubits": 1.0})
