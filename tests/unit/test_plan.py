"""The pure planner, driven through whole lifecycles without any cluster."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from qorch.api.backend import Provider
from qorch.api.workflow import (
    HybridWorkflowSpec,
    HybridWorkflowStatus,
    Placement,
    ResourceKind,
    SubtaskPhase,
    WorkflowPhase,
)
from qorch.orchestrator import (
    BackendInfo,
    CancelJob,
    CircuitInfo,
    CreatePod,
    DeletePod,
    JobPhase,
    JobState,
    Plan,
    PlannerConfig,
    PodPhase,
    PodState,
    ReleasePod,
    RulePolicy,
    StoreResult,
    SubmitJob,
    WorkflowSnapshot,
    plan,
)
from qorch.orchestrator.plan import RoutePod
from qorch.orchestrator.snapshot import MetricsView, MoveRequest

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
GHZ = "OPENQASM 3.0; qubit[3] q; h q[0]; cx q[0], q[1]; cx q[1], q[2];"


def spec(*subtasks: dict[str, Any], **extra: Any) -> HybridWorkflowSpec:
    return HybridWorkflowSpec.model_validate({"subtasks": list(subtasks), **extra})


def classical(name: str, *deps: str, gpu: int = 0, retries: int = 2) -> dict[str, Any]:
    return {
        "name": name,
        "dependsOn": list(deps),
        "maxRetries": retries,
        "classical": {"image": "busybox", "resources": {"gpu": gpu}},
    }


def circuit(name: str, *deps: str) -> dict[str, Any]:
    return {"name": name, "dependsOn": list(deps), "circuit": {"qasm": GHZ}}


class World:
    """A tiny fake cluster: applies plans to pods/jobs dicts the way the apiserver would."""

    def __init__(
        self,
        s: HybridWorkflowSpec,
        backends: dict[str, BackendInfo] | None = None,
        circuits: dict[str, CircuitInfo] | None = None,
    ) -> None:
        self.spec = s
        self.status = HybridWorkflowStatus()
        self.now = T0
        self.pods: dict[str, PodState] = {}
        self.jobs: dict[str, JobState] = {}
        self.backends = backends or {}
        self.circuits = (
            circuits
            if circuits is not None
            else {st.name: CircuitInfo(num_qubits=3, depth=3) for st in s.subtasks if st.circuit}
        )
        self.config = PlannerConfig(retry_backoff_base=dt.timedelta(seconds=10))
        self.metrics: MetricsView | None = None
        self.generation = 1
        self.created: dt.datetime | None = None
        # The cluster pass's word, stood in for: moves, placements, held, whether it ran.
        self.moves: dict[str, MoveRequest] = {}
        self.placements: dict[str, Placement] = {}
        self.held: dict[str, str] = {}
        self.cluster_pass = False

    def snapshot(self) -> WorkflowSnapshot:
        return WorkflowSnapshot(
            namespace="ns",
            name="wf",
            generation=self.generation,
            spec=self.spec,
            status=self.status,
            now=self.now,
            pods=dict(self.pods),
            jobs=dict(self.jobs),
            backends=self.backends,
            circuits=self.circuits,
            metrics=self.metrics,
            config=self.config,
            created=self.created,
            moves=dict(self.moves),
            placements=dict(self.placements),
            held=dict(self.held),
            cluster_pass=self.cluster_pass,
        )

    def step(self) -> Plan:
        p = plan(self.snapshot(), RulePolicy())
        self.status = p.status
        for a in p.actions:
            if isinstance(a, CreatePod) and a.pod_name not in self.pods:
                self.pods[a.pod_name] = PodState(
                    a.pod_name, a.subtask, a.attempt, PodPhase.GATED,
                    variational=a.route is not None, route=a.route, route_moves=a.moves,
                )  # fmt: skip
            elif isinstance(a, ReleasePod):
                pod = self.pods[a.pod_name]
                if pod.phase is PodPhase.GATED:
                    self.pods[a.pod_name] = replace(
                        pod, phase=PodPhase.PENDING, pool=a.pool, pool_moves=a.moves
                    )
            elif isinstance(a, RoutePod) and a.pod_name in self.pods:
                pod = self.pods[a.pod_name]
                self.pods[a.pod_name] = replace(pod, route=a.route, route_moves=a.moves)
            elif isinstance(a, DeletePod):
                self.pods.pop(a.pod_name, None)
            elif isinstance(a, SubmitJob):
                self.jobs.setdefault(a.job_id, JobState(a.job_id, JobPhase.QUEUED))
            elif isinstance(a, CancelJob):
                self.jobs[a.job_id] = JobState(a.job_id, JobPhase.CANCELLED)
        return p

    def pod_phase(self, name: str, phase: PodPhase, **kw: Any) -> None:
        self.pods[name] = replace(self.pods[name], phase=phase, node="kwok-cpu-0", **kw)

    def sub(self, name: str) -> Any:
        return next(s for s in self.status.subtasks if s.name == name)


def test_three_stage_dag_runs_in_order_and_succeeds() -> None:
    w = World(spec(classical("a"), classical("b", "a"), classical("c", "b")))
    p = w.step()
    assert [type(a) for a in p.actions] == [CreatePod, ReleasePod]
    # Created on its pool: Scheduled in the first status write, its history saying both.
    assert w.sub("a").phase is SubtaskPhase.SCHEDULED
    assert [h.event for h in w.sub("a").history] == ["Placed", "Released"]
    assert w.sub("b").phase is SubtaskPhase.PENDING
    assert w.status.phase is WorkflowPhase.RUNNING
    for name in ("a", "b", "c"):
        pod = f"wf-{name}-1"
        assert pod in w.pods, f"{name} not launched"
        w.step()
        assert w.sub(name).phase is SubtaskPhase.SCHEDULED
        w.pod_phase(pod, PodPhase.RUNNING)
        w.step()
        assert w.sub(name).phase is SubtaskPhase.RUNNING
        w.pod_phase(pod, PodPhase.SUCCEEDED, result={"answer": 42})
        w.step()
        assert w.sub(name).phase is SubtaskPhase.SUCCEEDED
        assert w.sub(name).result == {"answer": 42}
    assert w.status.phase is WorkflowPhase.SUCCEEDED
    assert w.status.progress == "3/3"
    assert {c.type: c.status for c in w.status.conditions} == {"Valid": "True", "Succeeded": "True"}
    assert len(w.pods) == 3


def test_replaying_a_plan_creates_nothing_new() -> None:
    w = World(spec(classical("a")))
    first = w.step()
    again = plan(replace(w.snapshot(), status=HybridWorkflowStatus()), RulePolicy())
    # Planning again from the empty status (a crash before the status write) targets the
    # same deterministic pod name, so the apiserver answers 409 instead of a second pod.
    names = {a.pod_name for a in again.actions if isinstance(a, CreatePod)}
    assert names == {a.pod_name for a in first.actions if isinstance(a, CreatePod)}


def test_gpu_step_goes_to_gpu_pool_and_cpu_step_to_cpu_pool() -> None:
    w = World(spec(classical("cpu"), classical("gpu", gpu=1)))
    p = w.step()
    pools = {a.subtask: a.pool for a in p.actions if isinstance(a, CreatePod)}
    assert pools == {"cpu": "cpu", "gpu": "gpu"}


def test_failed_attempt_is_retried_with_backoff_then_gives_up() -> None:
    w = World(spec(classical("a", retries=1)))
    w.step()
    w.pod_phase("wf-a-1", PodPhase.FAILED, message="exit code 3")
    w.step()
    st = w.sub("a")
    assert st.phase is SubtaskPhase.RETRYING and "exit code 3" in st.message
    p = w.step()
    assert not p.actions, "relaunched before the backoff elapsed"
    assert p.requeue_after is not None and p.requeue_after <= dt.timedelta(seconds=10)
    w.now += dt.timedelta(seconds=11)
    w.step()
    assert w.sub("a").attempts == 2 and "wf-a-2" in w.pods
    w.pod_phase("wf-a-2", PodPhase.FAILED, message="exit code 3")
    w.step()
    assert w.sub("a").phase is SubtaskPhase.FAILED
    assert w.status.phase is WorkflowPhase.FAILED
    cond = {c.type: c for c in w.status.conditions}["Succeeded"]
    assert cond.status == "False" and cond.reason == "SubtaskFailed"
    assert "gave up after 2 failed attempts" in cond.message


def test_failure_skips_dependents_and_stops_running_siblings() -> None:
    w = World(spec(classical("a", retries=0), classical("b"), classical("c", "a")))
    w.step()
    w.pod_phase("wf-b-1", PodPhase.RUNNING)
    w.pod_phase("wf-a-1", PodPhase.FAILED, message="boom")
    p = w.step()
    assert DeletePod("wf-b-1", "workflow failed") in p.actions
    assert w.sub("c").phase is SubtaskPhase.SKIPPED
    assert w.sub("b").phase is SubtaskPhase.FAILED
    assert w.status.phase is WorkflowPhase.FAILED


def test_lost_pod_is_recreated_within_grace_then_counted_as_failed_attempt() -> None:
    w = World(spec(classical("a")))
    w.step()
    del w.pods["wf-a-1"]
    p = w.step()
    assert CreatePod("a", 1, "wf-a-1", "cpu") in p.actions
    del w.pods["wf-a-1"]
    w.now += dt.timedelta(seconds=31)
    w.step()
    assert w.sub("a").phase is SubtaskPhase.RETRYING
    assert "disappeared" in w.sub("a").message


def test_circuit_goes_to_the_quantum_backend_with_the_shortest_queue() -> None:
    backends = {
        "busy": BackendInfo("busy", Provider.FAKE, 27, queue_length=40),
        "idle": BackendInfo("idle", Provider.FAKE, 27, queue_length=2),
        "down": BackendInfo("down", Provider.FAKE, 27, healthy=False),
    }
    w = World(spec(circuit("q"), resources={"quantumBackends": ["busy", "idle", "down"]}), backends)
    p = w.step()
    assert p.actions == (SubmitJob("q", 1, "ns.wf.q.1", "idle"),)
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.RUNNING)
    w.step()
    assert w.sub("q").phase is SubtaskPhase.RUNNING
    w.jobs["ns.wf.q.1"] = JobState(
        "ns.wf.q.1", JobPhase.DONE, result={"counts": {"000": 5}}, qpu_seconds=2.0
    )
    w.step()
    assert w.sub("q").result == {"counts": {"000": 5}}
    assert w.status.phase is WorkflowPhase.SUCCEEDED


def test_circuit_without_backends_is_simulated_on_the_smallest_pool_that_fits() -> None:
    w = World(spec(circuit("q")))
    p = w.step()
    assert [a for a in p.actions if isinstance(a, CreatePod)] == [
        CreatePod("q", 1, "wf-q-1", "cpu", num_qubits=3)
    ]
    w2 = World(spec(circuit("q")), circuits={"q": CircuitInfo(num_qubits=31, depth=5)})
    p2 = w2.step()
    assert [a.pool for a in p2.actions if isinstance(a, CreatePod)] == ["gpu"]


def test_cost_of_qpu_time_is_accumulated() -> None:
    backends = {"ibm": BackendInfo("ibm", Provider.IBM, 127, price_per_qpu_second=1.6)}
    w = World(spec(circuit("q"), resources={"quantumBackends": ["ibm"]}), backends)
    w.step()
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.DONE, qpu_seconds=2.5)
    w.step()
    assert w.status.costUSD == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("subtasks", "circuits", "resources", "field", "reason"),
    [
        (
            [classical("a", "ghost")],
            {},
            {},
            "spec.subtasks[0].dependsOn[0]",
            "unknown subtask 'ghost'",
        ),
        (
            [classical("a", "b"), classical("b", "a")],
            {},
            {},
            "spec.subtasks",
            "dependency cycle: a -> b -> a",
        ),
        ([classical("a", "a")], {}, {}, "spec.subtasks[0].dependsOn[0]", "depends on itself"),
        (
            [circuit("q")],
            {"q": CircuitInfo(error="OpenQASM does not parse: bad token")},
            {},
            "spec.subtasks[0].circuit.qasm",
            "does not parse",
        ),
        (
            [circuit("q")],
            {"q": CircuitInfo(num_qubits=40)},
            {},
            "spec.subtasks[0].circuit.qasm",
            "needs 40 qubits but the largest allowed resource has 32",
        ),
        (
            [classical("a")],
            {},
            {"quantumBackends": ["nowhere"]},
            "spec.resources.quantumBackends[0]",
            "unknown QuantumBackend 'nowhere'",
        ),
    ],
)
def test_invalid_specs_fail_fast_naming_the_field(
    subtasks: list[dict[str, Any]],
    circuits: dict[str, CircuitInfo],
    resources: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    w = World(spec(*subtasks, resources=resources), circuits=circuits)
    p = w.step()
    assert p.actions == ()
    assert w.status.phase is WorkflowPhase.FAILED
    cond = {c.type: c for c in w.status.conditions}["Valid"]
    assert cond.status == "False" and cond.reason == "InvalidSpec"
    assert field in cond.message and reason in cond.message, cond.message
    assert all(s.phase is SubtaskPhase.SKIPPED for s in w.status.subtasks)


def test_terminal_workflow_is_left_alone() -> None:
    w = World(spec(classical("a")))
    w.status = HybridWorkflowStatus(phase=WorkflowPhase.SUCCEEDED)
    assert w.step().actions == ()


def test_history_and_events_record_every_decision() -> None:
    w = World(spec(classical("a")))
    p = w.step()
    assert [e.reason for e in p.events] == ["Validated", "Placed"]
    assert [h.event for h in w.sub("a").history] == ["Placed", "Released"]
    assert w.sub("a").placement is not None
    assert w.sub("a").placement.kind is ResourceKind.POOL


def test_prometheus_outage_is_a_condition_not_a_crash() -> None:
    w = World(spec(classical("a")))
    w.metrics = MetricsView(available=False, reason="Prometheus at http://p:9090 unavailable")
    p = w.step()
    cond = {c.type: c for c in w.status.conditions}["MetricsAvailable"]
    assert cond.status == "False" and cond.reason == "PrometheusUnavailable"
    assert "deciding from pod and job states" in cond.message
    assert any(isinstance(a, CreatePod) for a in p.actions)  # work goes on
    w.metrics = MetricsView(available=True)
    w.step()
    cond = {c.type: c for c in w.status.conditions}["MetricsAvailable"]
    assert cond.status == "True"


def test_large_results_go_to_a_config_map() -> None:
    w = World(spec(classical("a")))
    w.step()
    big = {"counts": {format(i, "012b"): i for i in range(500)}, "shots": 124750}
    w.pod_phase("wf-a-1", PodPhase.SUCCEEDED, result=big)
    p = w.step()
    store = [a for a in p.actions if isinstance(a, StoreResult)]
    assert store == [StoreResult("a", "wf-a-result", big)]
    assert w.sub("a").result == {
        "shots": 124750,
        "configMapRef": {"name": "wf-a-result", "key": "result.json"},
    }


def test_invalid_transition_is_refused() -> None:
    from qorch.api.workflow import SubtaskPhase as P
    from qorch.orchestrator.lifecycle import InvalidTransitionError, check_transition

    with pytest.raises(InvalidTransitionError, match="Succeeded -> Running"):
        check_transition("a", P.SUCCEEDED, P.RUNNING)
    check_transition("a", P.RUNNING, P.SUCCEEDED)
