"""The real-trace replay: Qorch against the schedulers users would otherwise run, in the
digital twin (``qorch.sim``), on traces nobody here made (``../shared/data``).

    nice .venv/bin/python bench/real_traces.py [--quick] [--out DIR] [--data DIR]

One run prints ONE table per scenario with the policies side by side (static/FCFS on the
best-calibrated device, least-busy, a Qonductor-style batch NSGA-II, Qorch, and a hindsight
oracle; ``qorch-static`` is Qorch with moves switched off, ``qorch-fidelity`` Qorch with
every workflow weighing fidelity first):

1. ``bench/scenarios/week.yaml`` (``--quick``: ``quick.yaml``, one day): real queues,
   drifting calibrations, GPU background load, 1,000 (150) workflows of mixed shapes;
2. ``bench/scenarios/stationary.yaml``: nothing changes, so moves can only lose;
3. the decision pass at 1,000 pending subtasks x 16 backends + pools
   (``bench/decision_pass.py``), in the same run;

then the must-show checks (met / NOT met, with the figures) and the PNG plots in ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "bench"))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from qorch.sim.records import PolicySummary, TwinResult  # noqa: E402
from qorch.sim.replay import load_scenario, replay  # noqa: E402
from qorch.sim.report import render_table, write_plots  # noqa: E402
from qorch.sim.twin import make_predictor  # noqa: E402

POLICIES = (
    "static",
    "least-busy",
    "qonductor",
    "qorch-static",
    "qorch",
    "qorch-fidelity",
    "oracle",
)


def _run(path: Path, policies: tuple[str, ...], data: Path | None) -> list[TwinResult]:
    import dataclasses

    scenario = load_scenario(path)
    if data is not None:
        scenario = dataclasses.replace(scenario, data_dir=data)
    predictor = make_predictor(str(REPO / "models"))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[clock]}"),
        TimeElapsedColumn(),
    ) as bar:
        tasks: dict[str, object] = {}

        def on_progress(policy: str, now: float, horizon: float) -> None:
            if policy not in tasks:
                tasks[policy] = bar.add_task(f"{scenario.name}: {policy}", total=horizon, clock="")
            bar.update(tasks[policy], completed=min(now, horizon), clock=f"{now / 3600:.1f} h")  # type: ignore[arg-type]

        return replay(scenario, policies, predictor=predictor, on_progress=on_progress)


def _by(results: list[TwinResult]) -> dict[str, PolicySummary]:
    return {r.policy: r.summary() for r in results}


def _rel(a: float, b: float) -> float:
    return (a - b) / b if b else math.nan


def checks(main: dict[str, PolicySummary], still: dict[str, PolicySummary]) -> list[str]:
    """The issue's must-show lines, each met or NOT met with its figures."""
    out = []
    q, s = main["qorch"], main["static"]
    jct = _rel(q.mean_jct, s.mean_jct)
    fid = _rel(q.mean_fidelity, s.mean_fidelity)
    ok = jct <= -0.55 and fid >= -0.02
    out.append(
        f"{'met' if ok else 'NOT met'}: Qorch vs static mean JCT {jct:+.1%} (goal <= -55%), "
        f"fidelity {fid:+.2%} (goal >= -2%)"
    )
    # Each peer against Qorch as shipped (the workflows' own objectives); the Qonductor-style
    # rounds, which wait for the best-calibrated devices, also against Qorch with every
    # workflow weighing fidelity first (its operating point at their fidelity).
    for name, peer in (
        ("qorch", "least-busy"),
        ("qorch", "qonductor"),
        ("qorch-fidelity", "qonductor"),
    ):
        mine, p = main.get(name), main[peer]
        if mine is None:
            continue
        ok = mine.mean_jct < p.mean_jct and mine.mean_fidelity >= p.mean_fidelity - 1e-9
        out.append(
            f"{'met' if ok else 'NOT met'}: {name} vs {peer}: mean JCT {mine.mean_jct:.0f} s "
            f"vs {p.mean_jct:.0f} s, fidelity {mine.mean_fidelity:.4f} vs "
            f"{p.mean_fidelity:.4f}"
        )
    o = main["oracle"]
    ratio = q.mean_jct / o.mean_jct if o.mean_jct else math.nan
    out.append(
        f"{'met' if ratio <= 1.15 else 'NOT met'}: Qorch / oracle mean JCT {ratio:.2f}x "
        "(goal <= 1.15x)"
    )
    sq, ss = still["qorch"], still["qorch-static"]
    worse = _rel(sq.mean_jct, ss.mean_jct)
    out.append(
        f"{'met' if worse <= 0.02 else 'NOT met'}: stationary, Qorch vs Qorch without moves: "
        f"mean JCT {worse:+.1%} (goal <= +2%), {sq.moves} moves; vs static "
        f"{_rel(sq.mean_jct, still['static'].mean_jct):+.1%}"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one day, 150 workflows")
    parser.add_argument("--out", type=Path, default=Path("bench-results/real-traces"))
    parser.add_argument("--data", type=Path, default=None, help="the traces (../shared/data)")
    parser.add_argument("--skip-pass-bench", action="store_true")
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:  # a log file: one table row per line
        console = Console(width=180)
    started = time.perf_counter()
    scenarios = REPO / "bench" / "scenarios"
    week = scenarios / ("quick.yaml" if args.quick else "week.yaml")
    main_results = _run(week, POLICIES, args.data)
    console.print(render_table(main_results, baseline="static", title=f"replay: {week.name}"))
    still = _run(scenarios / "stationary.yaml", ("static", "qorch-static", "qorch"), args.data)
    console.print(render_table(still, baseline="qorch-static", title="replay: stationary"))
    if not args.skip_pass_bench:
        import decision_pass

        r = decision_pass.run(
            quick=True,
            passes=None,
            models_dir=None,
            workflows=100,
            subtasks=10,
            backends=16,
            seed=0,
        )
        decision_pass.show(r)
    for line in checks(_by(main_results), _by(still)):
        console.print(line)
    for path in write_plots(main_results, args.out, prefix=week.stem):
        console.print(f"wrote {path}")
    console.print(f"bench wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
