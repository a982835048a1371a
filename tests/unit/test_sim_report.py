"""The digital twin's report: the table over several replays (one row per policy, mean
completion time and fidelity against a baseline, NaN as a dash), human durations, and the
PNGs (timelines capped to the busiest lanes, cost, queues, completion-time CDF)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from qorch.sim import report
from qorch.sim.records import Span, SpanEnd, TwinResult, WorkflowOutcome
from qorch.sim.report import (
    format_duration,
    render_table,
    summary_rows,
    timeline_lanes,
    write_plots,
    write_timeline,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DASH = "\u2013"
PNG = b"\x89PNG\r\n\x1a\n"
HEADERS = (
    "workflows",
    "mean JCT",
    "p95 JCT",
    "vs ",  # "vs <baseline>"
    "fidelity",
    "Δ fidelity",
    "USD",
    "QPU util",
    "GPU util",
    "moves",
    "pass p50",
    "pass p99",
    "passes",
)


def wf(
    key: str,
    completion: float | None,
    fidelity: float | None = 0.9,
    usd: float = 1.0,
    moves: int = 0,
    failed: bool = False,
) -> WorkflowOutcome:
    arrived = 1000.0
    finished = None if completion is None else arrived + completion
    return WorkflowOutcome(key, "sampling", arrived, finished, fidelity, usd, moves, failed)


def span(
    resource: str,
    start: float,
    end: float,
    running_from: float | None = None,
    outcome: SpanEnd = SpanEnd.DONE,
    kind: str = "backend",
) -> Span:
    return Span("w", "s", resource, kind, start, end, running_from, outcome)


def results() -> list[TwinResult]:
    """fifo: mean JCT 100 s, fidelity 0.9; qorch: 40 s (-60%), 0.891 (-1%); stuck: nothing."""
    fifo = TwinResult(
        "fifo",
        horizon=7200.0,
        workflows=[wf("a", 50.0, usd=5.0), wf("b", 150.0, usd=7.36, moves=1)],
        spans=[
            span("ibm_kyiv", 0.0, 3600.0, running_from=1800.0),
            span("cpu", 3600.0, 5400.0, running_from=3700.0, kind="pool"),
        ],
        queue_samples={"ibm_kyiv": [(0.0, 3), (1800.0, 40), (3600.0, 0)], "ibm_brisbane": []},
        cost_points=[(0.0, 0.0), (1800.0, 5.0), (3600.0, 12.345)],
        decision_seconds=[0.005, 0.005, 1.6],
        qpu_busy_seconds=1800.0,
        qpu_capacity_seconds=3600.0,
        gpu_busy_seconds=0.0,
        gpu_capacity_seconds=0.0,
    )
    qorch = TwinResult(
        "qorch",
        horizon=7200.0,
        workflows=[
            wf("a", 30.0, fidelity=0.882, moves=2),
            wf("b", 50.0, fidelity=0.9),
            wf("c", None, fidelity=None, failed=True),
        ],
        spans=[span("ibm_kyiv", 0.0, 900.0, outcome=SpanEnd.MOVED)],
        cost_points=[(0.0, 0.0), (900.0, 3.0)],
        decision_seconds=[0.002],
        qpu_busy_seconds=900.0,
        qpu_capacity_seconds=3600.0,
        gpu_busy_seconds=10.0,
        gpu_capacity_seconds=40.0,
    )
    # Its only workflow failed: no completion time to average (an unfinished one would count
    # as finishing when the replay ended).
    stuck = TwinResult(
        "stuck", horizon=7200.0, workflows=[wf("a", None, fidelity=None, failed=True)]
    )
    return [fifo, qorch, stuck]


def table_cells(text: str) -> dict[str, dict[str, str]]:
    """Policy -> header -> cell, read off the rendered table: every column but the first is
    right-justified, so a column's cells end where its header ends. Policies have no spaces."""
    lines = text.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("policy "))
    ends: list[int] = []
    names: list[str] = []
    pos = 0
    for name in HEADERS:
        at = header.index(name, pos)
        if name == "vs ":  # the whole "vs <baseline>" header
            name = header[at:].split("  ")[0]
        pos = at + len(name)
        names.append(name)
        ends.append(pos)
    body = lines[lines.index(header) + 2 :]  # below the header's rule
    cells: dict[str, dict[str, str]] = {}
    for line in body:
        if not line.strip():
            continue
        policy = line.split()[0]
        row = {"policy": policy}
        start = line.index(policy) + len(policy)
        for name, end in zip(names, ends, strict=True):
            row[name] = line[start:end].strip()
            start = end
        cells[policy] = row
    return cells


