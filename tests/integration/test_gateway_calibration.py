"""A ``qorch gateway`` process with ``--calibration-file``: when the file changes (a platform
team updates the ConfigMap it is mounted from), the calibration the gateway reports, the
metrics it exports AND the noise its simulations apply follow the new day of the device.

The days are derived from the fake device's own calibration (``devenv.gateway``:
``later_day``), so the test needs no trace data; where the ibm_perth calibration trace is
present, two of its real days are served as well."""

from __future__ import annotations

import math
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from qiskit import QuantumCircuit

from devenv import gateway as gateway_mod
from qorch.api.backend import Provider
from qorch.gateway.backends import build_backend
from qorch.quantum.circuits import load_qasm
from qorch.traces._io import default_traces_dir
from qorch.traces.calibrations import CALIBRATIONS_DIR, read_calibration

DEVICE = "fake_perth"  # 7 qubits; its calibration trace (ibm_perth) loads on it too
QUBITS = 7
SHOTS = 4000
STD = 'OPENQASM 3.0; include "stdgates.inc"; '
# A GHZ chain and its inverse: ideally every shot reads all zeros, so the share of
# all-zero shots is the circuit's measured success probability (12 CX, 7 measurements).
MIRROR = (
    STD
    + f"qubit[{QUBITS}] q; bit[{QUBITS}] c; h q[0]; "
    + "".join(f"cx q[{i}], q[{i + 1}]; " for i in range(QUBITS - 1))
    + "".join(f"cx q[{i}], q[{i + 1}]; " for i in reversed(range(QUBITS - 1)))
    + "h q[0]; c = measure q;"
)


def backend_info(gw: gateway_mod.GatewayProcess) -> dict[str, Any]:
    status, _, info = gateway_mod.call("GET", f"{gw.url}/v1/backend")
    assert status == 200, info
    return dict(info)


def success(gw: gateway_mod.GatewayProcess, job_id: str, runs: int = 2) -> float:
    """Measured success probability of ``MIRROR``, over ``runs`` jobs of ``SHOTS`` shots
    (each transpiled anew: the layout may differ, as it would between real submissions)."""
    hits = 0
    for i in range(runs):
        name = f"{job_id}-{i}"
        status, _, job = gateway_mod.call(
            "POST",
            f"{gw.url}/v1/jobs",
            {"job_id": name, "backend": DEVICE, "qasm": MIRROR, "shots": SHOTS},
        )
        assert status == 202, job
        done = gateway_mod.wait_job(gw.url, name)
        assert done["phase"] == "Done", done
        hits += done["result"]["counts"].get("0" * QUBITS, 0)
    return hits / (runs * SHOTS)


