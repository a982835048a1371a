"""Issue 13's "must show", on real gateways: two gateway processes serving the same fake
7-qubit device (fake_perth: its noise from a real calibration) and a GPU pool (the KWOK
nodes with GPUs, for the workflow's first step); mid-run one device's queue spikes because
other clients submit real jobs to it, or, separately, its calibration degrades because its
gateway switches to a later day of the device. The operator (``gateway="http"``,
``QORCH_CLUSTER_PASS=on``, live metrics from a real Prometheus) moves still-queued circuits
away, with Events giving the numbers, and the workflow finishes at a lower weighted cost
than the same workflow with ``reallocation.enabled: false``, run beside it in the same test
and judged with the operator's own cost function.

The realised cost of a run (``realised_costs``) takes, as the cost function's three terms,
the makespan (``status.startedAt`` to ``status.finishedAt``), the error (1 - the MEASURED
success probability of its circuits, from the counts in the status: each circuit is a GHZ
chain and its inverse, ideally all zeros) and ``status.costUSD``; both runs are normalised
against the same references (``WorkflowCost`` ranks them as two candidates of one step).

The devices: each job holds a device 4 s (``--min-job-seconds``; the shipped qpu_runtime
model predicts 4.6 s for these circuits, so the operator's figures and the devices agree),
one job at a time; each has served two jobs before the test (its queue-wait and execution
histograms have data, as a device in service has; with none the queue model's prior for a
device is minutes of waiting).

Why the queue spike lands ahead of the circuits: the gateway runs its queue first come,
first served, so jobs that other clients submit after ours are behind ours and do not delay
them (moving would then be a loss, and the test would say so). Here the other clients'
burst arrives while the workflow's first step runs, before its circuits are submitted; the
operator reads Prometheus at most every 12 s (a deployment: every 15 s by default), so it
places the circuits on a view without the burst, and some queue behind it. A later reading
shows the spike, and the pass moves them. That run weighs time (preset ``speed``): the two
runs differ in time only. The calibration run weighs accuracy (preset ``accuracy``); there
the operator reads Prometheus every second, and device A is busy with other clients' jobs
as the workflows start, so that it runs none of theirs before the pass has seen its new
calibration.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devenv import gateway as gateway_mod
from devenv.cluster import Cluster, wait_for
from devenv.prometheus import Prometheus
from qorch.api.workflow import ObjectivePreset
from qorch.orchestrator.cost import (
    PRESETS,
    CandidateScore,
    Objective,
    Step,
    Workflow,
    WorkflowCost,
)
from qorch.orchestrator.prediction import MODEL, QPU, Prediction
from tests.integration.test_gateway_calibration import DEVICE, MIRROR, QUBITS, STD

pytestmark = [pytest.mark.controlplane, pytest.mark.prometheus]

SHOTS = 2000
CIRCUITS = tuple(f"c{i}" for i in range(4))
POOL_QUBITS = QUBITS - 1  # the GPU pool may not simulate the circuits (``workflow``)
JOB_SECONDS = 4.0
# What the other clients submit: small circuits, each holding the device a job's time.
OTHERS = STD + "qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"
KWOK_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"


@dataclass
class Devices:
    """Gateway A (the one that spikes or degrades, calibration from ``calibration``) and
    gateway B, with their QuantumBackend names."""

    a: gateway_mod.GatewayProcess
    b: gateway_mod.GatewayProcess
    name_a: str
    name_b: str
    calibration: Path
    workdir: Path


@contextlib.contextmanager
def two_devices(
    cluster: Cluster, prometheus: Prometheus, workdir: Path, namespace: str
) -> Iterator[Devices]:
    """Two gateways of the same device, one job at a time, each job holding the device
    ``JOB_SECONDS``, each warmed up with two jobs; scraped by Prometheus; QuantumBackends for
    both."""
    workdir.mkdir(parents=True, exist_ok=True)
    calibration = workdir / "perth-a-calibration.json"
    gateway_mod.write_calibration(calibration, gateway_mod.fake_device_properties(DEVICE))
    suffix = namespace.split("-", 1)[0]  # t<N>: unique in the session
    names = (f"perth-a-{suffix}", f"perth-b-{suffix}")
    common = ("--provider", "fake", "--backend", DEVICE, "--batch-size", "1",
              "--min-job-seconds", str(JOB_SECONDS))  # fmt: skip
    with (
        gateway_mod.running(
            workdir / "gateway-a.log", *common, "--quantum-backend", names[0],
            "--calibration-file", str(calibration), "--calibration-check-seconds", "0.5",
        ) as a,
        gateway_mod.running(
            workdir / "gateway-b.log", *common, "--quantum-backend", names[1]
        ) as b,
    ):  # fmt: skip
        prometheus.set_targets("reallocation-gain", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        for gw in (a, b):
            for i in range(2):
                submit(gw, f"warm-up-{i}", OTHERS)
        for name, gw in zip(names, (a, b), strict=True):
            cluster.apply(
                json.dumps(
                    {
                        "apiVersion": "qorch.io/v1alpha1",
                        "kind": "QuantumBackend",
                        "metadata": {"name": name},
                        "spec": {
                            "provider": "fake",
                            "backendName": DEVICE,
                            "numQubits": QUBITS,
                            "gateway": {"url": gw.url},
                        },
                    }
                )
            )

        def served() -> bool:
            found = prometheus.query("qorch_gateway_execution_seconds_count >= 2")
            return set(names) <= {s["metric"].get("quantum_backend") for s in found}

        wait_for("both gateways warmed up and scraped", served, 60)
        try:
            yield Devices(a, b, names[0], names[1], calibration, workdir)
        finally:
            for name in names:
                cluster.plane.kubectl("delete", "qb", name, "--wait=false", check=False)
            prometheus.set_targets("reallocation-gain", [])


def submit(gw: gateway_mod.GatewayProcess, job_id: str, qasm: str, shots: int = 100) -> None:
    """A job of another client, straight to the gateway over HTTP."""
    status, _, job = gateway_mod.call(
        "POST",
        f"{gw.url}/v1/jobs",
        {"job_id": job_id, "backend": DEVICE, "qasm": qasm, "shots": shots},
    )
    assert status == 202, job


def workflow(
    name: str, devices: Devices, *, reallocate: bool, preset: ObjectivePreset, prepare: str
) -> dict[str, Any]:
    """A GPU step (``prepare`` long, on the GPU pool: the KWOK nodes with GPUs), then four
    7-qubit circuits, which may run on either device.

    The GPU pool may not simulate the circuits (``maxQubits`` 6): with a pool that can, the
    pass simulates them there from the start under every preset -- exact, predicted to take
    a tenth of a second (pod start-up is not predicted), and the money barely tells against
    it, as the subtasks not decided yet count on their fastest resource, that pool, in every
    candidate's total -- and there would be no queued job to move. No step follows the
    circuits: a classical step's predicted duration (60 s without a measurement) would be
    part of every completion the pass compares, and hide the gain of a move."""
    return {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {"name": name},
        "spec": {
            "subtasks": [
                {
                    "name": "prepare",
                    "classical": {
                        "image": "busybox",
                        "resources": {"gpu": 1},
                        "annotations": {KWOK_DELAY: prepare},
                    },
                },
                *(
                    {
                        "name": c,
                        "dependsOn": ["prepare"],
                        "circuit": {"qasm": MIRROR, "shots": SHOTS},
                    }
                    for c in CIRCUITS
                ),
            ],
            "resources": {
                "quantumBackends": [devices.name_a, devices.name_b],
                "classicalPools": [
                    {
                        "name": "gpu",
                        "nodeSelector": {"qorch.io/pool": "gpu"},
                        "gpu": True,
                        "maxQubits": POOL_QUBITS,
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                    },
                ],
            },
            "objective": {"preset": preset.value},
            "reallocation": {"enabled": reallocate},
        },
    }


def wf_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(((cluster.get("hwf", name, namespace) or {}).get("status")) or {})


def subtasks(cluster: Cluster, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in wf_status(cluster, namespace, name).get("subtasks") or []}


def queued_on(cluster: Cluster, namespace: str, name: str, backend: str) -> list[str]:
    """Circuits of the workflow whose current attempt is a job at ``backend``, not done."""
    return [
        n
        for n, s in subtasks(cluster, namespace, name).items()
        if (s.get("placement") or {}).get("name") == backend
        and s.get("phase") in ("Launching", "Scheduled")
    ]


def finished(cluster: Cluster, namespace: str, *names: str, timeout: float, record: Path) -> None:
    """Wait for the workflows to finish; their statuses and Events go to ``record`` (kept
    with the session's logs when a test fails)."""

    def done() -> bool:
        return all(
            wf_status(cluster, namespace, n).get("phase") in ("Succeeded", "Failed") for n in names
        )

    try:
        wait_for(f"{', '.join(names)} finished", done, timeout, interval=0.5)
    finally:
        runs = {
            n: {
                "status": wf_status(cluster, namespace, n),
                "events": [
                    f"{e.get('lastTimestamp')} {e['reason']}: {e['message']}"
                    for e in cluster.events(namespace, n)
                ],
            }
            for n in names
        }
        record.write_text(json.dumps(runs, indent=1))
    for n in names:
        status = wf_status(cluster, namespace, n)
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[-3000:]


def _stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Outcome:
    """What one run realised: makespan (s), mean measured success of its circuits, USD."""

    makespan: float
    fidelity: float
    usd: float
    moves: int
    placements: dict[str, str]
    successes: dict[str, float]


def outcome(cluster: Cluster, namespace: str, name: str) -> Outcome:
    status = wf_status(cluster, namespace, name)
    successes = {}
    placements = {}
    for s in status["subtasks"]:
        placements[s["name"]] = s["placement"]["name"]
        if s["name"] in CIRCUITS:
            counts = s["result"]["counts"]
            assert sum(counts.values()) == SHOTS, s["result"]
            successes[s["name"]] = counts.get("0" * QUBITS, 0) / SHOTS
    return Outcome(
        makespan=(_stamp(status["finishedAt"]) - _stamp(status["startedAt"])).total_seconds(),
        fidelity=statistics.fmean(successes.values()),
        usd=float(status.get("costUSD") or 0.0),
        moves=int(status.get("moves") or 0),
        placements=placements,
        successes=successes,
    )


def realised_costs(
    outcomes: dict[str, Outcome], preset: ObjectivePreset
) -> dict[str, CandidateScore]:
    """Each run's realised weighted cost by the operator's cost function: the runs are
    scored as the candidates of one step whose figures are what each run realised, so
    both are normalised against the same references (the shorter makespan, the lower USD)
    and weighted by the workflow's preset."""
    predictions = {
        ("run", name): Prediction(
            subtask="run",
            resource=name,
            kind=QPU,
            feasible=True,
            seconds_p10=o.makespan,
            seconds_p50=o.makespan,
            seconds_p90=o.makespan,
            queue_seconds_p10=0.0,
            queue_seconds_p50=0.0,
            queue_seconds_p90=0.0,
            run_seconds=o.makespan,
            fidelity=o.fidelity,
            usd=o.usd,
            peak_memory_bytes=0,
            source=MODEL,
        )
        for name, o in outcomes.items()
    }
    cost = WorkflowCost(
        Workflow(steps=(Step("run"),), resources=tuple(outcomes)),
        predictions,
        Objective(weights=PRESETS[preset]),
    )
    ranking = cost.rank("run", {})
    return {c.resource: c for c in ranking.candidates}


def moved_events(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [e["message"] for e in cluster.events(namespace, name) if e["reason"] == "Moved"]


def report(title: str, outcomes: dict[str, Outcome], costs: dict[str, CandidateScore]) -> str:
    lines = [title]
    for name, o in outcomes.items():
        c = costs[name]
        lines.append(
            f"  {name}: cost {c.score:.3f} = time {c.time.weighted:.3f} "
            f"(makespan {o.makespan:.0f}s) + error {c.error.weighted:.3f} "
            f"(mean success {o.fidelity:.3f}) + usd {c.usd.weighted:.3f} (${o.usd:.5f}); "
            f"moves {o.moves}; placements {o.placements}"
        )
    text = "\n".join(lines)
    print(text)
    return text


def check_common(
    cluster: Cluster, namespace: str, moving: str, staying: str, devices: Devices
) -> tuple[Outcome, Outcome]:
    """What holds in both scenarios: the reallocating run moved circuits off A, each move
    an Event with its numbers, none of them counted as a failure; the other run moved
    nothing."""
    moved = moved_events(cluster, namespace, moving)
    assert moved, [e["reason"] for e in cluster.events(namespace, moving)]
    assert all(f"from {devices.name_a}" in m for m in moved), moved
    assert all("price of moving" in m for m in moved), moved
    assert not moved_events(cluster, namespace, staying)
    runs = {
        moving: outcome(cluster, namespace, moving),
        staying: outcome(cluster, namespace, staying),
    }
    assert runs[moving].moves == len(moved) and runs[staying].moves == 0, runs
    for name, run in runs.items():
        assert run.placements["prepare"] == "gpu", (name, run.placements)
        failures = [s["failures"] for s in subtasks(cluster, namespace, name).values()]
        assert not any(failures), (name, failures)
    return runs[moving], runs[staying]


def test_a_queue_spike_from_other_clients_moves_queued_circuits_and_lowers_the_cost(
    cluster: Cluster,
    namespace: str,
    own_operator: Any,
    prometheus: Prometheus,
    session_dir: Path,
) -> None:
    burst = 18  # the other clients' jobs: 72 s of device A
    started = time.monotonic()
    with two_devices(cluster, prometheus, session_dir / f"gain-{namespace}", namespace) as devices:
        own_operator(
            gateway="http",
            QORCH_CLUSTER_PASS="on",
            QORCH_PROMETHEUS_URL=prometheus.url,
            QORCH_METRICS_REFRESH_SECONDS="12",
        )
        preset = ObjectivePreset.SPEED
        moving, staying = "spike-moves", "spike-stays"
        for name, reallocate in ((moving, True), (staying, False)):
            manifest = workflow(name, devices, reallocate=reallocate, preset=preset, prepare="6s")
            cluster.apply(json.dumps(manifest), namespace)

        # Both runs planned (the operator read the metrics then); the first step runs.
        wait_for(
            "both prepare steps placed",
            lambda: all(
                (subtasks(cluster, namespace, n).get("prepare") or {}).get("placement")
                for n in (moving, staying)
            ),
            30,
            interval=0.1,
        )
        # Other clients flood device A, over HTTP, while the first step still runs.
        for i in range(burst):
            submit(devices.a, f"other-client-{i}", OTHERS)
        _, _, info = gateway_mod.call("GET", f"{devices.a.url}/v1/backend")
        assert info["queueLength"] >= burst // 2, info
        assert not any(
            queued_on(cluster, namespace, n, devices.name_a) for n in (moving, staying)
        ), "circuits reached A before the burst: the step before them was too short"

        # The circuits are placed on the operator's last reading (no spike): some queue
        # behind the burst on A.
        wait_for(
            f"circuits of both runs queued on {devices.name_a}",
            lambda: all(
                queued_on(cluster, namespace, n, devices.name_a) for n in (moving, staying)
            ),
            60,
        )
        finished(
            cluster, namespace, moving, staying, timeout=150, record=devices.workdir / "runs.json"
        )
        moves, stays = check_common(cluster, namespace, moving, staying, devices)

    runs = {moving: moves, staying: stays}
    costs = realised_costs(runs, preset)
    text = report(f"queue spike ({time.monotonic() - started:.0f}s)", runs, costs)
    assert costs[moving].score < costs[staying].score, text
    assert moves.makespan < stays.makespan, text


def test_a_worse_calibration_day_moves_queued_circuits_and_lowers_the_cost(
    cluster: Cluster,
    namespace: str,
    own_operator: Any,
    prometheus: Prometheus,
    session_dir: Path,
) -> None:
    started = time.monotonic()
    with two_devices(cluster, prometheus, session_dir / f"gain-{namespace}", namespace) as devices:
        own_operator(
            gateway="http",
            QORCH_CLUSTER_PASS="on",
            QORCH_PROMETHEUS_URL=prometheus.url,
            QORCH_METRICS_REFRESH_SECONDS="1",
        )
        preset = ObjectivePreset.ACCURACY
        moving, staying = "drift-moves", "drift-stays"
        # Device A is in use by other clients as the workflows start (three jobs, 12 s of
        # it): the pass sends fewer circuits there, and A starts none of them before the
        # pass has seen its new calibration (else which run's first job on A ran on the
        # old day would be a coin toss).
        for i in range(3):
            submit(devices.a, f"other-client-{i}", OTHERS)

        def busy() -> bool:
            found = prometheus.query(
                f'qorch_gateway_queue_length{{quantum_backend="{devices.name_a}"}} >= 1'
            )
            return bool(found)

        wait_for(f"{devices.name_a} busy, as Prometheus sees it", busy, 10, interval=0.2)
        for name, reallocate in ((moving, True), (staying, False)):
            manifest = workflow(name, devices, reallocate=reallocate, preset=preset, prepare="2s")
            cluster.apply(json.dumps(manifest), namespace)
        wait_for(
            f"circuits of both runs queued on {devices.name_a}",
            lambda: all(
                queued_on(cluster, namespace, n, devices.name_a) for n in (moving, staying)
            ),
            60,
            interval=0.2,
        )
        # The platform team's next calibration of device A: a worse day.
        first = gateway_mod.fake_device_properties(DEVICE)
        later = gateway_mod.later_day(first)
        gateway_mod.write_calibration(devices.calibration, later)

        def switched() -> bool:
            _, _, info = gateway_mod.call("GET", f"{devices.a.url}/v1/backend")
            return bool(info["calibrationDate"] == later["last_update_date"])

        wait_for("gateway A on the later day", switched, 10, interval=0.1)
        finished(
            cluster, namespace, moving, staying, timeout=120, record=devices.workdir / "runs.json"
        )
        moves, stays = check_common(cluster, namespace, moving, staying, devices)
        assert all("1-fidelity" in m for m in moved_events(cluster, namespace, moving))

    runs = {moving: moves, staying: stays}
    costs = realised_costs(runs, preset)
    text = report(f"calibration drift ({time.monotonic() - started:.0f}s)", runs, costs)
    assert costs[moving].score < costs[staying].score, text
    assert moves.fidelity > stays.fidelity, text
