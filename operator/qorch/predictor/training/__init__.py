"""Training of the predictor's models on the real traces (``qorch train``,
``bench/predictor.py``). Needs the ``train`` extra (LightGBM, onnxmltools, onnx, scikit-learn)
only when a function runs: the package imports without it.

``EVALUATIONS`` is the registry bench/predictor.py walks: every entry is called as
``evaluate(traces_dir, quick, export_to)`` (positional) and returns rows of the results table
(``common.row``); with ``export_to`` set it also writes its trained ``.onnx`` files there.
Add yours to the tuple.
"""

from __future__ import annotations

from collections.abc import Callable
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

__all__ = ["EVALUATIONS", "Evaluation", "Row", "TrainedModel", "export"]
