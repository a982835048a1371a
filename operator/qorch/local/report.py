"""What ``qorch run`` shows: a live table while it runs, then a report per subtask
(resource, moves, time, fidelity, cost), written as ``qorch-run.json`` and a PNG timeline."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from qorch.api.workflow import ResourceKind, SubtaskPhase, SubtaskStatus
from qorch.local.runner import LocalRun, RunResult, RunWorkflow
from qorch.sim.records import Span, TwinResult
from qorch.sim.report import format_duration, write_timeline

_PHASE_STYLE = {
    SubtaskPhase.SUCCEEDED: "green",
    SubtaskPhase.FAILED: "red",
    SubtaskPhase.RETRYING: "yellow",
    SubtaskPhase.RUNNING: "cyan",
    SubtaskPhase.SKIPPED: "dim",
}


def live_table(run: LocalRun) -> Table:
    """Each subtask now: phase, where, moves, and a loop's progress."""
    table = Table(title=f"qorch run — {run.elapsed():.1f} s", title_justify="left")
    for column in ("workflow", "subtask", "phase", "resource", "moves", "progress", "note"):
        table.add_column(column, overflow="ellipsis", no_wrap=column == "note")
    for wf in run.workflows:
        names = [st.name for st in wf.status.subtasks] or [s.name for s in wf.local.spec.subtasks]
        by_name = {st.name: st for st in wf.status.subtasks}
        for name in names:
            st = by_name.get(name)
            phase = st.phase if st is not None else SubtaskPhase.PENDING
            table.add_row(
                wf.name,
                name,
                f"[{_PHASE_STYLE.get(phase, '')}]{phase.value}[/]"
                if phase in _PHASE_STYLE
                else phase.value,
                _resource(st),
                str(st.moves) if st is not None else "0",
                _progress(st),
                st.message[:120] if st is not None else "",
            )
    return table


def final_table(result: RunResult) -> Table:
    table = Table(title="qorch run — report", title_justify="left")
    for column, justify in (
        ("workflow", "left"),
        ("subtask", "left"),
        ("phase", "left"),
        ("resource", "left"),
        ("moves", "right"),
        ("time", "right"),
        ("queue", "right"),
        ("run", "right"),
        ("fidelity", "right"),
        ("USD", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for wf in result.workflows:
        for st in wf.status.subtasks:
            row = subtask_row(wf, st, result.spans)
            table.add_row(
                wf.name,
                st.name,
                row["phase"],
                row["resource"],
                str(row["moves"]),
                _seconds(row["seconds"]),
                _seconds(row["queueSeconds"]),
                _seconds(row["runSeconds"]),
                "" if row["fidelity"] is None else f"{row['fidelity']:.3f}",
                "" if row["costUSD"] is None else f"{row['costUSD']:.4f}",
            )
    return table


def classical_output(result: RunResult, lines: int = 5) -> list[str]:
    """The last lines each classical step printed (the user's own output: a VQE's
    energy, a kernel matrix), one block per step."""
    out = []
    for wf in result.workflows:
        for sub in wf.local.spec.subtasks:
            printed = result.logs.get((wf.name, sub.name), "").strip().splitlines()
            if sub.classical is not None and printed:
                out.append(f"{wf.name}/{sub.name}:")
                out.extend(f"  {line}" for line in printed[-lines:])
    return out


def subtask_row(wf: RunWorkflow, st: SubtaskStatus, spans: list[Span]) -> dict[str, Any]:
    """One subtask's line of the report. ``seconds``: from its first placement to its end
    (all attempts and moves); ``fidelity``: the expected success probability its placement
    was chosen with (1 where it was simulated exactly, in a pod)."""
    mine = [s for s in spans if s.workflow == wf.name and s.subtask == st.name]
    seconds = (max(s.end for s in mine) - min(s.start for s in mine)) if mine else None
    fidelity = st.predicted.fidelity if st.predicted is not None else None
    if (
        st.placement is not None
        and st.placement.kind is ResourceKind.POOL
        and st.route is None
        and st.name in wf.sources
    ):
        fidelity = 1.0
    actual = st.actual
    cost = actual.costUSD if actual is not None and actual.costUSD is not None else None
    if cost is None and st.predicted is not None and st.phase is SubtaskPhase.SUCCEEDED:
        cost = st.predicted.costUSD
    return {
        "phase": st.phase.value,
        "resource": _resource(st),
        "moves": st.moves,
        "seconds": seconds,
        "queueSeconds": actual.queueSeconds if actual is not None else None,
        "runSeconds": actual.runSeconds if actual is not None else None,
        "fidelity": fidelity,
        "costUSD": cost,
        "message": st.message,
    }


def write_report(result: RunResult, out: Path) -> list[Path]:
    """``qorch-run.json`` (each workflow's final status, the report's rows, the decisions
    taken) and ``qorch-run-timeline.png``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "seconds": round(result.seconds, 3),
        "models": result.models,
        "timedOut": result.timed_out,
        "workflows": [
            {
                "name": wf.name,
                "phase": wf.status.phase.value,
                "seconds": wf.finished,
                "costUSD": wf.status.costUSD,
                "moves": wf.status.moves,
                "subtasks": [
                    {"name": st.name, **subtask_row(wf, st, result.spans)}
                    for st in wf.status.subtasks
                ],
                "status": wf.status.model_dump(mode="json", exclude_none=True),
            }
            for wf in result.workflows
        ],
        "events": [asdict(e) for e in result.events],
        "spans": [{**asdict(s), "outcome": s.outcome.value} for s in result.spans],
    }
    report = out / "qorch-run.json"
    report.write_text(json.dumps(doc, indent=2) + "\n")
    # One lane per subtask and resource: a move shows as a second lane of the subtask.
    lanes = [
        Span(
            s.workflow,
            s.subtask,
            f"{s.subtask} @ {s.resource}"
            if len(result.workflows) == 1
            else f"{s.workflow}/{s.subtask} @ {s.resource}",
            s.kind,
            s.start,
            s.end,
            s.running_from,
            s.outcome,
        )
        for s in result.spans
    ]
    timeline = TwinResult(policy="qorch run", horizon=max(result.seconds, 1.0), spans=lanes)
    png = write_timeline(
        timeline,
        out / "qorch-run-timeline.png",
        title=f"qorch run — {', '.join(wf.name for wf in result.workflows)}",
    )
    return [report, png]


def _resource(st: SubtaskStatus | None) -> str:
    if st is None or st.placement is None:
        return ""
    where = f"{st.placement.name} ({st.placement.kind.value})"
    if st.route is not None:
        where += f", batches → {st.route.name}"
    return where


def _progress(st: SubtaskStatus | None) -> str:
    if st is None or st.progress is None:
        return ""
    p = st.progress
    energy = "" if p.energy is None else f", energy {p.energy:.6f}"
    return f"{p.evaluations} batches{energy}"


def _seconds(value: float | None) -> str:
    return "" if value is None else format_duration(value)
