"""Restart safety with moves in flight: while the cluster pass moves queued circuits off a
gateway whose price just rose to $100 per QPU second (the workflow has a $5 budget), the
operator is SIGKILLed between "cancel the old" and "start the new" (the move's intent
stored, the old job cancelled at its gateway) and restarted. No subtask may be lost or run
twice: counted at the gateways (their journals of executions) and from the status; the
restarted operator finishes the move from the status alone."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devenv.controlplane import ControlPlane
from devenv.gateway import call
from devenv.prometheus import Prometheus
from devenv.rbac import least_privilege_kubeconfig
from tests.harness import chaos

pytestmark = [pytest.mark.controlplane, pytest.mark.prometheus]

BELL = (
    'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; '
    "c = measure q;"
)
CIRCUITS = 16
JOB_SECONDS = 3.0  # each job holds its (simulated) device this long: queues hold jobs


@pytest.fixture(scope="module")
def moving_stack(
    control_plane: ControlPlane, prometheus: Prometheus, session_dir: Path
) -> Iterator[chaos.Stack]:
    work = session_dir / "moves-restart"
    work.mkdir(exist_ok=True)
    with chaos.stack(
        control_plane,
        prometheus,
        work,
        least_privilege_kubeconfig(control_plane, work / "operator-sa.yaml"),
        rng_seed=11,
        gateway_args=("--min-job-seconds", str(JOB_SECONDS), "--batch-size", "1"),
        operator_env={"QORCH_CLUSTER_PASS": "on"},
    ) as st:
        yield st


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {"name": "moving"},
        "spec": {
            "subtasks": [
                {"name": f"c{i}", "circuit": {"qasm": BELL, "shots": 200}} for i in range(CIRCUITS)
            ],
            "resources": {"quantumBackends": list(chaos.BACKENDS), "classicalPools": []},
            "objective": {"preset": "cost"},
            # A hard limit: once a backend's price rises, staying there would break it.
            "budget": {"maxCostUSD": 5.0},
        },
    }


def chaos_events(st: chaos.Stack, ns: str) -> list[Any]:
    return list(st.core.list_namespaced_event(ns).items)


def subtasks(st: chaos.Stack, ns: str) -> list[dict[str, Any]]:
    wf = chaos._list_workflows(st, ns).get("moving") or {}
    return list((wf.get("status") or {}).get("subtasks") or [])


def test_sigkill_between_cancel_and_start_loses_nothing_and_runs_nothing_twice(
    moving_stack: chaos.Stack,
) -> None:
    st = moving_stack
    ns = st.new_namespace(seed=11)
    case = chaos.WorkflowCase("moving", "moves", manifest(), "Succeeded")
    chaos._apply(st.plane, [case.manifest], namespace=ns)
    started = time.monotonic()

    def queued_on() -> dict[str, int]:
        where: dict[str, int] = {}
        for s in subtasks(st, ns):
            if s.get("phase") in ("Launching", "Scheduled") and s.get("placement"):
                name = s["placement"]["name"]
                where[name] = where.get(name, 0) + 1
        return where

    deadline = time.monotonic() + 60
    while not queued_on() and time.monotonic() < deadline:
        time.sleep(0.2)
    waiting = queued_on()
    assert waiting, subtasks(st, ns)
    busy = max(waiting, key=lambda b: waiting[b])
    # The busy backend's price rises to $100/s: its queued circuits must move (the budget).
    st.plane.kubectl(
        "patch", "qb", busy, "--type=merge", "-p", '{"spec": {"pricePerQpuSecondUSD": 100.0}}'
    )

    # A move under way whose old job the gateway has cancelled, the new one not started:
    # SIGKILL the operator right there, and restart it.
    moving = None
    deadline = time.monotonic() + 90
    while moving is None and time.monotonic() < deadline:
        for s in subtasks(st, ns):
            if not s.get("moving"):
                continue
            gateway = st.gateways[s["placement"]["name"]]
            code, _, job = call("GET", f"{gateway.url}/v1/jobs/{s['jobId']}")
            if code == 200 and job["phase"] == "Cancelled":
                moving = s
                break
        if moving is None:
            time.sleep(0.05)
    events = [(e.reason, e.message) for e in chaos_events(st, ns)]
    assert moving is not None, f"no move got as far as cancelling: {events}"
    st.operator.kill_and_restart(random.Random(11).randint(1, 1_000_000))

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        wf = chaos._list_workflows(st, ns).get("moving") or {}
        if (wf.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    report = chaos._account(
        st, 11, ns, [case], [], [], [], {"moving": time.monotonic() - started},
        time.monotonic() - started,
    )  # fmt: skip
    assert not report.violations, chaos.failure_report([report])
    status = wf["status"]
    assert status["phase"] == "Succeeded", status
    events = [(e.reason, e.message) for e in chaos_events(st, ns) if "Mov" in e.reason]
    assert status["moves"] >= 1, events
    assert all(s["failures"] == 0 for s in status["subtasks"])  # a move is not a failure
    moved = next(s for s in status["subtasks"] if s["name"] == moving["name"])
    # Its old job was cancelled: the restarted operator finished the move from the status.
    assert moved["phase"] == "Succeeded" and moved.get("moving") is None
    assert moved["moves"] == 1 and moved["attempts"] == 2 and moved["failures"] == 0
    assert moved["placement"]["name"] != moving["placement"]["name"]
    done = [
        e
        for gw in st.gateways.values()
        for e in chaos.completions(gw)
        if e["event"] == "end" and e.get("phase") == "Done" and e["job"].startswith(f"{ns}.")
    ]
    assert len(done) == CIRCUITS, done
