"""The predictor in a running operator: a broken model directory gives the analytic
fallback with a condition and a Warning (never a crash); a fixed file is hot-reloaded; a
file whose held-out error is worse than the serving model's is refused."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path
from typing import Any

import onnx
import pytest

from devenv.cluster import Cluster, wait_for
from tests.e2e.test_trust import BELL, phase, workflow

pytestmark = pytest.mark.controlplane
MODELS = Path(__file__).resolve().parents[2] / "models"


def run(cluster: Cluster, namespace: str, name: str, backend: str) -> dict[str, Any]:
    cluster.apply(
        workflow(name, {"name": "q", "circuit": {"qasm": BELL}}, quantumBackends=[backend]),
        namespace,
    )
    wait_for(f"{name} succeeded", lambda: phase(cluster, name, namespace) == "Succeeded", 90)
    wf = cluster.get("hwf", name, namespace)
    assert wf is not None
    return dict(wf["status"])


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_fallback_is_visible_then_a_fixed_model_is_hot_reloaded_and_a_worse_one_refused(
    cluster: Cluster,
    namespace: str,
    own_operator: Any,
    backend: str,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("*.md", "measured"))
    (models / "qpu_runtime.onnx").write_bytes(b"truncated")
    op = own_operator(QORCH_MODELS_DIR=str(models), QORCH_MODEL_REFRESH_SECONDS="1")

    status = run(cluster, namespace, "broken-model", backend)
    cond = condition(status, "Predicted")
    assert (cond["status"], cond["reason"]) == ("False", "AnalyticFallback"), cond
    assert "qpu_runtime.onnx rejected" in cond["message"], cond
    predicted = status["subtasks"][0]["predicted"]
    assert predicted["source"] == "analytic"
    assert any(n.startswith("qpu_runtime: analytic") for n in predicted["notes"]), predicted
    events = cluster.events(namespace, "broken-model")
    warnings = [e for e in events if e["reason"] == "PredictorFallback"]
    assert warnings and warnings[0]["type"] == "Warning", [e["reason"] for e in events]

    # The file is fixed in place (as a ConfigMap update would): served without a restart.
    shutil.copy(MODELS / "qpu_runtime.onnx", models / "qpu_runtime.onnx")
    wait_for("the fixed model served", lambda: serving(op.metrics_port, "qpu_runtime"), 30)
    status = run(cluster, namespace, "fixed-model", backend)
    assert condition(status, "Predicted")["status"] == "True"
    assert status["subtasks"][0]["predicted"]["source"] == "model"

    # A second file for the same output, but worse on held-out data: refused, the
    # serving model stays.
    worse = onnx.load(str(MODELS / "qpu_runtime.onnx"))
    for prop in worse.metadata_props:
        if prop.key == "qorch.heldout_error":
            prop.value = str(float(prop.value) * 2)
    onnx.save(worse, str(models / "qpu_runtime_value.onnx"))
    wait_for("the worse model refused", lambda: refused(op.metrics_port), 30)
    assert serving(op.metrics_port, "qpu_runtime")
    assert "held-out" in op.log() and "keeping the serving model" in op.log()


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def serving(port: int, model: str) -> bool:
    return f'qorch_predictor_model_serving{{model="{model}",output="value"}} 1.0' in metrics(port)


def refused(port: int) -> bool:
    line = (
        'qorch_predictor_model_changes_total{change="refused",model="qpu_runtime",output="value"}'
    )
    return line in metrics(port)