def test_table_has_one_row_per_policy_in_the_order_given() -> None:
    text = render_table(results(), baseline="fifo", title="replay of day 1")
    assert "replay of day 1" in text
    cells = table_cells(text)
    assert list(cells) == ["fifo", "qorch", "stuck"]
    assert [row.policy for row in summary_rows(results(), "fifo")] == ["fifo", "qorch", "stuck"]


def test_table_shows_mean_jct_and_its_change_against_the_baseline() -> None:
    cells = table_cells(render_table(results(), baseline="fifo"))
    fifo, qorch = cells["fifo"], cells["qorch"]
    assert fifo["mean JCT"] == "1.7 min"  # (50 + 150) / 2 = 100 s
    assert qorch["mean JCT"] == "40 s"  # (30 + 50) / 2; the failed one never finished
    assert fifo["p95 JCT"] == "2.4 min"  # 50 + 0.95 * 100 = 145 s
    assert qorch["vs fifo"] == "-60.0%"  # 40 s against 100 s
    assert fifo["vs fifo"] == ""  # the baseline itself
    assert fifo["fidelity"] == "0.900"
    assert qorch["fidelity"] == "0.891"  # (0.882 + 0.9) / 2; None left out
    assert qorch["Δ fidelity"] == "-1.0%"
    assert fifo["Δ fidelity"] == ""


def test_the_baseline_need_not_be_the_first_row() -> None:
    cells = table_cells(render_table(results(), baseline="qorch"))
    assert cells["fifo"]["vs qorch"] == "+150.0%"  # 100 s against 40 s
    assert cells["qorch"]["vs qorch"] == ""


@pytest.mark.parametrize("baseline", [None, "nobody"])
def test_no_relative_columns_without_a_baseline_row(baseline: str | None) -> None:
    cells = table_cells(render_table(results(), baseline=baseline))
    for row in cells.values():
        vs = next(name for name in row if name.startswith("vs "))
        assert row[vs] == ""
        assert row["Δ fidelity"] == ""
    assert cells["qorch"]["mean JCT"] == "40 s"


def test_table_counts_money_utilisation_moves_and_decision_passes() -> None:
    cells = table_cells(render_table(results(), baseline="fifo"))
    fifo, qorch = cells["fifo"], cells["qorch"]
    assert fifo["workflows"] == "2/2"
    assert qorch["workflows"] == "2/3 (1 failed)"
    assert fifo["USD"] == "12.36"  # 5 + 7.36
    assert qorch["USD"] == "3.00"
    assert fifo["QPU util"] == "50.0%"
    assert qorch["QPU util"] == "25.0%"
    assert qorch["GPU util"] == "25.0%"
    assert (fifo["moves"], qorch["moves"]) == ("1", "2")
    assert fifo["pass p50"] == "5.0 ms"
    assert fifo["pass p99"] == "1.57 s"  # 0.005 + 0.98 * (1.6 - 0.005) = 1.5681
    assert qorch["pass p99"] == "2.0 ms"
    assert (fifo["passes"], qorch["passes"]) == ("3", "1")


def test_nan_shows_as_a_dash() -> None:
    stuck = table_cells(render_table(results(), baseline="fifo"))["stuck"]
    assert stuck["workflows"] == "0/1 (1 failed)"
    for name in ("mean JCT", "p95 JCT", "vs fifo", "fidelity", "Δ fidelity"):
        assert stuck[name] == DASH, name
    for name in ("QPU util", "GPU util", "pass p50", "pass p99"):  # no capacity, no passes
        assert stuck[name] == DASH, name
    assert stuck["passes"] == "0"
    assert "nan" not in render_table(results(), baseline="fifo").lower()


def test_table_never_cuts_a_cell_short() -> None:
    long = TwinResult("a-policy-name-long-enough-to-push-the-table-past-160-columns", 0.0)
    long.workflows = [wf("a", 60.0, usd=1_234_567.891)]
    text = render_table([*results(), long], baseline="fifo")
    assert "…" not in text
    assert "1,234,567.89" in text
    assert long.policy in text


def test_policy_names_print_as_they_are() -> None:
    text = render_table([TwinResult("[bold]x:smile:", 0.0)])
    assert "[bold]x:smile:" in text


