"""The worker's variational loop: real Aer energies, both optimizers, the route read
before every batch, the /progress endpoint, bad input named."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qorch.worker.errors import BadInputError
from qorch.worker.main import EXIT_BAD_INPUT, main
from qorch.worker.variational import (
    Evaluator,
    Progress,
    Route,
    VariationalTask,
    optimise,
    read_route,
)

ANSATZ = (
    'OPENQASM 3.0; include "stdgates.inc"; input float[64] t0; input float[64] t1; '
    "input float[64] t2; input float[64] t3; qubit[2] q; ry(t0) q[0]; ry(t1) q[1]; "
    "cx q[0], q[1]; ry(t2) q[0]; ry(t3) q[1];"
)
# H2 at 0.735 Å, two qubits (parity mapping): ground energy -1.857275 Ha.
H2 = [
    {"pauli": "II", "coefficient": -1.052373245772859},
    {"pauli": "IZ", "coefficient": 0.39793742484318045},
    {"pauli": "ZI", "coefficient": -0.39793742484318045},
    {"pauli": "ZZ", "coefficient": -0.01128010425623538},
    {"pauli": "XX", "coefficient": 0.18093119978423156},
]
GROUND = -1.857275
LOCAL = Route("pool", "cpu")


def env(tmp_path: Path, route: Route = LOCAL, **spec: Any) -> dict[str, str]:
    route_file = tmp_path / "route"
    route_file.write_text(route.to_json())
    return {
        "QORCH_QASM": ANSATZ,
        "QORCH_VARIATIONAL": json.dumps({"hamiltonian": H2, **spec}),
        "QORCH_ROUTE_FILE": str(route_file),
        "QORCH_RESULT_PATH": str(tmp_path / "termination-log"),
    }


@pytest.mark.parametrize("optimizer", ["COBYLA", "SPSA"])
def test_both_optimizers_find_the_h2_ground_energy_on_aer(tmp_path: Path, optimizer: str) -> None:
    e = env(tmp_path, optimizer=optimizer, maxIterations=300 if optimizer == "SPSA" else 150)
    task = VariationalTask.from_env(e)
    progress = Progress(optimizer=optimizer)
    result = optimise(task, Evaluator(task), progress)
    # SPSA, stochastic, gets close; COBYLA on exact energies gets there.
    assert result["energy"] == pytest.approx(GROUND, abs=0.03 if optimizer == "SPSA" else 1e-4)
    assert result["evaluations"] == progress.evaluations == result["batches"]["cpu"]
    assert set(result["parameters"]) == {"t0", "t1", "t2", "t3"}
    if optimizer == "SPSA":  # two evaluations per iteration, ten to calibrate
        assert result["evaluations"] == 2 * result["iterations"] + 10


def test_the_route_is_read_before_every_batch(tmp_path: Path) -> None:
    task = VariationalTask.from_env(env(tmp_path, maxIterations=12))
    evaluator = Evaluator(task)
    seen: list[str] = []
    real = evaluator.energy

    def spy(route: Route, point: np.ndarray, evaluation: int) -> tuple[float, float]:
        seen.append(route.name)
        if evaluation == 5:  # the operator patches the annotation mid-run
            qpu = Route("backend", "qpu", "http://127.0.0.1:9", "fake_manila")
            Path(task.route_file).write_text(qpu.to_json())
        energy, local = real(Route("pool", "cpu"), point, evaluation)
        assert local == 0.0  # a batch simulated in the pod bills no QPU time
        return energy, 0.0 if route.name == "cpu" else 1.25  # what a gateway billed

    evaluator.energy = spy  # type: ignore[method-assign]
    result = optimise(task, evaluator, Progress("COBYLA"))
    assert seen[:5] == ["cpu"] * 5 and set(seen[5:]) == {"qpu"}
    assert result["batches"] == {"cpu": 5, "qpu": len(seen) - 5}
    # The QPU seconds each backend billed, for the operator to price.
    assert result["qpuSeconds"] == {"qpu": pytest.approx(1.25 * (len(seen) - 5))}


def test_an_unreadable_route_keeps_the_last_one_and_a_bad_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / "route"
    with pytest.raises(BadInputError, match="route file"):
        read_route(str(path), None)
    path.write_text("")  # mid-update: the last route stands
    assert read_route(str(path), LOCAL) == LOCAL
    path.write_text('{"kind": "backend", "name": "qa"}')
    with pytest.raises(BadInputError, match="needs url and backendName"):
        read_route(str(path), LOCAL)
    backend = Route("backend", "qa", "http://gw:8080", "fake_manila")
    assert Route.parse(backend.to_json()) == backend


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"optimizer": "ADAM"}, "optimizer 'ADAM'"),
        ({"initialPoint": [0.1]}, "initialPoint has 1 values; the ansatz has 4"),
        ({"hamiltonian": [{"pauli": "ZZZ", "coefficient": 1}]}, "'ZZZ' must be 2 letters"),
    ],
)
def test_bad_input_exits_2_naming_what_is_wrong(
    tmp_path: Path, spec: dict[str, Any], message: str
) -> None:
    e = env(tmp_path)
    doc = json.loads(e["QORCH_VARIATIONAL"]) | spec
    e["QORCH_VARIATIONAL"] = json.dumps(doc)
    assert main([], e) == EXIT_BAD_INPUT
    assert message in (tmp_path / "termination-log").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_progress_is_served_while_the_loop_runs_and_the_result_says_it_all(
    tmp_path: Path,
) -> None:
    port = free_port()
    e = env(tmp_path, maxIterations=400, tolerance=1e-12)
    e.update(QORCH_METRICS_PORT=str(port), QORCH_METRICS_ADDR="127.0.0.1",
             QORCH_METRICS_LINGER_SECONDS="0")  # fmt: skip
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(main([], e)))
    worker.start()
    seen: list[dict[str, Any]] = []
    while worker.is_alive():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=1) as r:
                seen.append(json.loads(r.read()))
        except OSError:
            pass
        time.sleep(0.05)
    worker.join()
    assert done == [0]
    assert any(s["evaluations"] > 0 for s in seen), seen[:3]
    counts = [s["evaluations"] for s in seen]
    assert counts == sorted(counts)  # monotone
    result = json.loads((tmp_path / "termination-log").read_text())
    assert result["energy"] == pytest.approx(GROUND, abs=1e-4)
    assert result["method"] == "variational" and "usage" in result


def test_parameters_follow_their_declaration_order_not_their_names(tmp_path: Path) -> None:
    qasm = (
        'OPENQASM 3.0; include "stdgates.inc"; // input float[64] a;\n'
        "/* input float[64] t10; */ input float[64] t2; input angle[32] t10; "
        "input float[64] a; qubit[2] q; ry(t2) q[0]; ry(t10) q[1]; rz(a) q[0]; cx q[0], q[1];"
    )
    e = env(tmp_path, maxIterations=6)
    e["QORCH_QASM"] = qasm
    task = VariationalTask.from_env(e)
    evaluator = Evaluator(task)
    assert [p.name for p in evaluator.parameters] == ["t2", "t10", "a"]
    result = optimise(task, evaluator, Progress("COBYLA"))
    assert list(result["parameters"]) == ["t2", "t10", "a"]


def test_a_failing_gateway_is_waited_out_within_the_patience_and_no_longer() -> None:
    from qorch.gateway.base import GatewayError
    from qorch.worker.variational import _patiently

    calls: list[int] = []

    def flaky(failures: int, retryable: bool = True) -> Any:
        async def call() -> str:
            calls.append(1)
            if len(calls) <= failures:
                raise GatewayError("503 from the gateway", retryable=retryable)
            return "ok"

        return call

    assert asyncio.run(_patiently(flaky(3), patience=10.0)) == "ok" and len(calls) == 4
    calls.clear()
    with pytest.raises(GatewayError, match="503"):  # not retryable: at once
        asyncio.run(_patiently(flaky(1, retryable=False), patience=10.0))
    assert len(calls) == 1
    calls.clear()
    started = time.monotonic()
    with pytest.raises(GatewayError):  # down for longer than the patience
        asyncio.run(_patiently(flaky(100), patience=1.0))
    assert time.monotonic() - started < 1.5 and 2 <= len(calls) <= 3
