"""The digital twin's report: one plain-text table over several replays, and the plots.

``render_table`` prints one row per policy (a :class:`~qorch.sim.records.PolicySummary`),
with the mean completion time and the mean fidelity also as a relative change against a
baseline policy. ``write_plots`` draws, as PNGs: each policy's allocation timeline (one lane
per resource), the cumulative cost, the first replay's queue lengths per backend and the
distribution of workflow completion times.

rich and matplotlib (the ``sim`` extra) are imported inside the functions that use them, so
importing this module is cheap and never needs a display.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qorch.sim.records import PolicySummary, Span, SpanEnd, TwinResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NAN_TEXT = "\u2013"  # an en dash: what a NaN (or a missing value) shows as
MAX_LANES = 40  # most resources one timeline draws
DPI = 110
HOUR = 3600.0

_MINUTE = 60.0
_DAY = 24 * HOUR


# ---------------------------------------------------------------------------------------
# Formatting


def format_duration(seconds: float) -> str:
    """Seconds in human units: ``"0.4 s"``, ``"42 s"``, ``"3.1 min"``, ``"2.4 h"``, ``"1.2 d"``.

    The unit is the largest one the value reaches *after rounding* (59.7 s shows as
    ``"1.0 min"``, not ``"60 s"``). NaN shows as an en dash.
    """
    if math.isnan(seconds):
        return NAN_TEXT
    if math.isinf(seconds):
        return "∞" if seconds > 0 else "-∞"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 9.95:
        return f"{sign}{s:.1f} s"
    if s < 59.5:
        return f"{sign}{s:.0f} s"
    if s / _MINUTE < 59.95:
        return f"{sign}{s / _MINUTE:.1f} min"
    if s / HOUR < 23.95:
        return f"{sign}{s / HOUR:.1f} h"
    return f"{sign}{s / _DAY:.1f} d"


def _format_pass(seconds: float) -> str:
    """One decision pass's wall time: milliseconds, or seconds from 1 s on."""
    if math.isnan(seconds):
        return NAN_TEXT
    if abs(seconds) < 0.9995:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _format_change(value: float, base: float) -> str:
    """Relative change of ``value`` against ``base`` (``"-57.3%"``, ``"+4.0%"``)."""
    if math.isnan(value) or math.isnan(base) or base == 0:
        return NAN_TEXT
    return f"{(value - base) / abs(base) * 100:+.1f}%"


def _format_fixed(value: float, digits: int) -> str:
    return NAN_TEXT if math.isnan(value) else f"{value:,.{digits}f}"


def _format_percent(ratio: float) -> str:
    return NAN_TEXT if math.isnan(ratio) else f"{ratio * 100:.1f}%"


def _format_workflows(row: PolicySummary) -> str:
    text = f"{row.finished}/{row.workflows}"
    return f"{text} ({row.failed} failed)" if row.failed else text


# ---------------------------------------------------------------------------------------
# Table


def summary_rows(results: Sequence[TwinResult], baseline: str | None = None) -> list[PolicySummary]:
    """Each result's :meth:`~TwinResult.summary`, in the order given.

    ``baseline`` changes nothing in the rows (a :class:`PolicySummary` has no relative
    figures; :func:`render_table` computes them); it is accepted so that callers can pass
    the same arguments to both functions.
    """
    del baseline
    return [result.summary() for result in results]