def test_summary_rows_are_the_results_summaries() -> None:
    rs = results()
    assert summary_rows(rs) == [r.summary() for r in rs]
    assert summary_rows([]) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0 s"),
        (0.4, "0.4 s"),
        (9.94, "9.9 s"),
        (42.0, "42 s"),
        (59.4, "59 s"),
        (59.6, "1.0 min"),  # would round to "60 s"
        (186.0, "3.1 min"),
        (3596.0, "59.9 min"),
        (3598.0, "1.0 h"),  # would round to "60.0 min"
        (8640.0, "2.4 h"),
        (86_000.0, "23.9 h"),
        (86_300.0, "1.0 d"),  # would round to "24.0 h"
        (103_680.0, "1.2 d"),
        (-90.0, "-1.5 min"),
        (math.nan, DASH),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def data(values: object) -> list[float]:
    """A line's x or y data as floats."""
    return [float(v) for v in np.asarray(values, dtype=float)]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG), path
    assert len(data) > 2000, path  # a drawn figure, not an empty file


def test_write_plots_writes_each_png(tmp_path: Path) -> None:
    out = tmp_path / "made" / "here"
    paths = write_plots(results(), out, prefix="day1")
    assert [p.name for p in paths] == [
        "day1-timeline-fifo.png",
        "day1-timeline-qorch.png",
        "day1-timeline-stuck.png",
        "day1-cost.png",
        "day1-queues.png",
        "day1-jct.png",
    ]
    for path in paths:
        assert path.parent == out
        assert_png(path)


def test_write_plots_on_empty_inputs(tmp_path: Path) -> None:
    paths = write_plots([], tmp_path / "none")
    assert [p.name for p in paths] == ["twin-cost.png", "twin-queues.png", "twin-jct.png"]
    paths = write_plots([TwinResult("idle", 0.0)], tmp_path / "idle")
    assert [p.name for p in paths] == [
        "twin-timeline-idle.png",
        "twin-cost.png",
        "twin-queues.png",
        "twin-jct.png",
    ]
    for path in paths:
        assert_png(path)


def test_empty_plots_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = capture_figures(monkeypatch)
    write_plots([TwinResult("idle", 0.0, queue_samples={"ibm_kyiv": []})], tmp_path)
    assert len(figures) == 4
    for name, fig in figures.items():
        assert "no data" in [t.get_text() for t in fig.axes[0].texts], name


def test_plots_draw_one_line_per_policy_and_per_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = capture_figures(monkeypatch)
    write_plots(results(), tmp_path)
    cost = figures["twin-cost.png"].axes[0]
    assert [line.get_label() for line in cost.get_lines()] == ["fifo", "qorch"]  # stuck: none
    assert data(cost.get_lines()[0].get_ydata()) == [0.0, 5.0, 12.345]
    queues = figures["twin-queues.png"].axes[0]  # the first result's; ibm_brisbane: no samples
    assert [line.get_label() for line in queues.get_lines()] == ["ibm_kyiv"]
    assert data(queues.get_lines()[0].get_xdata()) == [0.0, 0.5, 1.0]  # hours
    jct = figures["twin-jct.png"].axes[0]
    assert jct.get_xscale() == "log"
    lines = jct.get_lines()
    assert [line.get_label() for line in lines] == ["fifo (2/2)", "qorch (2/3)"]
    assert data(lines[1].get_xdata()) == [30.0, 30.0, 50.0]
    assert data(lines[1].get_ydata()) == pytest.approx([0.0, 1 / 3, 2 / 3])  # of all three
    for name, fig in figures.items():
        has_data = name != "twin-timeline-stuck.png"  # stuck: no spans
        assert bool(fig.axes[0].texts) != has_data, name  # "no data" only where there is none


def test_policy_names_make_safe_distinct_file_names(tmp_path: Path) -> None:
    paths = write_plots([TwinResult("a/b c", 0.0), TwinResult("a/b c", 0.0)], tmp_path)
    assert [p.name for p in paths[:2]] == ["twin-timeline-a_b_c.png", "twin-timeline-a_b_c-2.png"]
    assert all(p.parent == tmp_path for p in paths)


def many_resources() -> list[Span]:
    """60 resources: resource i is busy (i + 1) * 10 s over i + 1 spans; even ones backends."""
    spans: list[Span] = []
    for i in range(60):
        kind = "backend" if i % 2 == 0 else "pool"
        for j in range(i + 1):
            spans.append(span(f"r{i:02d}", j * 100.0, j * 100.0 + 10.0, kind=kind))
    return spans


def test_timeline_lanes_are_the_busiest_backends_first() -> None:
    lanes = timeline_lanes(many_resources(), 40)
    busiest = [f"r{i:02d}" for i in range(20, 60)]
    assert sorted(lanes) == busiest
    backends = [r for r in busiest if int(r[1:]) % 2 == 0]
    pools = [r for r in busiest if int(r[1:]) % 2 == 1]
    assert lanes == backends + pools
    assert len(timeline_lanes(many_resources(), 100)) == 60
    assert timeline_lanes([], 40) == []


