"""The worker entrypoint: real Aer simulations, result size cap, exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from qorch.metrics.operator_metrics import record_worker_usage
from qorch.operator.podspec import pod_state
from qorch.orchestrator.simulation import worker_memory_bytes
from qorch.worker.main import (
    EXIT_BAD_INPUT,
    RESULT_LIMIT_BYTES,
    BadInputError,
    choose_device,
    choose_method,
    fit_result,
    main,
)

STD = 'OPENQASM 3.0; include "stdgates.inc"; '
GHZ = (
    STD + "qubit[4] q; bit[4] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; cx q[2], q[3]; "
    "c = measure q;"
)


def run(tmp_path: Path, command: list[str] | None = None, **env: str) -> tuple[int, str]:
    out = tmp_path / "termination-log"
    code = main(command or [], {"QORCH_RESULT_PATH": str(out), **env})
    return code, out.read_text()


def test_sampler_ghz(tmp_path: Path) -> None:
    code, text = run(tmp_path, QORCH_QASM=GHZ, QORCH_SHOTS="2000")
    assert code == 0, text
    result = json.loads(text)
    assert set(result["counts"]) == {"0000", "1111"}
    assert sum(result["counts"].values()) == 2000
    assert result["method"] == "statevector" and result["device"] == "CPU"


def test_estimator_exact_values(tmp_path: Path) -> None:
    code, text = run(
        tmp_path,
        QORCH_QASM=STD + "qubit[2] q; h q[0]; cx q[0], q[1];",
        QORCH_PRIMITIVE="estimator",
        QORCH_OBSERVABLES='["ZZ", "ZI", "YY"]',
    )
    assert code == 0, text
    evs = json.loads(text)["expectationValues"]
    assert evs == pytest.approx([1.0, 0.0, -1.0], abs=1e-9)


def test_wide_circuit_uses_matrix_product_state(tmp_path: Path) -> None:
    n = 40
    body = "".join(f"cx q[{i}], q[{i + 1}]; " for i in range(n - 1))
    qasm = STD + f"qubit[{n}] q; bit[{n}] c; h q[0]; {body}c = measure q;"
    code, text = run(tmp_path, QORCH_QASM=qasm, QORCH_SHOTS="200")
    assert code == 0, text
    result = json.loads(text)
    assert result["method"] == "matrix_product_state"
    assert set(result["counts"]) == {"0" * n, "1" * n}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QORCH_QASM": ""}, "QORCH_QASM is empty"),
        ({"QORCH_QASM": STD + "qubit[2] q; h q[0]"}, "QORCH_QASM: OpenQASM does not parse"),
        ({"QORCH_QASM": GHZ, "QORCH_SHOTS": "lots"}, "QORCH_SHOTS='lots' is not an integer"),
        ({"QORCH_QASM": GHZ, "QORCH_METHOD": "magic"}, "QORCH_METHOD='magic'"),
        ({"QORCH_QASM": STD + "qubit[2] q; h q[0];"}, "a sampler circuit needs measurements"),
        (
            {
                "QORCH_QASM": STD + "qubit[2] q; h q[0];",
                "QORCH_PRIMITIVE": "estimator",
                "QORCH_OBSERVABLES": '["Z"]',
            },
            "QORCH_OBSERVABLES: 'Z' must be 2 letters",
        ),
        ({"QORCH_QASM": GHZ, "QORCH_DEVICE": "GPU"}, "QORCH_DEVICE=GPU but this node's Aer sees"),
    ],
)
def test_bad_input_exits_2_naming_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    code, text = run(tmp_path, **env)
    assert code == EXIT_BAD_INPUT
    assert message in text, text


def test_command_mode_passes_the_exit_code_through(tmp_path: Path) -> None:
    code, text = run(tmp_path, [sys.executable, "-c", "print('hello'); raise SystemExit(7)"])
    assert code == 7
    assert json.loads(text)["stdoutTail"] == "hello\n"


def test_large_results_are_trimmed_to_the_termination_message_cap() -> None:
    counts = {format(i, "016b"): 1000 - i for i in range(1000)}
    text = fit_result({"counts": counts, "shots": sum(counts.values())})
    assert len(text.encode()) <= RESULT_LIMIT_BYTES
    result = json.loads(text)
    assert result["truncated"] is True and result["distinctOutcomes"] == 1000
    kept = result["counts"]
    assert min(kept.values()) > max(v for k, v in counts.items() if k not in kept)


def test_method_and_device_choice() -> None:
    assert choose_method(28, "auto") == "statevector"
    assert choose_method(29, "auto") == "matrix_product_state"
    assert choose_method(10, "matrix_product_state") == "matrix_product_state"
    assert choose_device("auto", ("CPU", "GPU")) == "GPU"
    assert choose_device("auto", ("CPU",)) == "CPU"
    assert choose_device("CPU", ("CPU", "GPU")) == "CPU"


def test_matrix_product_state_stays_on_the_cpu() -> None:
    # Aer has no GPU matrix_product_state: a GPU node must not make the run fail.
    assert choose_device("auto", ("CPU", "GPU"), "matrix_product_state") == "CPU"
    assert choose_device("auto", ("CPU", "GPU"), "statevector") == "GPU"
    with pytest.raises(BadInputError, match="matrix_product_state on the CPU only"):
        choose_device("GPU", ("CPU", "GPU"), "matrix_product_state")


def test_every_result_reports_its_usage(tmp_path: Path) -> None:
    code, text = run(tmp_path, QORCH_QASM=GHZ, QORCH_SHOTS="100")
    assert code == 0, text
    usage = json.loads(text)["usage"]
    assert set(usage) == {"wallSeconds", "cpuSeconds", "peakMemoryBytes", "method", "device"}
    assert usage["wallSeconds"] > 0 and usage["cpuSeconds"] > 0
    assert usage["peakMemoryBytes"] > 50 << 20  # at least the interpreter and qiskit
    assert (usage["method"], usage["device"]) == ("statevector", "CPU")
    code, text = run(tmp_path, [sys.executable, "-c", "print('hi')"])
    assert code == 0 and json.loads(text)["usage"]["method"] == "command"


def test_trimmed_results_stay_json_and_keep_the_usage(tmp_path: Path) -> None:
    usage = {"wallSeconds": 1.0, "cpuSeconds": 1.0, "peakMemoryBytes": 1, "method": "m"}
    counts = {format(i, "016b"): 1000 - i for i in range(1000)}
    trimmed = json.loads(fit_result({"counts": counts, "usage": usage}))
    assert trimmed["usage"] == usage and trimmed["truncated"] is True
    # Non-ASCII output grows six-fold as JSON escapes: cut to 4096 bytes it was not JSON.
    code, text = run(tmp_path, [sys.executable, "-c", "print('\u00e9' * 5000)"])
    assert code == 0
    assert len(text.encode()) <= RESULT_LIMIT_BYTES
    result = json.loads(text)
    assert result["truncated"] is True and "usage" in result
    assert result["stdoutTail"].endswith("\u00e9\n") and len(result["stdoutTail"]) > 100
    huge = json.loads(fit_result({"counts": {"0" * 5000: 1}, "usage": usage}))
    assert huge["usage"] == usage and huge["counts"] == {} and huge["distinctOutcomes"] == 1


def test_a_taken_metrics_port_costs_the_scrape_not_the_run(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, text = run(
            tmp_path, QORCH_QASM=GHZ, QORCH_METRICS_PORT=port, QORCH_METRICS_ADDR="127.0.0.1"
        )
    assert code == 0, text
    assert json.loads(text)["counts"]


def test_the_pod_request_covers_what_a_worker_really_uses(tmp_path: Path) -> None:
    # A fresh process (the test runner's own peak would blur it), as in a pod.
    n = 22
    body = "".join(f"h q[{i}]; " for i in range(n))
    out = tmp_path / "termination-log"
    env = {
        **os.environ,
        "QORCH_RESULT_PATH": str(out),
        "QORCH_QASM": STD + f"qubit[{n}] q; bit[{n}] c; {body}c = measure q;",
        "QORCH_SHOTS": "1000",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "qorch.cli", "worker"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    peak = json.loads(out.read_text())["usage"]["peakMemoryBytes"]
    assert 16 << n < peak <= worker_memory_bytes(n)


def test_the_usage_a_worker_reports_reaches_the_operator_histograms(tmp_path: Path) -> None:
    code, text = run(tmp_path, QORCH_QASM=GHZ)
    assert code == 0
    pod = {
        "metadata": {"name": "p", "labels": {"qorch.io/subtask": "q", "qorch.io/attempt": "1"}},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": text}}}],
        },
    }
    state = pod_state(pod)
    assert state.usage is not None and state.result is not None
    assert "usage" not in state.result  # the user's result stays the user's

    labels = {"pool": "usage-test-pool", "kind": "circuit"}

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        m: sample(m)
        for m in (
            "qorch_subtask_execution_seconds_count",
            "qorch_subtask_cpu_seconds_sum",
            "qorch_subtask_peak_memory_bytes_sum",
        )
    }
    record_worker_usage("usage-test-pool", "circuit", state.usage)
    record_worker_usage("usage-test-pool", "circuit", {"wallSeconds": "soon", "cpuSeconds": -1})
    assert (
        sample("qorch_subtask_execution_seconds_count")
        == before["qorch_subtask_execution_seconds_count"] + 1
    )
    assert sample("qorch_subtask_cpu_seconds_sum") == pytest.approx(
        before["qorch_subtask_cpu_seconds_sum"] + float(state.usage["cpuSeconds"])
    )
    assert sample("qorch_subtask_peak_memory_bytes_sum") == pytest.approx(
        before["qorch_subtask_peak_memory_bytes_sum"] + float(state.usage["peakMemoryBytes"])
    )
