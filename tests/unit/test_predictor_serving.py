"""Serving the predictor: model files validated and hot-reloaded, the analytic fallback
taking over for a missing, bad or failing model (with a reason, never an exception),
quantiles that never cross, batch = row by row, and the USD arithmetic.

Models here are tiny ONNX graphs written with ``onnx.helper`` (y = x @ w + b), so every
expected value can be computed by hand.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qorch.orchestrator.prediction import Prediction
from qorch.orchestrator.simulation import statevector_bytes
from qorch.predictor.analytic import AnalyticConfig, simulation_memory_bytes
from qorch.predictor.catalogue import (
    ALL_FEATURES,
    META_FEATURES,
    META_HELDOUT_ERROR,
    META_HELDOUT_METRIC,
    META_MODEL,
    META_OUTPUT,
    META_TARGET,
    MODELS,
)
from qorch.predictor.features import (
    PAIR_FEATURES,
    RESOURCE_FEATURES,
    SUBTASK_FEATURES,
    BackendInput,
    CalibrationMedians,
    CircuitCache,
    CircuitCounts,
    FeatureBuilder,
    ParsedCircuit,
    PoolInput,
    PredictionContext,
    QueueHistory,
    SubtaskInput,
    SuccessCache,
)
from qorch.predictor.models import LoadedModel, ModelInfo, ModelStore, graph_reads, load_model
from qorch.predictor.service import Predictor

NOW = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


# ---- helpers --------------------------------------------------------------------------------


def onnx_bytes(
    model: str,
    output: str,
    features: Sequence[str],
    *,
    weights: Sequence[float] | None = None,
    bias: float = 0.0,
    target: str = "identity",
    heldout: float | str = 0.1,
    input_width: int | None = None,
    drop: Sequence[str] = (),
    meta: dict[str, str] | None = None,
) -> bytes:
    """A linear model y = x @ weights + bias, output [N, 1], with the catalogue's metadata."""
    from onnx import TensorProto, helper, numpy_helper

    width = len(features) if input_width is None else input_width
    w = np.zeros((width, 1), dtype=np.float32)
    if weights is not None:
        w[: len(weights), 0] = weights
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["variable"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
        ],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onx.ir_version = 8
    props = {
        META_MODEL: model,
        META_OUTPUT: output,
        META_FEATURES: json.dumps(list(features)),
        META_TARGET: target,
        META_HELDOUT_METRIC: "median_relative_error",
        META_HELDOUT_ERROR: str(heldout),
        **(meta or {}),
    }
    for key, value in props.items():
        if key not in drop:
            p = onx.metadata_props.add()
            p.key, p.value = key, value
    return bytes(onx.SerializeToString())


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    # Distinct mtimes even on coarse clocks: the store notices a rewrite by stat first.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return path


def counts(n: int, depth: int = 10, two: int = 20, one: int = 30, meas: int | None = None) -> Any:
    return CircuitCounts(n, depth, two, one, n if meas is None else meas)


def subtask(name: str, n: int = 5, shots: int = 1000, **kw: Any) -> SubtaskInput:
    return SubtaskInput(name, ParsedCircuit(f"key-{name}", counts(n, **kw)), shots)


def backend(
    name: str,
    qubits: int = 27,
    price: float = 1.6,
    queue: float = 10.0,
    service: float | None = 0.0,
) -> BackendInput:
    """``service``: seconds a job ahead holds the device (0: no queue-length term, so the
    figures here are the models' own; None: not known, the analytic figure is a floor)."""
    return BackendInput(
        name,
        qubits,
        price,
        CalibrationMedians(0.01, 0.02, 3e-4, 150.0, 110.0, day="2026-01-05"),
        QueueHistory(queue, queue, queue * 2, queue - 1, (30.0, 60.0, 90.0)),
        service_seconds=service,
    )


def pool(name: str, gpu: bool = False, price_h: float = 0.36) -> PoolInput:
    return PoolInput(name, gpu, max_qubits=28, cpu_cores=4.0, price_per_hour_usd=price_h)


def context(
    subtasks: Sequence[SubtaskInput] = (),
    backends: Sequence[BackendInput] = (),
    pools: Sequence[PoolInput] = (),
) -> PredictionContext:
    return PredictionContext.of(
        subtasks or [subtask("a", 5), subtask("b", 12, shots=4000, two=80)],
        backends or [backend("q1"), backend("q2", 127, price=2.0, queue=50)],
        pools or [pool("cpu"), pool("gpu", gpu=True, price_h=2.5)],
        NOW,
    )


def all_pairs(ctx: PredictionContext) -> list[tuple[str, str]]:
    return [(s, r) for s in ctx.subtasks for r in [*ctx.backends, *ctx.pools]]