def exported(gw: gateway_mod.GatewayProcess, metric: str) -> float:
    with urllib.request.urlopen(f"{gw.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{metric}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert found, f"{metric} not exported"
    return float(found.group(1))


def wait_for_day(gw: gateway_mod.GatewayProcess, date: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (info := backend_info(gw))["calibrationDate"] != date:
        assert time.monotonic() < deadline, f"still on {info['calibrationDate']}, not {date}"
        time.sleep(0.2)
    return info


def assert_reports(gw: gateway_mod.GatewayProcess, properties: dict[str, Any]) -> None:
    """The summary and the metrics say what the file says (medians read from the JSON)."""
    two_qubit, readout = gateway_mod.median_errors(properties)
    calibration = backend_info(gw)["calibration"]
    assert calibration["medianTwoQubitError"] == pytest.approx(two_qubit, rel=1e-9)
    assert calibration["medianReadoutError"] == pytest.approx(readout, rel=1e-9)
    assert exported(gw, "qorch_backend_median_two_qubit_error") == pytest.approx(two_qubit)
    assert exported(gw, "qorch_backend_median_readout_error") == pytest.approx(readout)


def test_a_later_calibration_day_changes_the_reported_calibration_and_the_noise(
    tmp_path: Path,
) -> None:
    first = gateway_mod.fake_device_properties(DEVICE)
    later = gateway_mod.later_day(first)
    calibration = tmp_path / "calibration.json"
    gateway_mod.write_calibration(calibration, first)
    with gateway_mod.running(
        tmp_path / "gateway.log",
        "--provider", "fake", "--backend", DEVICE, "--quantum-backend", "perth",
        "--calibration-file", str(calibration), "--calibration-check-seconds", "0.5",
    ) as gw:  # fmt: skip
        assert backend_info(gw)["calibrationDate"] == first["last_update_date"]
        assert_reports(gw, first)
        before = success(gw, "first-day")

        gateway_mod.write_calibration(calibration, later)
        wait_for_day(gw, later["last_update_date"])
        assert_reports(gw, later)
        after = success(gw, "later-day")
        # Measured here: 0.75-0.82 on the first day, 0.28-0.32 on the later one (once 0.54
        # in a loaded CI run: the transpiler's layout picks other qubits). Shot noise is
        # ~0.006 (8000 shots).
        assert before > 0.6, before
        assert before - after > 0.15, (before, after)

        # A file that is not a calibration of this device changes nothing, and says why.
        other = gateway_mod.fake_device_properties("fake_manila")  # 5 qubits
        gateway_mod.write_calibration(calibration, other)
        deadline = time.monotonic() + 30
        while "describes 5 qubits, fake_perth has 7" not in gw.log_path.read_text():
            assert time.monotonic() < deadline, gw.log_path.read_text()[-2000:]
            time.sleep(0.2)
        assert backend_info(gw)["calibrationDate"] == later["last_update_date"]
        assert_reports(gw, later)
        # ... and the device's own first day back again is followed again.
        gateway_mod.write_calibration(calibration, first)
        wait_for_day(gw, first["last_update_date"])
        assert_reports(gw, first)
        again = success(gw, "first-day-again")
        assert again - after > 0.15, (again, after)


def test_a_simulation_running_when_the_calibration_changes_finishes_in_the_old_process(
    tmp_path: Path,
) -> None:
    """The new day replaces the simulator process; a simulation already running in the old
    one finishes there and is not lost, and the next job runs in the new process."""
    first = gateway_mod.fake_device_properties(DEVICE)
    calibration = tmp_path / "calibration.json"
    gateway_mod.write_calibration(calibration, first)
    adapter = build_backend(Provider.FAKE, DEVICE, calibration_file=calibration)
    try:
        adapter.start()
        # A mid-circuit measurement makes Aer simulate shot by shot: seconds of work.
        slow = QuantumCircuit(QUBITS, QUBITS)
        for _ in range(3):
            slow.h(range(QUBITS))
            for i in range(QUBITS - 1):
                slow.cx(i, i + 1)
            slow.t(range(QUBITS))
            slow.measure(0, 0)
        slow.measure(range(QUBITS), range(QUBITS))
        prepared = adapter.prepare(slow, ())
        running = adapter.run("sampler", [prepared], 30_000)
        time.sleep(0.3)
        assert not running.done(), "the simulation finished too soon to test this"
        gateway_mod.write_calibration(calibration, gateway_mod.later_day(first))
        assert adapter.reload_calibration()
        assert not running.done()
        counts = running.result()[0].data.c.get_counts()
        assert sum(counts.values()) == 30_000
        mirror = adapter.prepare(load_qasm(MIRROR), ())
        later = adapter.run("sampler", [mirror], 100).result()[0].data.c.get_counts()
        assert sum(later.values()) == 100
    finally:
        adapter.close()


def test_a_gateway_started_with_an_unusable_calibration_file_says_why_and_exits(
    tmp_path: Path,
) -> None:
    calibration = tmp_path / "calibration.json"
    calibration.write_text('{"qubits": [')
    with pytest.raises(RuntimeError, match=r"calibration.json:1:\d+: invalid JSON"):
        gateway_mod.start(
            tmp_path / "gateway.log",
            "--provider", "fake", "--backend", DEVICE, "--calibration-file", str(calibration),
        )  # fmt: skip


TRACE = default_traces_dir() / CALIBRATIONS_DIR


@pytest.mark.skipif(not TRACE.is_dir(), reason=f"calibration trace not present ({TRACE})")
def test_two_real_days_of_ibm_perth_are_served_as_recorded(tmp_path: Path) -> None:
    """Two days of the device's own trace, the one with the lowest median readout error and
    the one with the highest: the gateway reports the trace reader's medians, and the worse
    day measures worse."""
    days = sorted((read_calibration(f) for f in TRACE.glob("*.json")), key=lambda d: d.day)
    good = min(days, key=lambda d: d.median_readout_error)
    bad = max(days, key=lambda d: d.median_readout_error)
    calibration = tmp_path / "calibration.json"
    gateway_mod.write_calibration(calibration, dict(good.properties))
    with gateway_mod.running(
        tmp_path / "gateway.log",
        "--provider", "fake", "--backend", DEVICE,
        "--calibration-file", str(calibration), "--calibration-check-seconds", "0.5",
    ) as gw:  # fmt: skip
        measured = {}
        for day in (good, bad):
            gateway_mod.write_calibration(calibration, dict(day.properties))
            info = wait_for_day(gw, str(day.properties["last_update_date"]))
            summary = info["calibration"]
            assert summary["medianReadoutError"] == pytest.approx(day.median_readout_error)
            assert summary["medianTwoQubitError"] == pytest.approx(day.median_two_qubit_error)
            assert summary["medianT1Seconds"] == pytest.approx(day.median_t1_us * 1e-6)
            measured[day.day] = success(gw, f"day-{day.day}")
    assert all(0 <= m <= 1 and not math.isnan(m) for m in measured.values())
    assert measured[good.day] > measured[bad.day] + 0.1, measured
