"""A real ``qorch gateway`` process killed with SIGKILL and started again on the same
``--state-dir``: finished jobs keep their results without running again, queued jobs run,
and a job that was running runs again, saying so (the local simulator keeps no remote jobs
to re-attach to)."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devenv import gateway as gateway_mod

STD = 'OPENQASM 3.0; include "stdgates.inc"; '
BELL = STD + "qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"


def slow_circuit(qubits: int = 14, layers: int = 3) -> str:
    """A mid-circuit measurement makes Aer simulate shot by shot: ~7 ms a shot here."""
    body = STD + f"qubit[{qubits}] q; bit[{qubits}] c; "
    for _ in range(layers):
        chain = " ".join(f"cx q[{i}], q[{i + 1}];" for i in range(qubits - 1))
        body += f"h q; {chain} t q; c[0] = measure q[0]; "
    return body + "c = measure q;"


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    status, _, payload = gateway_mod.call(method, url, body)
    return status, payload


def submit(gw: gateway_mod.GatewayProcess, job_id: str, qasm: str, shots: int) -> dict[str, Any]:
    status, job = call(
        "POST",
        f"{gw.url}/v1/jobs",
        {"job_id": job_id, "backend": "aer", "qasm": qasm, "shots": shots},
    )
    assert status == 202, job
    return job  # type: ignore[no-any-return]


def wait_for_job(
    gw: gateway_mod.GatewayProcess,
    job_id: str,
    phases: set[str],
    timeout: float = 120,
    *,
    with_remote_id: bool = False,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, job = call("GET", f"{gw.url}/v1/jobs/{job_id}")
        assert status == 200, job
        if job["phase"] in phases and (job["remote_job_id"] or not with_remote_id):
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"{job_id} still {job['phase']}: {job}"
        time.sleep(0.1)


def jobs_done(gw: gateway_mod.GatewayProcess) -> float:
    """Jobs this process ran to Done (its own counter: 0 in a fresh process)."""
    with urllib.request.urlopen(f"{gw.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(r'^qorch_gateway_jobs_total\{[^}]*outcome="done"[^}]*\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (the transpiler's forkserver and worker)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def kill(gw: gateway_mod.GatewayProcess) -> None:
    """SIGKILL, as the OOM killer or a node failure would; its helper processes must end
    with it instead of lingering."""
    helpers = descendants(gw.process.pid)
    gw.process.kill()
    gw.process.wait(10)
    deadline = time.monotonic() + 15
    while (alive := {p for p in helpers if Path(f"/proc/{p}").exists()}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    alive = {p for p in alive if "zombie" not in _state(p)}
    assert not alive, f"helper processes outlived the gateway: {alive}"


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "zombie"  # gone meanwhile
    return text.split("State:", 1)[1].splitlines()[0].lower()


def test_a_finished_job_survives_sigkill_with_its_result_and_does_not_run_again(
    tmp_path: Path,
) -> None:
    args = ("--provider", "aer", "--backend", "aer", "--state-dir", str(tmp_path / "state"))
    gw = gateway_mod.start(tmp_path / "first.log", *args)
    try:
        submit(gw, "bell", BELL, 1000)
        before = wait_for_job(gw, "bell", {"Done", "Error"})
        assert before["phase"] == "Done", before
        assert set(before["result"]["counts"]) == {"00", "11"}
        assert before["remote_job_id"]
        assert jobs_done(gw) == 1
    finally:
        kill(gw)
    with gateway_mod.running(tmp_path / "second.log", *args) as again:
        after = wait_for_job(again, "bell", {"Done", "Error"}, timeout=5)
        assert after == before  # result, remote job id, timings: all as they were
        # The operator, unsure, submits it again: the same job, not a second run.
        status, resubmitted = call(
            "POST",
            f"{again.url}/v1/jobs",
            {"job_id": "bell", "backend": "aer", "qasm": BELL, "shots": 1000},
        )
        assert (status, resubmitted) == (202, before)
        _, listed = call("POST", f"{again.url}/v1/jobs/status", {"job_ids": ["bell"]})
        assert listed["jobs"] == [before]
        assert jobs_done(again) == 0, "the restarted gateway ran the job again"


def test_queued_and_running_jobs_survive_sigkill_and_complete(tmp_path: Path) -> None:
    args = (
        "--provider",
        "aer",
        "--backend",
        "aer",
        "--max-qubits",
        "14",
        "--batch-size",
        "1",
        "--state-dir",
        str(tmp_path / "state"),
    )
    gw = gateway_mod.start(tmp_path / "first.log", *args)
    try:
        submit(gw, "slow", slow_circuit(), 600)  # ~4 s of simulation
        running = wait_for_job(gw, "slow", {"Running", "Done", "Error"}, with_remote_id=True)
        assert running["phase"] == "Running", running
        queued = submit(gw, "bell", BELL, 1000)
        assert queued["phase"] == "Queued"
        assert wait_for_job(gw, "slow", {"Running", "Done", "Error"})["phase"] == "Running"
    finally:
        kill(gw)
    with gateway_mod.running(tmp_path / "second.log", *args) as again:
        bell = wait_for_job(again, "bell", {"Done", "Error"})
        assert bell["phase"] == "Done", bell
        counts = bell["result"]["counts"]
        assert set(counts) == {"00", "11"}
        assert sum(counts.values()) == 1000
        assert bell["message"] == ""
        slow = wait_for_job(again, "slow", {"Done", "Error"})
        assert slow["phase"] == "Done", slow
        assert slow["message"] == (
            f"re-run: the provider cannot re-attach to {running['remote_job_id']}"
        )
        assert slow["remote_job_id"] != running["remote_job_id"]
        assert slow["result"]["shots"] == 600
        assert jobs_done(again) == 2
