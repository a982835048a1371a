"""``qorch run``: a workflow run on this machine by the operator's own decisions, with real
parts: the shipped ONNX models, Aer and fake devices behind real gateways, worker and
classical steps as real processes. Run as a user runs it, by the command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
QORCH = str(Path(sys.executable).parent / "qorch")


def qorch_run(
    *args: str, cwd: Path = ROOT, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QORCH, "run", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def report(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "qorch-run.json").read_text())
    return doc


def subtasks(doc: dict[str, Any], workflow: int = 0) -> dict[str, dict[str, Any]]:
    wf = doc["workflows"][workflow]
    rows = {s["name"]: s for s in wf["subtasks"]}
    for st in wf["status"]["subtasks"]:
        rows[st["name"]]["status"] = st
    return rows


def test_the_vqe_example_finds_the_h2_ground_energy(tmp_path: Path) -> None:
    done = qorch_run("examples/vqe-h2.yaml", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    doc = report(tmp_path)
    assert doc["models"] == "models"  # the shipped models, found beside the command
    assert doc["workflows"][0]["phase"] == "Succeeded"
    vqe = subtasks(doc)["vqe"]["status"]["result"]
    assert vqe["energy"] == pytest.approx(-1.857275, abs=2e-3)
    assert vqe["converged"] is True
    # The classical step read the loop's result and printed it: shown after the report.
    assert "H2 ground energy -1.85" in done.stdout
    png = (tmp_path / "qorch-run-timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert {s["subtask"] for s in doc["spans"]} == {"vqe", "report"}


def test_circuits_no_pool_can_hold_run_on_fake_devices_through_their_gateways(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "devices.yaml"
    manifest.write_text(
        """apiVersion: qorch.io/v1alpha1
kind: HybridWorkflow
metadata: {name: on-devices}
spec:
  resources:
    quantumBackends: [fake-perth, fake-lagos]
    classicalPools:
    - {name: cpu, nodeSelector: {qorch.io/pool: cpu}, maxQubits: 1}
  subtasks:
  - name: ghz
    circuit:
      shots: 2000
      qasm: |
        OPENQASM 3.0; include "stdgates.inc";
        qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;
  - name: bell
    circuit:
      primitive: estimator
      observables: [ZZ, XX]
      shots: 2000
      qasm: |
        OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; h q[0]; cx q[0], q[1];
  - name: summary
    dependsOn: [ghz, bell]
    classical:
      image: python:3.12-slim
      command:
      - python
      - -c
      - |
        import json, os
        d = os.environ["QORCH_INPUTS_DIR"]
        ghz = json.load(open(os.path.join(d, "ghz.json")))
        print("ghz shots", sum(ghz["counts"].values()))
"""
    )
    done = qorch_run(str(manifest), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = subtasks(report(tmp_path))
    for name in ("ghz", "bell"):
        placement = rows[name]["status"]["placement"]
        assert placement["kind"] == "backend" and placement["name"].startswith("fake-")
        # A noisy device: the expected fidelity the placement used is below 1.
        assert 0.5 < rows[name]["fidelity"] < 1.0
    counts = rows["ghz"]["status"]["result"]["counts"]
    assert sum(counts.values()) == 2000
    assert counts.get("000", 0) + counts.get("111", 0) > 1500  # a GHZ state, with noise
    assert "ghz shots 2000" in done.stdout


def test_a_failing_step_fails_the_run_and_says_why(tmp_path: Path) -> None:
    manifest = tmp_path / "fails.yaml"
    manifest.write_text(
        """apiVersion: qorch.io/v1alpha1
kind: HybridWorkflow
metadata: {name: fails}
spec:
  subtasks:
  - name: broken
    maxRetries: 0
    classical:
      image: python:3.12-slim
      command: [python, -c, "import sys; print('no input'); sys.exit(3)"]
"""
    )
    done = qorch_run(str(manifest), "--out", str(tmp_path), "--models", "none")
    assert done.returncode == 1
    assert "not succeeded: fails" in done.stderr
    doc = report(tmp_path)
    assert doc["models"] == "analytic"
    broken = subtasks(doc)["broken"]
    assert broken["phase"] == "Failed"
    assert "exit code 3" in broken["message"] and "no input" in broken["message"]


def test_a_bad_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: qorch.io/v1alpha1\nkind: HybridWorkflow\nmetadata: {name: bad}\n"
        "spec: {subtasks: [{name: c, circuit: {shots: 0, qasm: x}}]}\n"
    )
    done = qorch_run(str(manifest), "--out", str(tmp_path))
    assert done.returncode == 2
    assert f"{manifest}#1: spec.subtasks[0].circuit.shots" in done.stderr
    assert not (tmp_path / "qorch-run.json").exists()


EXAMPLES = sorted(
    p.name for p in (ROOT / "examples").glob("*.yaml") if "kind: HybridWorkflow" in p.read_text()
)


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e != "three-stage-dag.yaml"])
def test_every_example_runs_here(example: str, tmp_path: Path) -> None:
    done = qorch_run(f"examples/{example}", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    doc = report(tmp_path)
    assert all(wf["phase"] == "Succeeded" for wf in doc["workflows"])
    assert (tmp_path / "qorch-run-timeline.png").stat().st_size > 0


def test_a_step_that_needs_a_gpu_is_refused_on_a_machine_without_one(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    done = qorch_run("examples/three-stage-dag.yaml", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "subtask 'train' asks for 1 GPU(s) and this machine has 0" in done.stderr