def full_set(directory: Path, heldout: float = 0.1) -> None:
    """A model for every output: each reads a few features (so rows differ by pair)."""
    spec: dict[str, tuple[Sequence[str], Sequence[float], float, str]] = {
        "qpu_runtime": (("shots", "circuits", "two_qubit_gates"), (0.001, 1.0, 0.01), 1.0, "log"),
        "fidelity": (("estimated_success", "depth"), (2.0, -0.01), 0.5, "logit"),
        "classical_time": (("num_qubits", "device_gpu", "cpu_cores"), (0.2, -1, -0.1), 0, "log"),
        "classical_memory": (("num_qubits",), (0.69,), 3.0, "log"),
    }  # fmt: skip
    for model, (features, weights, bias, target) in spec.items():
        data = onnx_bytes(
            model, "value", features, weights=weights, bias=bias, target=target, heldout=heldout
        )
        write(directory, f"{model}.onnx", data)
    q = ("queue_length", "recent_wait_p50_s", "num_qubits")
    for output, bias in (("p10", 1.0), ("p50", 2.0), ("p90", 3.0)):
        data = onnx_bytes(
            "queue_wait", output, q, weights=(0.01, 0.001, 0.02), bias=bias, target="log",
            heldout=heldout,
        )  # fmt: skip
        write(directory, f"queue_wait_{output}.onnx", data)


def store_for(directory: Path) -> ModelStore:
    store = ModelStore(directory)
    store.refresh()
    return store


def sources(preds: Iterable[Prediction]) -> set[str]:
    return {p.source for p in preds}


# ---- the vocabulary ------------------------------------------------------------------------


def test_every_catalogue_feature_has_one_home() -> None:
    homes = (*SUBTASK_FEATURES, *RESOURCE_FEATURES, *PAIR_FEATURES)
    assert sorted(homes) == sorted(ALL_FEATURES) and len(set(homes)) == len(homes)


def test_a_model_reads_its_features_in_its_own_order(tmp_path: Path) -> None:
    # y = shots (weight 1 on the second column): any mix-up of the columns shows.
    features = ("num_qubits", "shots", "backend_qubits", "recent_wait_count")
    write(
        tmp_path, "qpu_runtime.onnx", onnx_bytes("qpu_runtime", "value", features, weights=(0, 1))
    )
    ctx = context()
    preds = Predictor(store_for(tmp_path)).predict([("b", "q1"), ("a", "q2")], ctx)
    assert [p.run_seconds for p in preds] == [4000.0, 1000.0]
    assert all("qpu_runtime" not in " ".join(p.notes) for p in preds)


def test_history_features_follow_training() -> None:
    history = pytest.importorskip("qorch.predictor.training.history")
    rng = np.random.default_rng(3)
    for size in (0, 1, 2, 7, 20, 31):
        waits = rng.exponential(500.0, size=size)
        starts = np.arange(size, dtype=np.float64)
        expected = history.recent_wait(starts, waits, float(size) + 1.0)
        got = QueueHistory(recent_waits_s=tuple(waits)).features()[4:]
        assert got == pytest.approx(expected), size
    assert history.calendar(NOW) == (14.0, 0.0)


def test_circuit_counts_follow_training() -> None:
    classical = pytest.importorskip("qorch.predictor.training.classical")
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(4)
    qc.h(0)
    qc.ccx(0, 1, 2)  # decomposed: counts as its two-qubit gates
    qc.cx(2, 3)
    qc.barrier()
    qc.measure_all()
    parsed = ParsedCircuit.of(qc)
    assert parsed.counts is not None
    expected = classical.circuit_features(qc, 100)
    c = parsed.counts
    assert (c.num_qubits, c.depth, c.two_qubit_gates, c.one_qubit_gates, c.measurements) == (
        expected["num_qubits"],
        expected["depth"],
        expected["two_qubit_gates"],
        expected["one_qubit_gates"],
        expected["measurements"],
    )


def test_circuit_cache_parses_once_and_reports_errors() -> None:
    cache = CircuitCache()
    source = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\nc = measure q;\n'  # noqa: E501
    first = cache.parse(source)
    assert cache.parse(source) is first and len(cache) == 1
    assert first.counts == CircuitCounts(2, 3, 1, 1, 2)
    bad = cache.parse("OPENQASM 3.0;\nqubit[2] q;\nfoo q[0];\n")
    assert bad.counts is None and bad.error
    preds = Predictor().predict(
        [("bad", "q1")],
        PredictionContext.of([SubtaskInput("bad", bad, 100)], [backend("q1")], [], NOW),
    )
    assert not preds[0].feasible and "did not parse" in preds[0].notes[0]


# ---- files turned away: fallback with a reason, no exception -----------------------------


