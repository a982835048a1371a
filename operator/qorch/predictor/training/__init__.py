"""Training of the predictor's models on the real traces (``qorch train``,
``bench/predictor.py``). Needs the ``train`` extra (LightGBM, onnxmltools, onnx, scikit-learn)
only when a function runs: the package imports without it.

``EVALUATIONS`` is the registry bench/predictor.py walks: every entry is called as
``evaluate(traces_dir, quick, export_to)`` (positional) and returns rows of the results table
(``common.row``); with ``export_to`` set it also writes its trained ``.onnx`` files there.
Add yours to the tuple.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from qorch.predictor.training import classical, fidelity, qpu_runtime, queue_wait, rank
from qorch.predictor.training.common import Row, TrainedModel, export
from qorch.traces import PathLike

Evaluation = Callable[[PathLike | None, bool, Path | None], list[Row]]

EVALUATIONS: tuple[Evaluation, ...] = (
    qpu_runtime.evaluate,
    queue_wait.evaluate,
    fidelity.evaluate,
    classical.evaluate,
    rank.evaluate,
)


def run_steps(steps: Iterable[tuple[str, Callable[[], list[Row]]]]) -> tuple[list[Row], list[str]]:
    """Every named step in turn, each row timed. One that raises gives a FAILED row (and its
    traceback on stderr) instead of hiding the others' figures. Returns the rows and the
    names of the steps that failed."""
    rows: list[Row] = []
    failed: list[str] = []
    for name, step in steps:
        started = time.monotonic()
        try:
            got = step()
        except Exception as exc:
            traceback.print_exc()
            failed.append(name)
            got = [
                {
                    "model": name,
                    "method": "-",
                    "metric": "FAILED",
                    "split": "-",
                    "value": float("nan"),
                    "baselines": {},
                    "goal": "",
                    "note": f"{type(exc).__name__}: {exc}",
                }
            ]
        for r in got:
            r.setdefault("seconds", round(time.monotonic() - started, 1))
        rows.extend(got)
    return rows, failed


def evaluation_steps(
    evaluations: Iterable[Evaluation],
    traces_dir: PathLike | None,
    quick: bool,
    export_to: Path | None,
) -> list[tuple[str, Callable[[], list[Row]]]]:
    """The evaluations as named steps for :func:`run_steps`."""
    return [
        (
            f"{getattr(e, '__module__', '?')}.{getattr(e, '__name__', '?')}",
            partial(e, traces_dir, quick, export_to),
        )
        for e in evaluations
    ]


__all__ = [
    "EVALUATIONS",
    "Evaluation",
    "Row",
    "TrainedModel",
    "evaluation_steps",
    "export",
    "run_steps",
]
