"""The planner's side of variational subtasks: the optimizer pod, its route, re-routing a
running loop without a restart, its progress in the status, and dependency inputs."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from qorch.api.backend import Provider
from qorch.api.workflow import Placement, ResourceKind, SubtaskPhase, VariationalProgress
from qorch.orchestrator import BackendInfo, CircuitInfo, CreatePod, PodPhase, ReleasePod
from qorch.orchestrator.plan import DependencyResult, RoutePod
from qorch.orchestrator.prices import CPU_POD_USD_PER_HOUR
from qorch.orchestrator.snapshot import MoveRequest
from tests.unit.test_plan import World, classical, spec

ANSATZ = "OPENQASM 3.0; input float[64] t; qubit[2] q; ry(t) q[0]; cx q[0], q[1];"
BACKENDS = {
    "qa": BackendInfo("qa", Provider.AER, 4, queue_length=0),
    "qb": BackendInfo("qb", Provider.AER, 4, queue_length=5),
}


def vqe(name: str = "vqe", *deps: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dependsOn": list(deps),
        "variational": {
            "qasm": ANSATZ,
            "hamiltonian": [{"pauli": "ZZ", "coefficient": 1.0}],
            **extra,
        },
    }


def world(*subtasks: dict[str, Any], pool_qubits: int = 1) -> World:
    s = spec(
        *subtasks,
        resources={
            "quantumBackends": ["qa", "qb"],
            "classicalPools": [
                {"name": "gpu", "gpu": True, "maxQubits": 30},
                {"name": "cpu", "maxQubits": pool_qubits},
            ],
        },
    )
    circuits = {"vqe": CircuitInfo(num_qubits=2, depth=2, parameters=("t",))}
    return World(s, BACKENDS, circuits)


def backend(name: str) -> Placement:
    return Placement(kind=ResourceKind.BACKEND, name=name)


def test_the_optimizer_runs_on_a_cpu_pool_and_its_batches_go_to_the_chosen_backend() -> None:
    w = world(vqe())
    p = w.step()
    create = next(a for a in p.actions if isinstance(a, CreatePod))
    assert create.pool == "cpu" and create.route == backend("qa")  # the shortest queue
    assert ReleasePod(create.pod_name, "cpu") in p.actions
    st = w.sub("vqe")
    assert st.placement == Placement(kind=ResourceKind.POOL, name="cpu")
    assert st.route == backend("qa")


def test_a_loop_whose_batches_fit_no_backend_is_simulated_in_its_own_pod() -> None:
    w = world(vqe(), pool_qubits=28)
    w.backends = {n: replace(b, healthy=False) for n, b in BACKENDS.items()}
    create = next(a for a in w.step().actions if isinstance(a, CreatePod))
    assert create.pool == "cpu" and create.route == Placement(kind=ResourceKind.POOL, name="cpu")


def test_a_running_loop_is_rerouted_by_one_patch_and_shows_its_progress() -> None:
    w = world(vqe())
    w.step()
    pod = w.sub("vqe").podName
    progress = VariationalProgress(optimizer="COBYLA", iterations=4, evaluations=4, energy=-0.5,
                                   bestEnergy=-0.6, batches={"qa": 4})  # fmt: skip
    w.pod_phase(pod, PodPhase.RUNNING, progress=progress)
    p = w.step()
    st = w.sub("vqe")
    assert st.phase is SubtaskPhase.RUNNING and st.progress == progress
    assert p.requeue_after is not None  # progress is read again soon

    w.moves = {"vqe": MoveRequest(backend("qb"), "cost here 1.0 vs there 0.2")}
    p = w.step()
    assert p.actions == (RoutePod(pod, backend("qb"), moves=1),)
    st = w.sub("vqe")
    assert st.route == backend("qb") and st.moves == 1 and st.attempts == 1
    assert st.history[-1].event == "Rerouted"
    assert any(e.reason == "Rerouted" and "from qa to qb" in e.message for e in p.events)
    # Asked again (the pass has not seen the new route yet): nothing more happens.
    assert not any(isinstance(a, RoutePod) for a in w.step().actions)
    # A pool other than its pod's would need another pod: not a re-route.
    w.moves = {"vqe": MoveRequest(Placement(kind=ResourceKind.POOL, name="gpu"), "faster")}
    assert not any(isinstance(a, RoutePod) for a in w.step().actions)


def test_a_reroute_survives_a_lost_status_write_or_a_lost_patch() -> None:
    w = world(vqe())
    w.step()
    pod = w.sub("vqe").podName
    w.pod_phase(pod, PodPhase.RUNNING)
    w.step()
    before = w.status.model_copy(deep=True)
    w.moves = {"vqe": MoveRequest(backend("qb"), "cheaper")}
    w.step()  # the pod's annotation is patched ...
    assert (w.pods[pod].route, w.pods[pod].route_moves) == (backend("qb"), 1)
    w.status = before  # ... and the status write after it lost (the operator died)
    w.moves = {}
    p = w.step()
    st = w.sub("vqe")
    assert st.route == backend("qb") and st.moves == 1  # read back, counted once
    assert st.history[-1].event == "Rerouted" and "read back" in st.history[-1].message
    assert not any(isinstance(a, RoutePod) for a in p.actions)
    w.step()
    assert w.sub("vqe").moves == 1

    # The other way round: the status was written, the patch was not (the apiserver
    # refused it for a moment). The annotation is patched again; nothing is counted twice.
    w.moves = {"vqe": MoveRequest(backend("qa"), "cheaper again")}
    w.step()
    w.moves = {}
    w.pods[pod] = replace(w.pods[pod], route=backend("qb"), route_moves=1)
    p = w.step()
    assert p.actions == (RoutePod(pod, backend("qa"), moves=2),)
    assert w.sub("vqe").route == backend("qa") and w.sub("vqe").moves == 2


def test_reroutes_respect_the_move_cap_and_disabled_reallocation() -> None:
    w = world(vqe())
    w.spec = w.spec.model_copy(
        update={"reallocation": w.spec.reallocation.model_copy(update={"enabled": False})}
    )
    w.step()
    w.pod_phase(w.sub("vqe").podName, PodPhase.RUNNING)
    w.moves = {"vqe": MoveRequest(backend("qb"), "cheaper")}
    assert not any(isinstance(a, RoutePod) for a in w.step().actions)
    assert w.sub("vqe").moves == 0


def test_the_final_progress_comes_from_the_result_and_dependents_get_it_as_input() -> None:
    w = world(vqe(), classical("report", "vqe"))
    w.step()
    pod = w.sub("vqe").podName
    result = {"energy": -1.85, "lastEnergy": -1.84, "optimizer": "COBYLA", "iterations": 40,
              "evaluations": 40, "batches": {"qa": 30, "qb": 10}}  # fmt: skip
    w.pod_phase(pod, PodPhase.SUCCEEDED, result=result)
    p = w.step()
    st = w.sub("vqe")
    assert st.phase is SubtaskPhase.SUCCEEDED
    assert st.progress is not None and st.progress.bestEnergy == -1.85
    assert st.progress.batches == {"qa": 30, "qb": 10}
    create = next(a for a in p.actions if isinstance(a, CreatePod))
    assert create.subtask == "report"
    assert create.inputs == (DependencyResult("vqe", result=result),)


def test_the_qpu_time_a_loop_is_billed_counts_in_costusd_as_its_batches_run() -> None:
    w = world(vqe(maxIterations=3), classical("report", "vqe"))
    w.backends = {
        "qa": replace(BACKENDS["qa"], price_per_qpu_second=2.0),
        "qb": replace(BACKENDS["qb"], price_per_qpu_second=0.5),
    }
    w.step()
    pod = w.sub("vqe").podName

    def report(**seconds: float) -> None:
        progress = VariationalProgress(optimizer="COBYLA", evaluations=3, qpuSeconds=seconds)
        w.pod_phase(pod, PodPhase.RUNNING, progress=progress)
        w.step()

    report(qa=3.0)
    assert w.status.costUSD == 6.0 and w.sub("vqe").progress.spentUSD == 6.0
    report(qa=3.0)  # read again: nothing new billed
    assert w.status.costUSD == 6.0
    report(qa=4.0, qb=2.0)  # re-routed meanwhile: each backend at its own price
    assert w.status.costUSD == 9.0 and w.sub("vqe").progress.spentUSD == 9.0
    report(qa=1.0)  # a lagging read, then the right one again: nothing priced twice
    report(qa=4.0, qb=2.0)
    assert w.status.costUSD == 9.0 and w.sub("vqe").progress.spentUSD == 9.0
    # The result's figures are the last word: what was billed since the last poll counts.
    result = {"energy": -1.0, "evaluations": 3, "qpuSeconds": {"qa": 4.0, "qb": 6.0}}
    w.pod_phase(pod, PodPhase.SUCCEEDED, result=result, usage={"wallSeconds": 36.0})
    w.step()
    st = w.sub("vqe")
    assert st.phase is SubtaskPhase.SUCCEEDED and st.progress.spentUSD == 11.0
    pod_usd = 36.0 * CPU_POD_USD_PER_HOUR / 3600  # the optimizer pod's time on the CPU pool
    assert w.status.costUSD == pytest.approx(11.0 + pod_usd, abs=1e-6)
    assert st.actual is not None
    assert st.actual.costUSD == pytest.approx(11.0 + pod_usd, abs=1e-6)


def test_a_new_attempt_of_a_loop_starts_its_progress_afresh_and_keeps_what_was_spent() -> None:
    w = world({**vqe(), "maxRetries": 1})
    w.backends = {n: replace(b, price_per_qpu_second=1.0) for n, b in BACKENDS.items()}
    w.step()
    first = w.sub("vqe").podName
    progress = VariationalProgress(evaluations=5, qpuSeconds={"qa": 5.0})
    w.pod_phase(first, PodPhase.RUNNING, progress=progress)
    w.step()
    w.pod_phase(first, PodPhase.FAILED, message="OOMKilled")
    w.step()
    w.now += dt.timedelta(seconds=11)  # the retry's backoff
    w.step()
    st = w.sub("vqe")
    assert st.attempts == 2 and st.progress is None
    assert w.status.costUSD == 5.0  # spent is spent
    w.pod_phase(st.podName, PodPhase.RUNNING, progress=VariationalProgress(qpuSeconds={"qa": 1.0}))
    w.step()
    assert w.status.costUSD == 6.0 and w.sub("vqe").progress.spentUSD == 1.0


def test_a_large_dependency_result_is_read_from_its_config_map() -> None:
    w = world(vqe(), classical("report", "vqe"))
    w.step()
    big = {"energy": -1.0, "energies": list(range(2000))}
    w.pod_phase(w.sub("vqe").podName, PodPhase.SUCCEEDED, result=big)
    p = w.step()
    create = next(a for a in p.actions if isinstance(a, CreatePod))
    assert create.inputs == (DependencyResult("vqe", config_map="wf-vqe-result"),)


def test_progress_from_a_pod_is_finite_and_bounded_or_refused() -> None:
    import math

    import pytest
    from pydantic import ValidationError

    for bad in (
        {"energy": math.nan},
        {"bestEnergy": math.inf},
        {"evaluations": 2**64},
        {"batches": {"x" * 64: 1}},
        {"batches": {"qa": -1}},
    ):
        with pytest.raises(ValidationError):
            VariationalProgress.model_validate(bad)
    ok = VariationalProgress.model_validate({"energy": -1.5, "batches": {"qa": 3}})
    assert ok.model_dump(mode="json")["energy"] == -1.5


def test_a_loop_whose_optimizer_requests_gpus_runs_on_a_gpu_pool_or_is_refused() -> None:
    w = world(vqe(resources={"gpu": 1}), pool_qubits=28)
    create = next(a for a in w.step().actions if isinstance(a, CreatePod))
    assert create.pool == "gpu" and create.route == backend("qa")
    # Simulated in its pod (no backend healthy): only on a GPU pool, never the CPU one.
    w = world(vqe(resources={"gpu": 1}), pool_qubits=28)
    w.backends = {n: replace(b, healthy=False) for n, b in BACKENDS.items()}
    create = next(a for a in w.step().actions if isinstance(a, CreatePod))
    assert create.pool == "gpu" and create.route == Placement(kind=ResourceKind.POOL, name="gpu")
    # No GPU pool at all: the spec names the problem, and nothing is created.
    s = spec(vqe(resources={"gpu": 1}), resources={"quantumBackends": ["qa"],
             "classicalPools": [{"name": "cpu", "maxQubits": 28}]})  # fmt: skip
    bad = World(s, BACKENDS, {"vqe": CircuitInfo(num_qubits=2, depth=2, parameters=("t",))})
    p = bad.step()
    assert not any(isinstance(a, CreatePod) for a in p.actions)
    assert bad.status.phase.value == "Failed"
    assert any("requests GPUs" in c.message for c in bad.status.conditions)
