"""Scenarios of the twin (``qorch.sim.scenario``): the drawn workflows, and the world built
from the real traces (those tests skip where ../shared/data is absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from qorch.cli import main
from qorch.predictor import CircuitCache
from qorch.sim.exogenous import DAY_S
from qorch.sim.replay import replay
from qorch.sim.scenario import (
    IBM_QUBITS,
    Scenario,
    build_world,
    drain_seconds,
    load_traces,
    make_workflows,
)
from qorch.sim.twin import make_predictor
from qorch.traces import default_traces_dir
from tests.unit.test_sim_twin import PREDICTOR, _two_devices

REAL = default_traces_dir()
needs_real = pytest.mark.skipif(not (REAL / "README.md").exists(), reason=f"no traces at {REAL}")


def test_workflows_are_drawn_in_every_shape_and_each_is_a_valid_spec() -> None:
    backends = list(_two_devices())
    scenario = Scenario(hours=10, workflows=200, seed=3)
    workflows = make_workflows(scenario, backends)
    assert len(workflows) == 200
    arrivals = [w.arrival for w in workflows]
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0 and arrivals[-1] <= 10 * 3600
    shapes = Counter(w.shape for w in workflows)
    assert set(shapes) == {"sampling", "deep", "vqe", "wide", "classical"}
    assert shapes["sampling"] > shapes["wide"]  # the mix's weights
    cache = CircuitCache()
    for wf in workflows:
        for name, source in wf.sources.items():
            parsed = cache.parse(source)
            assert parsed.counts is not None, (wf.name, name, parsed.error)
        pools = {p.name: p for p in wf.spec.resources.classicalPools}
        if wf.shape in ("sampling", "deep", "vqe"):
            # Hardware work: the circuits must run on a device, the pool runs the rest.
            assert wf.spec.resources.quantumBackends == ["good", "idle"]
            assert pools["cpu"].maxQubits == 1
        if wf.shape == "wide":
            assert wf.spec.resources.quantumBackends == []
            assert pools["gpu"].gpu and pools["gpu"].maxQubits >= 30
        for sub in wf.spec.subtasks:
            if sub.classical is not None:
                assert wf.classical_seconds[sub.name] > 0
    again = make_workflows(scenario, backends)
    assert [(w.name, w.arrival, w.sources) for w in again] == [
        (w.name, w.arrival, w.sources) for w in workflows
    ]


def test_a_scenario_refuses_what_it_cannot_draw() -> None:
    with pytest.raises(ValueError, match="unknown workflow shape"):
        Scenario(mix={"teleport": 1.0}).check()
    with pytest.raises(ValueError, match="unknown preset"):
        Scenario(presets={"fastest": 1.0}).check()
    with pytest.raises(ValueError, match="hours"):
        Scenario(hours=0).check()


@needs_real
def test_the_real_world_has_the_traces_backends_queues_drift_and_gpu_load() -> None:
    scenario = Scenario(hours=48, workflows=0)
    traces = load_traces(None, scenario.gpu_time_scale)
    world = build_world(scenario, traces)
    assert {b.info.backend_name for b in world.backends} == set(IBM_QUBITS)
    for b in world.backends:
        name = b.info.backend_name
        # The trace's drain rate: tens of seconds to minutes per job, well under the
        # 2019-20 jobs' mean (606 s).
        assert 10 < drain_seconds(traces.queues, name) < traces.service.mean
        assert b.info.num_qubits == IBM_QUBITS[name]
        assert b.sim.others_length(600.0) == traces.queues.queue_length(name, 600.0)
        # The same question gets the same answer (seeded by the instant).
        assert b.sim.others_wait(600.0) == b.sim.others_wait(600.0)
        # Calibration changes with the day and holds within it.
        assert b.calibration_at(10.0) == b.calibration_at(DAY_S - 10.0)
        assert b.calibration_at(10.0) != b.calibration_at(DAY_S + 10.0)
    cusco = next(b for b in world.backends if b.info.backend_name == "ibm_cusco")
    short = next(b for b in world.backends if b.info.backend_name == "ibm_nairobi")
    assert cusco.average_job_seconds < 60 and short.average_job_seconds < 60
    gpu = next(p for p in world.pools if p.gpu)
    loads = [gpu.sim.background_gpus(t) for t in range(0, int(7 * DAY_S), 600)]
    assert max(loads) <= scenario.gpu_background_peak * scenario.gpus + 1e-9
    assert max(loads) > 0.2 * scenario.gpus  # the GPU pool really fills at times
    frozen = build_world(Scenario(stationary=True), traces)
    for b in frozen.backends:
        assert b.sim.others_length(0.0) == b.sim.others_length(3 * DAY_S)
        assert b.calibration_at(0.0) == b.calibration_at(3 * DAY_S)


@needs_real
def test_a_short_real_replay_finishes_under_every_policy() -> None:
    scenario = Scenario(hours=3, workflows=12, seed=5)
    results = replay(scenario, predictor=PREDICTOR)
    assert [r.policy for r in results] == [
        "static",
        "least-busy",
        "qonductor",
        "qorch",
        "oracle",
        "qorch-static",
        "qorch-fidelity",
    ]
    for r in results:
        s = r.summary()
        assert s.workflows == 12 and s.failed == 0, s
        assert s.finished == 12, s
        assert 0 < s.mean_fidelity <= 1 and s.usd > 0
    assert make_predictor(None) is not None


@needs_real
def test_qorch_simulate_prints_one_table_and_writes_the_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text("name: tiny\nhours: 2\nworkflows: 6\nseed: 2\n")
    out = tmp_path / "plots"
    code = main(
        ["simulate", str(scenario), "--policy", "static", "--policy", "qorch", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = [line for line in printed.splitlines() if line.strip().startswith(("static", "qorch"))]
    assert [r.split()[0] for r in rows] == ["static", "qorch"]
    assert all("6/6" in r for r in rows), printed
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "tiny-cost.png",
        "tiny-jct.png",
        "tiny-queues.png",
        "tiny-timeline-qorch.png",
        "tiny-timeline-static.png",
    ]
    assert all((out / n).read_bytes().startswith(b"\x89PNG") for n in names)


def test_qorch_simulate_names_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("hours: 1\nworkflows: 1\n")
    code = main(["simulate", str(scenario), "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2
    assert "nowhere" in err
    scenario.write_text("hourz: 1\n")
    assert main(["simulate", str(scenario)]) == 2
    assert "hourz" in capsys.readouterr().err


def test_departures_bound_a_wait_by_the_jobs_the_trace_shows_gone() -> None:
    from qorch.sim.scenario import Departures

    d = Departures(times=(60.0, 120.0, 300.0), gone=(5, 7, 20))
    assert d.seconds_until(0.0, 0) == 0.0
    assert d.seconds_until(0.0, 5) == 60.0  # the 5 ahead had left by the first minute
    assert d.seconds_until(0.0, 6) == 120.0
    assert d.seconds_until(60.0, 2) == 60.0  # counted from t: 5 gone before it
    assert d.seconds_until(100.0, 13) == 200.0
    assert d.seconds_until(100.0, 15) == 200.0
    assert d.seconds_until(100.0, 16) == float("inf")  # not within the trace
