"""Run ``qorch gateway`` as a real process on a free loopback port.

Without ``auth`` the gateway runs with ``--auth none`` (said explicitly: its default refuses
every caller); tests of authentication pass ``--auth tokenreview ...`` and the ``kubeconfig``
of an identity that may create TokenReviews.

Calibration files for ``--calibration-file`` (a fake device's BackendProperties JSON): the
fake's own calibration as qiskit-ibm-runtime ships it (``fake_device_properties``), a later,
worse day of the same device derived from it (``later_day``), and the atomic replace a
kubelet does when a mounted ConfigMap changes (``write_calibration``)."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from devenv.controlplane import free_port


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start(
    log_path: Path,
    *args: str,
    auth: Sequence[str] = ("--auth", "none"),
    kubeconfig: Path | None = None,
) -> GatewayProcess:
    port = free_port()
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qorch.cli",
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *auth,
            *args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    gw = GatewayProcess(proc, port, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log_path.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{gw.url}/healthz", timeout=1):
            return gw
        time.sleep(0.2)
    gw.stop()
    raise TimeoutError(f"gateway not healthy after 60 s: {log_path.read_text()[-2000:]}")


@contextlib.contextmanager
def running(
    log_path: Path,
    *args: str,
    auth: Sequence[str] = ("--auth", "none"),
    kubeconfig: Path | None = None,
) -> Iterator[GatewayProcess]:
    gw = start(log_path, *args, auth=auth, kubeconfig=kubeconfig)
    try:
        yield gw
    finally:
        gw.stop()


def call(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One JSON request to a gateway: status, response headers and the decoded body (the
    text itself when it is not JSON), for error answers too."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status, got = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, got, payload


def wait_job(url: str, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll a gateway job until it has finished; its final state."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, job = call("GET", f"{url}/v1/jobs/{job_id}")
        assert status == 200, (status, job)
        if job["phase"] in ("Done", "Error", "Cancelled"):
            return dict(job)
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout} s: {job}")
        time.sleep(0.1)


# ---- calibration files ---------------------------------------------------------------------

# A later, worse day of the same device, as factors on its calibration. Chosen within the
# drift ibm_perth itself showed from day to day (``shared/data/ibm-calibrations/ibm_perth``,
# 2023-01-01..04-30: median CX error 0.008-0.51, median readout error 0.011-0.093, median
# single-qubit error 0.00025-0.00063, median T1 106-204 us): CX errors x5, single-qubit
# errors x2, readout errors x3, T1 and T2 halved.
LATER_DAY_TWO_QUBIT_FACTOR: Final = 5.0
LATER_DAY_ONE_QUBIT_FACTOR: Final = 2.0
LATER_DAY_READOUT_FACTOR: Final = 3.0
LATER_DAY_COHERENCE_FACTOR: Final = 0.5
_READOUT_PARAMETERS: Final = frozenset({"readout_error", "prob_meas0_prep1", "prob_meas1_prep0"})


def fake_device_properties(backend: str) -> dict[str, Any]:
    """The calibration qiskit-ibm-runtime ships with fake backend ``backend`` (e.g.
    ``fake_perth``): BackendProperties JSON as IBM served it for the real device."""
    from qiskit_ibm_runtime.fake_provider import FakeProviderForBackendV2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some fakes warn when the provider loads
        fake = FakeProviderForBackendV2().backend(backend)
    return dict(json.loads(Path(fake.dirname, fake.props_filename).read_text()))


def later_day(properties: dict[str, Any], days: int = 1) -> dict[str, Any]:
    """``properties`` as a later, worse calibration day of the same device (the factors
    above; every date moved ``days`` on). Errors stay probabilities: gate errors at most
    0.75, readout errors at most 0.5."""
    day = copy.deepcopy(properties)

    def later(stamp: str) -> str:
        return (dt.datetime.fromisoformat(stamp) + dt.timedelta(days=days)).isoformat()

    day["last_update_date"] = later(day["last_update_date"])
    for qubit in day["qubits"]:
        for param in qubit:
            if param["name"] in ("T1", "T2"):
                param["value"] *= LATER_DAY_COHERENCE_FACTOR
            elif param["name"] in _READOUT_PARAMETERS:
                param["value"] = min(0.5, param["value"] * LATER_DAY_READOUT_FACTOR)
            if "date" in param:
                param["date"] = later(param["date"])
    for gate in day["gates"]:
        factor = (
            LATER_DAY_TWO_QUBIT_FACTOR if len(gate["qubits"]) == 2 else LATER_DAY_ONE_QUBIT_FACTOR
        )
        for param in gate["parameters"]:
            if param["name"] == "gate_error":
                param["value"] = min(0.75, param["value"] * factor)
            if "date" in param:
                param["date"] = later(param["date"])
    return day


def median_errors(properties: dict[str, Any]) -> tuple[float, float]:
    """(median two-qubit gate error, median readout error) of a BackendProperties JSON, read
    from the JSON itself (independently of the gateway's reading of it)."""
    two_qubit = [
        p["value"]
        for g in properties["gates"]
        if len(g["qubits"]) == 2
        for p in g["parameters"]
        if p["name"] == "gate_error"
    ]
    readout = [p["value"] for q in properties["qubits"] for p in q if p["name"] == "readout_error"]
    return statistics.median(two_qubit), statistics.median(readout)


def write_calibration(path: Path, properties: dict[str, Any]) -> None:
    """Replace the calibration file at once, as the kubelet swaps a mounted ConfigMap's
    file: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(properties))
    tmp.replace(path)
