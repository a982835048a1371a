"""Fidelity and classical-simulation models: the analytic success estimate, the fidelity
labels, the ONNX export and its metadata, the family split, and bench/measure_aer.py."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from qiskit import QuantumCircuit

from qorch.predictor.calibration import (
    BackendCalibration,
    CalibrationDay,
    CalibrationError,
    backend_for_day,
    estimated_success,
    idle_survival,
    load_calibration_days,
    transpile_for,
)
from qorch.predictor.catalogue import (
    BACKEND_FEATURES,
    META_FEATURES,
    META_HELDOUT_ERROR,
    META_HELDOUT_METRIC,
    META_MODEL,
    META_OUTPUT,
    META_SOURCES,
    META_SPLIT,
    META_TARGET,
    META_TRAINED_AT,
    MODELS,
)
from qorch.predictor.training import classical, fidelity
from qorch.predictor.training.common import export, run_onnx

REPO = Path(__file__).resolve().parents[2]
TRACES = Path(os.environ.get("QORCH_TRACES", REPO.parent / "shared" / "data"))
PERTH = TRACES / fidelity.CALIBRATION_DIR
NS = 1e-9


def tiny_calibration() -> BackendCalibration:
    return BackendCalibration(
        num_qubits=2,
        t1_s=(100e-6, 50e-6),
        t2_s=(80e-6, 120e-6),  # qubit 1: T2 > 2 T1 is capped at 100 us
        readout_error=(0.02, 0.03),
        gate_error={("sx", (0,)): 0.001, ("sx", (1,)): 0.002, ("cx", (0, 1)): 0.01},
        gate_duration_s={("sx", (0,)): 35 * NS, ("sx", (1,)): 35 * NS, ("cx", (0, 1)): 300 * NS},
        dt_s=0.5 * NS,
    )


def test_estimated_success_is_the_hand_computed_product() -> None:
    qc = QuantumCircuit(2, 2)
    qc.sx(1)  # q1 starts at 0, ends at 35 ns
    qc.sx(0)
    qc.sx(0)  # q0 ends at 70 ns
    qc.cx(0, 1)  # starts at 70 ns: q1 waited 35 ns
    qc.delay(200, 0, unit="dt")  # 100 ns on q0
    qc.barrier()  # q1 waits for q0: 100 ns
    qc.measure([0, 1], [0, 1])
    gates = (1 - 0.002) * (1 - 0.001) ** 2 * (1 - 0.01)
    readout = (1 - 0.02) * (1 - 0.03)

    def idle(t: float, t1: float, t2: float) -> float:
        return (1 + math.exp(-t / t1) + 2 * math.exp(-t / t2)) / 4

    waits = idle(35 * NS, 50e-6, 100e-6) * idle(100 * NS, 100e-6, 80e-6)
    waits *= idle(100 * NS, 50e-6, 100e-6)
    expected = gates * readout * waits
    assert estimated_success(qc, tiny_calibration()) == pytest.approx(expected, rel=1e-12)
    assert idle_survival(0.0, 1e-4, 1e-4) == 1.0


def test_estimated_success_ignores_time_in_ground_state_and_unknown_gates() -> None:
    qc = QuantumCircuit(2, 1)
    qc.delay(1000, 1, unit="dt")  # q1 has not started: |0> does not decay
    qc.rz(0.3, 0)  # not calibrated: no error, no duration
    qc.measure(0, 0)
    assert estimated_success(qc, tiny_calibration()) == pytest.approx(1 - 0.02)


def test_estimated_success_from_a_target_matches_its_calibration() -> None:
    from qiskit_ibm_runtime.fake_provider import FakePerth

    target = FakePerth().target
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    qc.measure_all()
    isa = transpile_for(qc, target)
    direct = estimated_success(isa, target)
    assert direct == estimated_success(isa, BackendCalibration.from_target(target))
    assert 0.5 < direct < 1.0
    feats = BackendCalibration.from_target(target).features()
    assert set(feats) == set(BACKEND_FEATURES) - {"estimated_success"}
    assert feats["backend_qubits"] == 7


def test_an_ideal_simulation_has_fidelity_one() -> None:
    from qiskit_aer.noise import NoiseModel
    from qiskit_ibm_runtime.fake_provider import FakePerth

    backend = FakePerth()
    day = a_day("ibm_perth")
    labeller = fidelity.DayLabeller(
        day, backend, BackendCalibration.from_target(backend.target), NoiseModel(), {}, "none"
    )
    circuits = fidelity.benchmark_circuits(quick=True)
    rows = labeller.label(circuits)
    assert {r["family"] for r in rows} >= {"ghz", "bv", "random", "hea", "mirror"}
    for row in rows:
        assert row["success"] == pytest.approx(1.0, abs=1e-9), row["circuit"]
        assert row["state_fidelity"] == pytest.approx(1.0, abs=1e-9), row["circuit"]
        assert set(fidelity.FEATURES) <= set(row)


def test_hellinger_fidelity() -> None:
    assert fidelity.hellinger_fidelity({"00": 0.5, "11": 0.5}, {"00": 0.5, "11": 0.5}) == 1.0
    assert fidelity.hellinger_fidelity({"0": 0.9, "1": 0.1}, {"0": 1.0}) == pytest.approx(0.9)
    assert fidelity.hellinger_fidelity({"0": 1.0}, {"1": 1.0}) == 0.0


def synthetic_fidelity_rows(n: int = 300) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {f: float(rng.uniform(1, 10)) for f in fidelity.FEATURES}
        est = float(rng.uniform(0.3, 0.99))
        row["estimated_success"] = est
        row["success"] = min(0.999, est + 0.05 * row["num_qubits"] / 10)
        row |= {"day": f"2023-01-{1 + i % 28:02d}", "circuit": f"c{i % 10}", "family": "f"}
        rows.append(row)
    return rows


def check_metadata(onx: Any, model: str, target: str, features: tuple[str, ...]) -> None:
    meta = {p.key: p.value for p in onx.metadata_props}
    for key in (
        META_MODEL,
        META_OUTPUT,
        META_FEATURES,
        META_TARGET,
        META_HELDOUT_METRIC,
        META_HELDOUT_ERROR,
        META_SPLIT,
        META_TRAINED_AT,
        META_SOURCES,
    ):
        assert meta.get(key), key
    assert meta[META_MODEL] == model and meta[META_OUTPUT] in MODELS[model]
    assert meta[META_TARGET] == target
    assert json.loads(meta[META_FEATURES]) == list(features)
    float(meta[META_HELDOUT_ERROR])
    dt.datetime.fromisoformat(meta[META_TRAINED_AT])
    (inp,) = onx.graph.input
    assert inp.type.tensor_type.shape.dim[1].dim_value == len(features)


def test_fidelity_export_agrees_with_the_native_model(tmp_path: Path) -> None:
    rows = synthetic_fidelity_rows()
    model = fidelity.FidelityModel.fit(rows)
    trained = model.trained_model(0.01, fidelity.SPLIT_EVERY_4TH)
    x, _ = fidelity.matrix(rows)
    x[0, fidelity.ESTIMATE_COLUMN] = 1.0  # clipped the same way on both sides
    served = run_onnx(trained.onnx_model("value"), x)
    assert np.max(np.abs(model.predict_logit(x) - served)) < 1e-3
    assert trained.max_onnx_difference(x)["value"] < 1e-3
    (path,) = export(trained, tmp_path)
    assert path.name == "fidelity.onnx"
    check_metadata(onnx.load(str(path)), "fidelity", "logit", fidelity.FEATURES)


def synthetic_measurements() -> classical.Measurements:
    rng = np.random.default_rng(5)
    fams, xs, secs, mems = [], [], [], []
    for i in range(80):
        n = int(rng.integers(4, 26))
        mps = float(i % 3 == 0)
        gates = float(rng.integers(5, 400))
        row = {f: 1.0 for f in classical.FEATURES}
        row |= {
            "num_qubits": n,
            "one_qubit_gates": gates / 2,
            "two_qubit_gates": gates / 2,
            "depth": gates / n,
            "shots": float(rng.choice([100, 1000])),
            "method_mps": mps,
            "device_gpu": 0.0,
        }
        fams.append(f"fam{i % 4}")
        xs.append([row[f] for f in classical.FEATURES])
        secs.append(math.log(0.05 + gates * 2.0**n * 1e-9))
        mems.append(math.log(2e8 + (0 if mps else 16 * 2.0**n)))
    return classical.Measurements(tuple(fams), np.asarray(xs), np.asarray(secs), np.asarray(mems))


@pytest.mark.parametrize("trees", [False, True], ids=["analytic", "trees"])
@pytest.mark.parametrize("target", ["time", "memory"])
def test_classical_export_agrees_with_the_native_model(target: str, trees: bool) -> None:
    m = synthetic_measurements()
    fitted = classical.fit_target(m, target, trees=trees)
    assert (fitted.trees is not None) == trees
    trained = classical.trained_model(fitted, target, 0.1)
    onx = trained.onnx_model("value")
    assert np.max(np.abs(fitted.predict(m) - run_onnx(onx, m.x))) < 1e-3
    check_metadata(onx, f"classical_{target}", "log", classical.FEATURES)
    wide = m.subset(np.arange(len(m.families)) < 3)
    wide.x[:, classical.FEATURES.index("num_qubits")] = 200.0  # no overflow to inf or NaN
    assert np.all(np.isfinite(run_onnx(onx, wide.x)))


def test_the_family_split_never_shares_a_family() -> None:
    families = ("ghz", "qft", "ghz", "hea", "qft", "random", "hea")
    folds = classical.family_folds(families)
    assert sorted(f for f, _, _ in folds) == ["ghz", "hea", "qft", "random"]
    for fam, train, test in folds:
        train_fams = {f for f, keep in zip(families, train, strict=True) if keep}
        test_fams = {f for f, keep in zip(families, test, strict=True) if keep}
        assert test_fams == {fam} and fam not in train_fams
        assert not train_fams & test_fams
        assert bool(np.all(train | test))
    cv = classical.cross_validate(synthetic_measurements(), "time")
    assert np.all(np.isfinite(cv.model))


def test_day_splits_never_share_a_day() -> None:
    days = [f"2023-01-{d:02d}" for d in range(1, 29)]
    for how in (fidelity.SPLIT_EVERY_4TH, fidelity.SPLIT_TIME):
        train, test = fidelity.split_days(days, how)
        assert train and test and not train & test and train | test == set(days)
    _, late = fidelity.split_days(days, fidelity.SPLIT_TIME)
    assert min(late) > max(set(days) - late)


def test_measure_aer_quick_writes_a_valid_csv(tmp_path: Path) -> None:
    out = tmp_path / "aer.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "measure_aer.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# Aer on CPU") and "nproc=" in text
    m = classical.read_measurements(out)
    assert len(m.families) == 2
    assert set(m.col("method_mps")) == {0.0, 1.0}
    assert np.all(np.exp(m.log_bytes) > 50 * 2**20)  # an interpreter with qiskit loaded


def a_day(backend_name: str) -> CalibrationDay:
    when = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
    return CalibrationDay(Path("2023-01-01.json"), when.date(), backend_name, "1", when, (), (), {})


def test_a_calibration_day_of_another_device_is_refused_naming_the_file() -> None:
    with pytest.raises(CalibrationError, match=r"2023-01-01\.json: no fake backend for 'ibm_x'"):
        backend_for_day(a_day("ibm_x"))
    bad = a_day("ibm_perth")
    with pytest.raises(CalibrationError, match=r"2023-01-01\.json: not usable as ibm_perth"):
        backend_for_day(bad)


@pytest.mark.skipif(not PERTH.is_dir(), reason=f"no calibration trace at {PERTH}")
def test_calibration_days_load_as_fake_perth() -> None:
    days = load_calibration_days(PERTH)
    assert len(days) >= 100 and [d.day for d in days] == sorted(d.day for d in days)
    backend = backend_for_day(days[0])
    cal = BackendCalibration.from_target(backend.target)
    feats = cal.features()
    assert feats["backend_qubits"] == 7
    assert 1 < feats["median_t1_us"] < 1000
    assert 0 < feats["median_two_qubit_error"] < 0.1
    other = BackendCalibration.from_target(backend_for_day(days[45]).target)
    assert other.t1_s != cal.t1_s  # the day's properties, not FakePerth's own