def render_table(
    results: Sequence[TwinResult], *, baseline: str | None = None, title: str = ""
) -> str:
    """One plain-text table, one row per policy, in the order given.

    The ``vs <baseline>`` and ``Δ fidelity`` columns are the relative change of the mean
    completion time and of the mean fidelity against the first row whose policy is
    ``baseline``; they are blank for that row itself, and everywhere when ``baseline`` is
    None or names no row. NaN shows as an en dash.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = summary_rows(results, baseline)
    base = next((row for row in rows if row.policy == baseline), None)
    table = Table(
        title=Text(title) if title else None,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=False,
    )
    table.add_column(Text("policy"), justify="left", no_wrap=True)
    for header in (
        "workflows",
        "mean JCT",
        "p95 JCT",
        f"vs {baseline}" if baseline else "vs baseline",
        "fidelity",
        "Δ fidelity",
        "USD",
        "QPU util",
        "GPU util",
        "moves",
        "pass p50",
        "pass p99",
        "passes",
    ):
        table.add_column(Text(header), justify="right", no_wrap=True)
    for row in rows:
        ref = base if row is not base else None
        cells = [
            row.policy,
            _format_workflows(row),
            format_duration(row.mean_jct),
            format_duration(row.p95_jct),
            "" if ref is None else _format_change(row.mean_jct, ref.mean_jct),
            _format_fixed(row.mean_fidelity, 3),
            "" if ref is None else _format_change(row.mean_fidelity, ref.mean_fidelity),
            _format_fixed(row.usd, 2),
            _format_percent(row.qpu_utilisation),
            _format_percent(row.gpu_utilisation),
            str(row.moves),
            _format_pass(row.decision_median),
            _format_pass(row.decision_p99),
            str(row.passes),
        ]
        # Text, not str: a policy named "[bold]" or ":smile:" must print as it is.
        table.add_row(*(Text(cell) for cell in cells))
    # 160 columns, or as many as the table needs: rich would rather cut cells short ("500.…").
    out = io.StringIO()
    console = Console(
        file=out, width=160, color_system=None, highlight=False, emoji=False, markup=False
    )
    wide = console.options.update_width(10_000)
    console.width = max(160, console.measure(table, options=wide).maximum)
    console.print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


# ---------------------------------------------------------------------------------------
# Timeline lanes


def _kind_rank(kind: str) -> int:
    return {"backend": 0, "pool": 1}.get(kind, 2)


def timeline_lanes(spans: Iterable[Span], max_lanes: int = MAX_LANES) -> list[str]:
    """The resources a timeline draws, top lane first.

    At most ``max_lanes`` of them: the busiest, by the seconds their spans cover in total
    (then by the number of spans, then by name). Backends come above pools (the kind a
    resource's first span gives), each group sorted by name.
    """
    busy: dict[str, float] = {}
    count: dict[str, int] = {}
    kind: dict[str, str] = {}
    for span in spans:
        busy[span.resource] = busy.get(span.resource, 0.0) + max(0.0, span.end - span.start)
        count[span.resource] = count.get(span.resource, 0) + 1
        kind.setdefault(span.resource, span.kind)
    chosen = sorted(busy, key=lambda r: (-busy[r], -count[r], r))[: max(0, max_lanes)]
    return sorted(chosen, key=lambda r: (_kind_rank(kind[r]), r))


# ---------------------------------------------------------------------------------------
# Plots


@dataclass(frozen=True)
class _BarStyle:
    facecolor: str
    edgecolor: str
    linewidth: float


_COLOURS = {  # kind -> (queued, running)
    "backend": ("#9ecae1", "#2171b5"),
    "pool": ("#a1d99b", "#238b45"),
}
_OTHER_COLOURS = ("#d9d9d9", "#636363")
_MOVED_EDGE = "#d62728"


def _bar_style(kind: str, running: bool, moved: bool) -> _BarStyle:
    # Queued parts are lighter, not hatched: hatching thousands of bars takes seconds.
    queued_colour, running_colour = _COLOURS.get(kind, _OTHER_COLOURS)
    return _BarStyle(
        facecolor=running_colour if running else queued_colour,
        edgecolor=_MOVED_EDGE if moved else "none",
        linewidth=0.9 if moved else 0.0,
    )


def _safe_name(policy: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", policy).strip("._") or "policy"


def _no_data(ax: Axes, what: str = "no data") -> None:
    ax.text(
        0.5,
        0.5,
        what,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=14,
        color="grey",
    )


def _save(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def write_timeline(result: TwinResult, path: Path, title: str | None = None) -> Path:
    """One allocation timeline (``write_plots`` draws one per policy); ``title`` replaces
    "allocation timeline — <policy>"."""
    import matplotlib

    matplotlib.use("Agg")
    return _timeline(result, Path(path), title)


def _time_unit(horizon: float) -> tuple[float, str]:
    """Seconds per unit of the x axis, and its name: a run of minutes is not drawn in hours."""
    if horizon <= 600.0:
        return 1.0, "seconds"
    if horizon <= 3 * HOUR:
        return 60.0, "minutes"
    return HOUR, "hours"


def _timeline(result: TwinResult, path: Path, title: str | None = None) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    lanes = timeline_lanes(result.spans)
    resources = {span.resource for span in result.spans}
    height = min(max(3.0, 0.32 * len(lanes) + 1.6), 16.0)
    fig, ax = plt.subplots(figsize=(12.0, height), layout="constrained")
    title = title or f"allocation timeline — {result.policy}"
    unit, unit_name = _time_unit(result.horizon)
    if len(resources) > len(lanes):
        title += f" (busiest {len(lanes)} of {len(resources)} resources)"
    ax.set_title(title)
    ax.set_xlabel(unit_name)
    if not lanes:
        _no_data(ax)
        ax.set_yticks([])
        return _save(fig, path)

    # Top lane first: the first lane gets the highest y.
    row = {resource: len(lanes) - 1 - i for i, resource in enumerate(lanes)}
    bars: dict[tuple[str, bool, bool], list[tuple[float, float]]] = {}
    kinds: dict[str, str] = {}
    for span in result.spans:
        if span.resource not in row:
            continue
        kinds.setdefault(span.resource, span.kind)
        moved = span.outcome is SpanEnd.MOVED
        start, end = span.start / unit, max(span.end, span.start) / unit
        run = end if span.running_from is None else min(max(span.running_from / unit, start), end)
        if run > start:
            bars.setdefault((span.resource, False, moved), []).append((start, run - start))
        if end > run:
            bars.setdefault((span.resource, True, moved), []).append((run, end - run))
    for (resource, running, moved), ranges in bars.items():
        style = _bar_style(kinds[resource], running, moved)
        ax.broken_barh(
            ranges,
            (row[resource] - 0.38, 0.76),
            facecolors=style.facecolor,
            edgecolors=style.edgecolor,
            linewidth=style.linewidth,
        )
    ax.set_yticks(range(len(lanes)), list(reversed(lanes)), fontsize=7 if len(lanes) > 20 else 9)
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.set_xlim(left=0.0, right=max(result.horizon / unit, ax.get_xlim()[1]))
    ax.grid(axis="x", alpha=0.3)
    backend_q, backend_r = _COLOURS["backend"]
    pool_q, pool_r = _COLOURS["pool"]
    ax.legend(
        handles=[
            Patch(facecolor=backend_q, label="queued (backend)"),
            Patch(facecolor=backend_r, label="running (backend)"),
            Patch(facecolor=pool_q, label="pending (pool)"),
            Patch(facecolor=pool_r, label="running (pool)"),
            Patch(facecolor="white", edgecolor=_MOVED_EDGE, label="moved away"),
        ],
        loc="upper right",
        fontsize=7,
        framealpha=0.8,
    )
    return _save(fig, path)


def _cost(results: Sequence[TwinResult], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.0, 5.0), layout="constrained")
    ax.set_title("cumulative cost")
    ax.set_xlabel("hours")
    ax.set_ylabel("USD")
    drawn = 0
    for result in results:
        if not result.cost_points:
            continue
        points = sorted(result.cost_points)
        ax.step(
            [t / HOUR for t, _ in points],
            [usd for _, usd in points],
            where="post",
            label=result.policy,
        )
        drawn += 1
    if drawn:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    else:
        _no_data(ax)
    return _save(fig, path)


def _queues(results: Sequence[TwinResult], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.0, 5.0), layout="constrained")
    samples = results[0].queue_samples if results else {}
    series = {name: sorted(points) for name, points in samples.items() if points}
    ax.set_title(f"queue length per backend — {results[0].policy}" if results else "queue length")
    ax.set_xlabel("hours")
    ax.set_ylabel("pending jobs")
    if not series:
        _no_data(ax)
        return _save(fig, path)
    for name in sorted(series):
        points = series[name]
        ax.step([t / HOUR for t, _ in points], [n for _, n in points], where="post", label=name)
    positive = [n for points in series.values() for _, n in points if n > 0]
    if positive and max(positive) >= 100 * min(positive):
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if len(series) <= 15:
        ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    return _save(fig, path)


def _jct(results: Sequence[TwinResult], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(10.0, 5.0), layout="constrained")
    ax.set_title("workflow completion time (empirical CDF)")
    ax.set_xlabel("completion time")
    ax.set_ylabel("fraction of workflows finished")
    drawn = 0
    for result in results:
        times = sorted(
            c for w in result.workflows if (c := w.completion_seconds) is not None and c > 0
        )
        if not times:
            continue
        # Over all of the policy's workflows: those not finished keep the curve below 1.
        total = len(result.workflows)
        fractions = [(i + 1) / total for i in range(len(times))]
        ax.step(
            [times[0], *times],
            [0.0, *fractions],
            where="post",
            label=f"{result.policy} ({len(times)}/{total})",
        )
        drawn += 1
    if drawn:
        ax.set_xscale("log")
        human = FuncFormatter(lambda x, _pos: format_duration(x))
        ax.xaxis.set_major_formatter(human)
        # Under about a decade and a half there are few major ticks: label the minor ones too.
        low, high = ax.get_xlim()
        ax.xaxis.set_minor_formatter(human if high < 30 * low else NullFormatter())
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    else:
        _no_data(ax)
    return _save(fig, path)


def write_plots(
    results: Sequence[TwinResult], out_dir: Path, *, prefix: str = "twin"
) -> list[Path]:
    """Write the report's PNGs into ``out_dir`` (made if missing) and return their paths.

    In order: ``<prefix>-timeline-<policy>.png`` per result (the policy's name made safe for
    a file name; a repeated one gets ``-2``, ``-3``...), then ``<prefix>-cost.png``,
    ``<prefix>-queues.png`` (the first result's queues) and ``<prefix>-jct.png``. A plot
    with nothing to draw says "no data".
    """
    import matplotlib

    matplotlib.use("Agg")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    used: set[str] = set()
    for result in results:
        name = base = _safe_name(result.policy)
        n = 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        paths.append(_timeline(result, out_dir / f"{prefix}-timeline-{name}.png"))
    paths.append(_cost(results, out_dir / f"{prefix}-cost.png"))
    paths.append(_queues(results, out_dir / f"{prefix}-queues.png"))
    paths.append(_jct(results, out_dir / f"{prefix}-jct.png"))
    return paths