def test_timeline_lanes_rank_by_busy_time_not_span_count() -> None:
    spans = [span("many", float(t), t + 1.0) for t in range(10)]  # 10 s over 10 spans
    spans.append(span("long", 0.0, 100.0))
    assert timeline_lanes(spans, 1) == ["long"]


def capture_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """Keep each figure write_plots saves, by file name, to look inside it."""
    figures: dict[str, Figure] = {}
    save = report._save

    def keep(fig: Figure, path: Path) -> Path:
        figures[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    return figures


def test_a_timeline_of_60_resources_draws_the_40_busiest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = capture_figures(monkeypatch)
    result = TwinResult("busy", 6000.0, spans=many_resources())
    paths = write_plots([result], tmp_path)
    assert_png(paths[0])
    ax = figures["twin-timeline-busy.png"].axes[0]
    assert "busiest 40 of 60" in ax.get_title()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[::-1] == timeline_lanes(result.spans, 40)  # the top lane first


def test_timeline_bars_queued_running_and_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = capture_figures(monkeypatch)
    result = TwinResult(
        "p",
        4 * 3600.0,  # over 3 h: drawn in hours
        spans=[
            span("qb", 0.0, 3600.0, running_from=1800.0),
            span("qb", 3600.0, 5400.0, outcome=SpanEnd.MOVED),  # never ran
            span("cpu", 0.0, 1800.0, running_from=0.0, kind="pool"),  # ran from the start
        ],
    )
    write_plots([result], tmp_path)
    ax = figures["twin-timeline-p.png"].axes[0]
    lane_at = {
        round(float(y)): t.get_text()
        for y, t in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)
    }
    assert list(lane_at.values()) == ["cpu", "qb"]  # bottom up: the backend above the pool
    # (lane, from, to) in hours -> face and edge RGBA
    bars: dict[tuple[str, float, float], tuple[list[float], list[float]]] = {}
    for coll in ax.collections:
        face = np.asarray(coll.get_facecolor(), dtype=float).reshape(-1, 4)[0].tolist()
        edges = np.asarray(coll.get_edgecolor(), dtype=float).reshape(-1, 4)
        edge = edges[0].tolist() if len(edges) else [0.0, 0.0, 0.0, 0.0]
        for path in coll.get_paths():
            xy = np.asarray(path.vertices, dtype=float)
            lane = lane_at[round(float(xy[:, 1].mean()))]
            bars[lane, float(xy[:, 0].min()), float(xy[:, 0].max())] = (face, edge)
    queued, running, moved = bars["qb", 0.0, 0.5], bars["qb", 0.5, 1.0], bars["qb", 1.0, 1.5]
    pool_running = bars["cpu", 0.0, 0.5]
    assert len(bars) == 4
    assert queued[0] != running[0]  # the queued part lighter than the running part
    assert pool_running[0] not in (queued[0], running[0])  # pools in their own colour
    assert moved[0] == queued[0]  # the moved span only queued...
    assert queued[1][3] == 0.0  # ...and where the others have no edge,
    assert moved[1][3] > 0.0 and moved[1][0] > 0.7 and moved[1][1] < 0.3  # it has a red one


def test_importing_the_report_loads_neither_matplotlib_nor_rich() -> None:
    code = "import sys, qorch.sim.report; print('matplotlib' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_an_unfinished_workflow_counts_as_finishing_when_the_replay_ended() -> None:
    late = TwinResult("late", horizon=7200.0, workflows=[wf("a", 100.0), wf("b", None)])
    summary = late.summary()
    assert summary.finished == 1
    assert summary.mean_jct == (100.0 + (7200.0 - 1000.0)) / 2


@pytest.mark.parametrize(
    ("horizon", "unit", "right"),
    [(60.0, "seconds", 60.0), (7200.0, "minutes", 120.0), (4 * 3600.0, "hours", 4.0)],
)
def test_a_timeline_is_drawn_in_the_unit_its_length_reads_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, horizon: float, unit: str, right: float
) -> None:
    figures = capture_figures(monkeypatch)
    result = TwinResult("p", horizon, spans=[span("qb", 0.0, horizon / 2, running_from=0.0)])
    write_timeline(result, tmp_path / "t.png", title="a run")
    ax = figures["t.png"].axes[0]
    assert ax.get_xlabel() == unit and ax.get_title() == "a run"
    assert ax.get_xlim()[1] == pytest.approx(right)