def test_corrupt_file_is_rejected_and_the_analytic_model_answers(tmp_path: Path) -> None:
    good = onnx_bytes("qpu_runtime", "value", ("shots",), weights=(1.0,))
    write(tmp_path, "qpu_runtime.onnx", good[: len(good) // 2])  # truncated
    write(tmp_path, "fidelity.onnx", b"\x00garbage, not a protobuf\xff" * 10)
    store = store_for(tmp_path)
    state = store.state()
    reasons = {Path(r.path).name: r.reason for r in state.rejected}
    assert set(reasons) == {"qpu_runtime.onnx", "fidelity.onnx"}
    assert all("not a loadable ONNX model" in r for r in reasons.values())
    assert "qpu_runtime/value" in state.missing and not state.loaded and not state.complete
    preds = Predictor(store).predict([("a", "q1")], context())
    (p,) = preds
    assert p.source == "analytic" and p.feasible
    assert p.run_seconds == pytest.approx(2.6 + 3.2e-4 * 1000)
    assert any("qpu_runtime: analytic (qpu_runtime.onnx rejected" in n for n in p.notes)


def test_an_oversized_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qorch.predictor.models as models_mod

    good = onnx_bytes("qpu_runtime", "value", ("shots",), weights=(1.0,))
    write(tmp_path, "qpu_runtime.onnx", good)
    monkeypatch.setattr(models_mod, "MAX_MODEL_BYTES", len(good) - 1)
    store = models_mod.ModelStore(tmp_path)
    (change,) = store.refresh()
    assert change.kind == "rejected" and "not read" in change.message
    assert store.model("qpu_runtime", "value") is None
    assert store.refresh() == ()  # said once, not on every scan


def test_missing_files_fall_back_with_a_reason(tmp_path: Path) -> None:
    store = store_for(tmp_path / "nowhere")
    assert "does not exist" in store.state().summary()
    predictor = Predictor(store)
    preds = predictor.predict(all_pairs(context()), context())
    assert sources(preds) == {"analytic"}
    assert predictor.last_report is not None
    assert {u.key for u in predictor.last_report.fallbacks} == {
        f"{m}/{o}" for m, outs in MODELS.items() for o in outs
    }
    store = store_for(tmp_path)  # exists, empty
    assert "no model file for queue_wait/p50" in store.why_missing("queue_wait", "p50")


def test_wrong_input_width_is_rejected(tmp_path: Path) -> None:
    data = onnx_bytes("qpu_runtime", "value", ("shots", "circuits"), input_width=3)
    write(tmp_path, "qpu_runtime.onnx", data)
    (rejection,) = store_for(tmp_path).state().rejected
    assert "has 3 columns but qorch.features lists 2 features" in rejection.reason


@pytest.mark.parametrize(
    ("name", "kwargs", "reason"),
    [
        ("qpu_runtime.onnx", {"drop": (META_TARGET,)}, "metadata_props lacks qorch.target"),
        ("x.onnx", {"meta": {META_MODEL: "teleporter"}}, "is not a model of the catalogue"),
        ("qpu_runtime.onnx", {"meta": {META_OUTPUT: "p99"}}, "qpu_runtime has outputs"),
        ("qpu_runtime.onnx", {"meta": {META_FEATURES: '["shots", "mood"]'}}, "'mood'"),
        ("qpu_runtime.onnx", {"meta": {META_FEATURES: "shots"}}, "is not JSON"),
        ("qpu_runtime.onnx", {"target": "sqrt"}, "qorch.target='sqrt'"),
        ("qpu_runtime.onnx", {"heldout": "nan"}, "expected a finite number"),
        ("queue_wait_p50.onnx", {}, "name it qpu_runtime_value.onnx"),
    ],
)
def test_wrong_metadata_is_rejected(
    tmp_path: Path, name: str, kwargs: dict[str, Any], reason: str
) -> None:
    write(tmp_path, name, onnx_bytes("qpu_runtime", "value", ("shots", "mood")[:1], **kwargs))
    store = store_for(tmp_path)
    (rejection,) = store.state().rejected
    assert reason in rejection.reason
    assert store.model("qpu_runtime", "value") is None
    (p,) = Predictor(store).predict([("a", "q1")], context())
    assert p.source == "analytic"


def test_a_model_that_fails_at_run_time_falls_back_for_that_pass(tmp_path: Path) -> None:
    class Exploding:
        info = ModelInfo("fidelity", "value", "x", "", ("depth",), "identity", "mae", 0.1)

        def run(self, x: Any) -> Any:
            raise RuntimeError("device lost")

    class Source:
        def model(self, name: str, output: str) -> Any:
            return Exploding() if name == "fidelity" else None

        def why_missing(self, name: str, output: str) -> str:
            return "not in this test"

    predictor = Predictor(Source())
    preds = predictor.predict(all_pairs(context()), context())
    qpu = [p for p in preds if p.kind == "qpu"]
    assert qpu and all(any("device lost" in n for n in p.notes) for p in qpu)
    assert all(0.0 < p.fidelity <= 1.0 for p in qpu)  # the estimated success instead
    assert predictor.last_report is not None
    (use,) = [u for u in predictor.last_report.outputs if u.model == "fidelity"]
    assert use.source == "analytic" and "RuntimeError: device lost" in use.reason


def test_non_finite_outputs_fall_back_row_by_row(tmp_path: Path) -> None:
    # log target: exp(shots) overflows for shots = 4000 but not for shots = 0.5.
    data = onnx_bytes("qpu_runtime", "value", ("shots",), weights=(1.0,), target="log")
    write(tmp_path, "qpu_runtime.onnx", data)
    ctx = context([subtask("small", shots=1), subtask("big", shots=4000)])
    small, big = Predictor(store_for(tmp_path)).predict([("small", "q1"), ("big", "q1")], ctx)
    assert small.run_seconds == pytest.approx(math.e, rel=1e-6)
    assert not any("qpu_runtime" in n for n in small.notes)
    assert big.run_seconds == pytest.approx(2.6 + 3.2e-4 * 4000)
    assert any("non-finite" in n for n in big.notes) and big.source == "analytic"


def test_bad_pairs_are_infeasible_not_errors() -> None:
    ctx = context([subtask("wide", 40), subtask("a")], [backend("q1", 27)], [pool("cpu")])
    preds = Predictor().predict(
        [("nope", "q1"), ("a", "nowhere"), ("wide", "q1"), ("wide", "cpu"), ("a", "cpu")], ctx
    )
    assert [p.feasible for p in preds] == [False, False, False, False, True]
    assert "unknown subtask" in preds[0].notes[0] and "unknown resource" in preds[1].notes[0]
    assert "wider than the resource" in preds[2].notes[0]
    assert math.isinf(preds[2].seconds_p50) and preds[2].fidelity == 0.0
    garbage: Any = [("a",), 42]
    out = Predictor().predict(garbage, ctx)
    assert len(out) == 2 and not any(p.feasible for p in out)
    assert "predictor failed" in out[0].notes[0]
    assert Predictor().predict([], ctx) == []


# ---- hot reload -----------------------------------------------------------------------------


def test_hot_reload_takes_a_better_model_and_refuses_a_worse_one(tmp_path: Path) -> None:
    def runtime(bias: float, heldout: float) -> bytes:
        return onnx_bytes("qpu_runtime", "value", ("shots",), bias=bias, heldout=heldout)

    write(tmp_path, "qpu_runtime.onnx", runtime(10.0, 0.20))
    store = store_for(tmp_path)
    predictor = Predictor(store)
    assert predictor.predict([("a", "q1")], context())[0].run_seconds == 10.0
    assert store.refresh() == ()  # nothing changed

    write(tmp_path, "qpu_runtime.onnx", runtime(20.0, 0.10))  # better
    (change,) = store.refresh()
    assert change.kind == "replaced" and "was 0.2" in change.message
    assert predictor.predict([("a", "q1")], context())[0].run_seconds == 20.0

    write(tmp_path, "qpu_runtime.onnx", runtime(30.0, 0.15))  # worse than the serving 0.10
    (change,) = store.refresh()
    assert change.kind == "refused" and "worse than 0.1" in change.message
    assert predictor.predict([("a", "q1")], context())[0].run_seconds == 20.0
    (rejection,) = store.state().rejected
    assert "keeping the serving model" in rejection.reason
    assert [i.heldout_error for i in store.state().loaded] == [0.10]

    # A second file for the same output: the better one wins, whatever its name.
    write(tmp_path, "qpu_runtime_value.onnx", runtime(40.0, 0.05))
    kinds = sorted(c.kind for c in store.refresh())
    assert kinds == ["replaced"]
    assert predictor.predict([("a", "q1")], context())[0].run_seconds == 40.0


def test_a_corrupt_replacement_keeps_the_serving_model(tmp_path: Path) -> None:
    write(tmp_path, "qpu_runtime.onnx", onnx_bytes("qpu_runtime", "value", ("shots",), bias=7.0))
    store = store_for(tmp_path)
    write(tmp_path, "qpu_runtime.onnx", b"half a file")
    (change,) = store.refresh()
    assert change.kind == "rejected" and "still serving qpu_runtime.onnx" in change.message
    assert Predictor(store).predict([("a", "q1")], context())[0].run_seconds == 7.0


def test_removing_a_file_unloads_it_and_a_refused_one_takes_over(tmp_path: Path) -> None:
    good = onnx_bytes("qpu_runtime", "value", ("shots",), bias=5.0, heldout=0.1)
    worse = onnx_bytes("qpu_runtime", "value", ("shots",), bias=6.0, heldout=0.3)
    write(tmp_path, "qpu_runtime.onnx", good)
    write(tmp_path, "qpu_runtime_value.onnx", worse)
    store = store_for(tmp_path)
    assert store.state().loaded[0].path.endswith("qpu_runtime.onnx")
    (tmp_path / "qpu_runtime.onnx").unlink()
    kinds = [c.kind for c in store.refresh()]
    assert kinds == ["removed", "loaded"]
    assert Predictor(store).predict([("a", "q1")], context())[0].run_seconds == 6.0
    (tmp_path / "qpu_runtime_value.onnx").unlink()
    assert [c.kind for c in store.refresh()] == ["removed"]
    assert store.model("qpu_runtime", "value") is None


# ---- what the orchestrator gets --------------------------------------------------------------


def test_quantiles_never_cross_even_when_the_models_do(tmp_path: Path) -> None:
    # P10 model says 500 s, P50 100 s, P90 300 s: crossed on every row.
    for output, value in (("p10", 500.0), ("p50", 100.0), ("p90", 300.0)):
        data = onnx_bytes("queue_wait", output, ("queue_length",), bias=value)
        write(tmp_path, f"queue_wait_{output}.onnx", data)
    preds = Predictor(store_for(tmp_path)).predict(all_pairs(context()), context())
    for p in preds:
        assert p.seconds_p10 <= p.seconds_p50 <= p.seconds_p90
        assert p.queue_seconds_p10 <= p.queue_seconds_p50 <= p.queue_seconds_p90
        if p.kind == "qpu":
            assert (p.queue_seconds_p10, p.queue_seconds_p50, p.queue_seconds_p90) == (
                100.0,
                300.0,
                500.0,
            )
            assert p.seconds_p50 == pytest.approx(300.0 + p.run_seconds)


def test_the_live_queue_sets_the_median_wait_where_the_service_time_is_known(
    tmp_path: Path,
) -> None:
    for output, value in (("p10", 10.0), ("p50", 20.0), ("p90", 40.0)):
        data = onnx_bytes("queue_wait", output, ("queue_length",), bias=value)
        write(tmp_path, f"queue_wait_{output}.onnx", data)
    ctx = context(
        backends=[
            backend("q1", queue=0.0, service=60.0),
            backend("q2", queue=50.0, service=60.0),
            backend("q3", queue=50.0, service=0.1),
            backend("q4", queue=50.0, service=None),
            backend("q5", queue=0.0, service=None),
        ]
    )
    preds = {
        (p.subtask, p.resource): p
        for p in Predictor(store_for(tmp_path)).predict(all_pairs(ctx), ctx)
    }
    idle, busy, fast = preds["a", "q1"], preds["a", "q2"], preds["a", "q3"]
    unknown, unknown_idle = preds["a", "q4"], preds["a", "q5"]
    # An empty queue whose service time is known: no wait expected; the model's spread
    # above its median is kept.
    assert (idle.queue_seconds_p10, idle.queue_seconds_p50, idle.queue_seconds_p90) == (
        0.0, 0.0, 20.0,
    )  # fmt: skip
    # 50 jobs of 60 s ahead: the median is 3,000 s, the interval shifted with it.
    assert (busy.queue_seconds_p10, busy.queue_seconds_p50, busy.queue_seconds_p90) == (
        pytest.approx(2990.0), pytest.approx(3000.0), pytest.approx(3020.0),
    )  # fmt: skip
    # 50 jobs of 0.1 s ahead: 5 s, though the model's recent waits say 20 (they lag).
    assert fast.queue_seconds_p50 == pytest.approx(5.0)
    # Service time not known: the analytic figure per job ahead is a floor only.
    per_job = Predictor(None).analytic.service_seconds_per_job
    assert unknown.queue_seconds_p50 == pytest.approx(50 * per_job)
    assert (unknown_idle.queue_seconds_p10, unknown_idle.queue_seconds_p50) == (10.0, 20.0)


def test_batch_predictions_equal_row_by_row(tmp_path: Path) -> None:
    full_set(tmp_path)
    ctx = context(
        [subtask(f"s{i}", 3 + i, shots=500 * (i + 1), two=7 * i) for i in range(6)],
        [backend("q1"), backend("q2", 127, queue=3), backend("q3", 5)],
        [pool("cpu"), pool("gpu", gpu=True)],
    )
    pairs = all_pairs(ctx)
    batch_predictor = Predictor(store_for(tmp_path))
    batch = batch_predictor.predict(pairs, ctx)
    assert sources(p for p in batch if p.feasible) == {"model"}
    single_predictor = Predictor(store_for(tmp_path))
    for pair, expected in zip(pairs, batch, strict=True):
        (one,) = single_predictor.predict([pair], ctx)
        assert one[4:14] == pytest.approx(expected[4:14], rel=1e-6)  # the figures
        assert one[:4] + one[14:] == expected[:4] + expected[14:]  # names, source, notes
    again = batch_predictor.predict(pairs, ctx)  # from the remembered rows
    assert again == batch
    concurrent = Predictor(store_for(tmp_path), workers=3).predict(pairs, ctx)
    assert concurrent == batch
    assert batch_predictor.last_report is not None
    assert all(u.rows_run == 0 for u in batch_predictor.last_report.outputs)


def test_only_changed_rows_run_again(tmp_path: Path) -> None:
    full_set(tmp_path)
    ctx = context()
    predictor = Predictor(store_for(tmp_path))
    predictor.predict(all_pairs(ctx), ctx)
    moved = dict(ctx.backends)
    moved["q1"] = backend("q1", queue=99.0)
    ctx2 = PredictionContext(ctx.subtasks, moved, ctx.pools, ctx.now)
    predictor.predict(all_pairs(ctx2), ctx2)
    assert predictor.last_report is not None
    run = {u.key: u.rows_run for u in predictor.last_report.outputs}
    # Queue models read the queue length: q1's two pairs run again; nothing else does.
    assert run == {
        "qpu_runtime/value": 0,
        "queue_wait/p10": 2,
        "queue_wait/p50": 2,
        "queue_wait/p90": 2,
        "fidelity/value": 0,
        "classical_time/value": 0,
        "classical_memory/value": 0,
    }


def test_rows_with_equal_features_run_once(tmp_path: Path) -> None:
    full_set(tmp_path)
    twins = [subtask(f"t{i}", 6, shots=1000) for i in range(5)]  # identical circuits
    ctx = context(twins, [backend("q1"), backend("q2")], [pool("cpu")])
    predictor = Predictor(store_for(tmp_path))
    predictor.predict(all_pairs(ctx), ctx)
    assert predictor.last_report is not None
    rows = {u.key: u.rows for u in predictor.last_report.outputs}
    assert rows["qpu_runtime/value"] == 1  # reads circuit features only
    assert rows["queue_wait/p50"] == 2  # one per backend
    assert rows["fidelity/value"] == 10  # per pair: the success is per (circuit, backend)


def test_usd_is_qpu_seconds_times_price_or_wall_seconds_times_hourly_price() -> None:
    ctx = context(
        [subtask("a", 5, shots=1000)],
        [backend("q1", price=1.6)],
        [pool("cpu", price_h=0.36), pool("gpu", gpu=True, price_h=3.6)],
    )
    q, cpu, gpu = Predictor().predict([("a", "q1"), ("a", "cpu"), ("a", "gpu")], ctx)
    assert q.run_seconds == pytest.approx(2.6 + 0.32)
    assert q.usd == pytest.approx(q.run_seconds * 1.6)  # the queue wait is not billed
    assert q.seconds_p50 == pytest.approx(q.queue_seconds_p50 + q.run_seconds)
    assert q.queue_seconds_p50 == pytest.approx(10 * 66.0)
    assert cpu.usd == pytest.approx(cpu.run_seconds * 0.36 / 3600)
    assert gpu.usd == pytest.approx(gpu.run_seconds * 3.6 / 3600)
    assert cpu.queue_seconds_p90 == 0.0 and cpu.seconds_p10 == cpu.run_seconds


@pytest.mark.parametrize("n", [1, 5, 20, 28])
def test_analytic_memory_is_16_times_2_to_the_n(n: int) -> None:
    assert simulation_memory_bytes(np.array([float(n)]))[0] == 16 * 2**n == statevector_bytes(n)
    ctx = context([subtask("a", n)], [backend("q1", 127)], [pool("cpu")])
    (p,) = Predictor().predict([("a", "cpu")], ctx)
    assert p.peak_memory_bytes == 16 * 2**n and p.source == "analytic"


def test_analytic_fidelity_is_the_success_estimate() -> None:
    ctx = context([subtask("a", 5, two=20, one=30, meas=5)], [backend("q1")])
    (p,) = Predictor().predict([("a", "q1")], ctx)
    assert p.fidelity == pytest.approx(0.99**20 * (1 - 3e-4) ** 30 * 0.98**5)
    cache = SuccessCache()
    cache.put("key-a", "q1", "2026-01-05", 0.5)
    (p,) = Predictor(features=FeatureBuilder(cache)).predict([("a", "q1")], ctx)
    assert p.fidelity == 0.5
    cache.put("key-a", "q1", "2026-01-06", 0.4)  # another day: the approximation again
    (p,) = Predictor(features=FeatureBuilder(cache)).predict([("a", "q1")], ctx)
    assert p.fidelity == pytest.approx(0.99**20 * (1 - 3e-4) ** 30 * 0.98**5)


def test_analytic_times_grow_with_width_and_shots() -> None:
    cfg = AnalyticConfig()
    ctx = context([subtask("s", 10), subtask("w", 20)], [backend("q1")], [pool("cpu")])
    s, w = Predictor(analytic=cfg).predict([("s", "cpu"), ("w", "cpu")], ctx)
    assert w.run_seconds > s.run_seconds > cfg.simulation_overhead_seconds


def test_memo_survives_a_reload_only_for_the_same_model(tmp_path: Path) -> None:
    write(tmp_path, "qpu_runtime.onnx", onnx_bytes("qpu_runtime", "value", ("shots",), bias=1.0))
    store = store_for(tmp_path)
    predictor = Predictor(store)
    assert predictor.predict([("a", "q1")], context())[0].run_seconds == 1.0
    write(tmp_path, "qpu_runtime.onnx", onnx_bytes("qpu_runtime", "value", ("shots",), bias=2.0))
    store.refresh()
    assert predictor.predict([("a", "q1")], context())[0].run_seconds == 2.0
    model = store.model("qpu_runtime", "value")
    assert isinstance(model, LoadedModel) and model.last_rows_run == 1


def test_the_exact_success_is_computed_once_per_circuit_backend_and_day() -> None:
    from qiskit import QuantumCircuit
    from qiskit.providers.fake_provider import GenericBackendV2

    target = GenericBackendV2(5, seed=1).target
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    qc.measure_all()
    parsed = ParsedCircuit.of(qc)
    cache = SuccessCache()
    value = cache.compute(parsed, "g5", "2026-01-05", target)
    assert value is not None and 0.5 < value < 1.0
    assert cache.get(parsed.key, "g5", "2026-01-05") == value and len(cache) == 1
    ctx = PredictionContext.of([SubtaskInput("ghz", parsed, 100)], [backend("g5", 5)], [], NOW)
    assert ctx.backends["g5"].calibration.day == "2026-01-05"
    (p,) = Predictor(features=FeatureBuilder(cache)).predict([("ghz", "g5")], ctx)
    assert p.fidelity == value
    assert cache.compute(ParsedCircuit("k", None, "bad"), "g5", "2026-01-05", target) is None


def test_inputs_from_the_custom_resources() -> None:
    from qorch.api.backend import (
        CalibrationSummary,
        QuantumBackend,
        QuantumBackendSpec,
        QuantumBackendStatus,
    )
    from qorch.api.workflow import ClassicalPool

    qb = QuantumBackend(
        metadata={"name": "ibm-torino"},
        spec=QuantumBackendSpec(
            provider="fake", backendName="fake_torino", numQubits=133, pricePerQpuSecondUSD=1.6
        ),
        status=QuantumBackendStatus(
            healthy=True,
            queueLength=12,
            calibration=CalibrationSummary(
                medianTwoQubitError=0.008,
                medianReadoutError=0.02,
                medianT1Seconds=1.5e-4,
                medianT2Seconds=1e-4,
                updatedAt="2026-01-05T06:00:00Z",
            ),
        ),
    )
    b = BackendInput.from_resource(qb)
    assert (b.name, b.num_qubits, b.price_per_qpu_second, b.healthy) == (
        "ibm-torino",
        133,
        1.6,
        True,
    )
    assert b.history.queue_length == 12.0
    assert b.calibration == CalibrationMedians(0.008, 0.02, None, 150.0, 100.0, "2026-01-05")
    p = PoolInput.from_pool(ClassicalPool(name="gpu", gpu=True), cpu_cores=8, price_per_hour_usd=3)
    assert (p.name, p.gpu, p.max_qubits, p.cpu_cores, p.price_per_hour_usd) == (
        "gpu",
        True,
        30,
        8,
        3,
    )


# ---- what a graph reads, and the memo's index ----------------------------------------------


def gather_bytes(
    model: str,
    output: str,
    features: Sequence[str],
    columns: Sequence[int],
    *,
    weights: Sequence[float] | None = None,
    bias: float = 0.0,
    indices: str = "int64",
    axis: int | None = 1,
    extra: Sequence[Any] = (),
) -> bytes:
    """y = sum_k w_k * x[:, columns[k]] + bias, the columns taken by ONE Gather along axis 1
    (indices as an int64 or int32 initializer, raw bytes, or a Constant node)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weights or [1.0] * len(columns), dtype=np.float32).reshape(-1, 1)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
    ]
    nodes = []
    if indices == "constant":
        tensor = numpy_helper.from_array(np.asarray(columns, dtype=np.int64), "idx_value")
        nodes.append(helper.make_node("Constant", [], ["idx"], value=tensor))
    elif indices == "raw":
        inits.append(numpy_helper.from_array(np.asarray(columns, dtype=np.int64), "idx"))
    else:
        kind = TensorProto.INT64 if indices == "int64" else TensorProto.INT32
        inits.append(helper.make_tensor("idx", kind, [len(columns)], list(columns)))
    attrs: dict[str, Any] = {} if axis is None else {"axis": axis}
    nodes += [
        helper.make_node("Gather", ["input", "idx"], ["cols"], **attrs),
        helper.make_node("MatMul", ["cols", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["variable"]),
        *extra,
    ]
    graph = helper.make_graph(
        nodes,
        "gathered",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(features)])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        inits,
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onx.ir_version = 8
    props = {
        META_MODEL: model,
        META_OUTPUT: output,
        META_FEATURES: json.dumps(list(features)),
        META_TARGET: "identity",
        META_HELDOUT_METRIC: "median_relative_error",
        META_HELDOUT_ERROR: "0.1",
    }
    for key, value in props.items():
        prop = onx.metadata_props.add()
        prop.key, prop.value = key, value
    return bytes(onx.SerializeToString())


QUEUE_FEATURES = ("num_qubits", "shots", "queue_length", "recent_wait_p50_s")


@pytest.mark.parametrize("indices", ["int64", "int32", "raw", "constant"])
def test_graph_reads_the_gathered_columns(indices: str) -> None:
    data = gather_bytes("queue_wait", "p50", QUEUE_FEATURES, [3, -2], indices=indices)
    assert graph_reads(data, "input", len(QUEUE_FEATURES)) == (2, 3)


def test_graph_reads_all_columns_when_it_cannot_tell() -> None:
    width = len(QUEUE_FEATURES)
    # MatMul on the whole input, a Gather of rows (axis 0, the default), an index out of range
    assert graph_reads(onnx_bytes("queue_wait", "p50", QUEUE_FEATURES), "input", width) is None
    rows = gather_bytes("queue_wait", "p50", QUEUE_FEATURES, [1], axis=None)
    assert graph_reads(rows, "input", width) is None
    assert graph_reads(gather_bytes("queue_wait", "p50", QUEUE_FEATURES, [7]), "input", 4) is None
    # a second consumer of the input (Identity), an op with a subgraph
    from onnx import helper

    other = helper.make_node("Identity", ["input"], ["copy"])
    data = gather_bytes("queue_wait", "p50", QUEUE_FEATURES, [1], extra=[other])
    assert graph_reads(data, "input", width) is None
    branch = helper.make_graph([], "g", [], [])
    sub = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    data = gather_bytes("queue_wait", "p50", QUEUE_FEATURES, [1], extra=[sub])
    assert graph_reads(data, "input", width) is None
    assert graph_reads(b"", "input", width) is None


def test_pairs_equal_on_the_read_features_share_a_row(tmp_path: Path) -> None:
    # The queue models gather only the queue length: one row per backend, however many
    # circuits, and the same figures as a model that reads the columns whole.
    for output, bias in (("p10", 1.0), ("p50", 2.0), ("p90", 3.0)):
        data = gather_bytes(
            "queue_wait", f"{output}", QUEUE_FEATURES, [2], weights=[7.0], bias=bias
        )
        write(tmp_path, f"queue_wait_{output}.onnx", data)
    store = store_for(tmp_path)
    loaded = store.model("queue_wait", "p50")
    assert loaded is not None and loaded.info.reads == ("queue_length",)
    assert loaded.info.read_features == ("queue_length",)
    ctx = context([subtask(f"s{i}", 3 + i, shots=100 * (i + 1)) for i in range(5)])
    predictor = Predictor(store)
    preds = predictor.predict(all_pairs(ctx), ctx)
    assert predictor.last_report is not None
    rows = {u.key: u.rows for u in predictor.last_report.outputs}
    assert rows["queue_wait/p50"] == 2  # two backends
    for p in preds:
        if p.kind == "qpu":
            queue = ctx.backends[p.resource].history.queue_length
            assert queue is not None
            assert p.queue_seconds_p50 == pytest.approx(7.0 * queue + 2.0)
    # The unread columns are NaN in the model's input.
    feats = FeatureBuilder().build(all_pairs(ctx), ctx)
    x, inverse = feats.qpu.matrix(QUEUE_FEATURES, ("queue_length",))
    assert x.shape == (2, 4) and np.isnan(x[:, [0, 1, 3]]).all()
    assert sorted(x[:, 2].tolist()) == [10.0, 50.0] and len(inverse) == 10
    whole, _ = feats.qpu.matrix(QUEUE_FEATURES)
    assert len(whole) == 10  # every (circuit, backend) differs on num_qubits and shots


def test_a_wrong_reads_claim_is_caught_by_the_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qorch.predictor.models as models

    monkeypatch.setattr(models, "graph_reads", lambda *_: (0,))  # claims column 0 only
    data = onnx_bytes("qpu_runtime", "value", ("shots", "circuits"), weights=(1.0, 2.0))
    write(tmp_path, "qpu_runtime.onnx", data)
    loaded = store_for(tmp_path).model("qpu_runtime", "value")
    assert loaded is not None and loaded.info.reads is None


def test_the_memo_index_is_built_only_when_a_later_call_needs_it(tmp_path: Path) -> None:
    data = onnx_bytes("classical_memory", "value", ("num_qubits",), weights=(2.0,), bias=1.0)
    loaded = load_model(tmp_path / "classical_memory.onnx", data)
    assert isinstance(loaded, LoadedModel)
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    first = loaded.run(x)
    assert first.tolist() == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
    assert loaded.last_rows_run == 6 and loaded._index is None and loaded._last_hash is None
    x[:] = 100.0  # the caller reuses its array: the memo kept its own copy
    assert loaded.run(np.arange(6, dtype=np.float32).reshape(6, 1)).tolist() == first.tolist()
    assert loaded.last_rows_run == 0 and loaded._index is None  # same rows: no index
    y = np.array([[5.0], [9.0], [0.0], [2.0]], dtype=np.float32)
    assert loaded.run(y).tolist() == [11.0, 19.0, 1.0, 5.0]
    assert (loaded.last_rows_run, loaded.last_rows_reused) == (1, 3)
    # The index of the previous rows was built for the lookup; these rows' hashes are kept
    # for the next call's index.
    assert loaded._index is None and loaded._last_hash is not None
    assert loaded.run(y[::-1]).tolist() == [5.0, 1.0, 19.0, 11.0]  # reordered: all reused
    assert loaded.last_rows_run == 0
    loaded.forget()
    assert loaded.run(y).tolist() == [11.0, 19.0, 1.0, 5.0] and loaded.last_rows_run == 4
    assert loaded.run(np.zeros((0, 1), dtype=np.float32)).tolist() == []


def test_predictions_are_plain_prediction_tuples_with_shared_notes(tmp_path: Path) -> None:
    write(tmp_path, "qpu_runtime.onnx", onnx_bytes("qpu_runtime", "value", ("shots",), bias=1.0))
    ctx = context([subtask("wide", 40), subtask("a"), subtask("b")], [backend("q1", 27)])
    pairs = [("a", "q1"), ("wide", "q1"), ("b", "q1"), ("a", "cpu"), ("zz", "cpu")]
    preds = Predictor(store_for(tmp_path)).predict(pairs, ctx)
    assert all(type(p) is Prediction and len(p) == len(Prediction._fields) for p in preds)
    assert [p.kind for p in preds] == ["qpu", "qpu", "qpu", "pool", "pool"]
    assert [p.source for p in preds] == ["analytic"] * 5
    assert preds[0].notes is preds[2].notes  # one tuple per combination of fallbacks
    assert not any(n.startswith("qpu_runtime") for n in preds[0].notes)
    assert any(n.startswith("queue_wait: analytic") for n in preds[0].notes)
    assert "wider than the resource" in preds[1].notes[0] and not preds[1].feasible
    assert "unknown subtask" in preds[4].notes[0] and preds[4].peak_memory_bytes == 0
    assert type(preds[3].peak_memory_bytes) is int and preds[3].peak_memory_bytes > 0


def test_a_gpu_pool_is_faster_for_a_wide_statevector_even_with_a_cpu_only_time_model() -> None:
    # The shipped time model was fitted on CPU runs and does not read device_gpu: on a GPU
    # pool its figure is scaled by the analytic GPU assumption (the model card).
    repo = Path(__file__).resolve().parents[2]
    store = store_for(repo / "models")
    ctx = context(
        [subtask("wide", 26, shots=1000, two=300, one=300), subtask("small", 4)],
        [],
        [pool("cpu"), pool("gpu", gpu=True)],
    )
    pairs = [(s, p) for s in ("wide", "small") for p in ("cpu", "gpu")]
    wide_cpu, wide_gpu, small_cpu, small_gpu = Predictor(store).predict(pairs, ctx)
    assert wide_cpu.source == wide_gpu.source == "model"
    assert wide_gpu.run_seconds < wide_cpu.run_seconds / 10
    # Tiny circuits are start-up and sampling: about the same anywhere, never slower on GPU.
    assert small_gpu.run_seconds <= small_cpu.run_seconds
    assert small_gpu.run_seconds > small_cpu.run_seconds / 2
