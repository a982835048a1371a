"""The worker entrypoint: real Aer simulations, result size cap, exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from qorch.worker.main import (
    EXIT_BAD_INPUT,
    RESULT_LIMIT_BYTES,
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
