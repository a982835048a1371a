"""The planner under hostile input and faults: bounded messages, permanent errors,
unreachable gateways, revalidation, bounded names and status size. Each test here
failed on the planner before the fix it names."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

from qorch.api.backend import Provider
from qorch.api.meta import Condition
from qorch.api.workflow import SubtaskPhase, WorkflowPhase
from qorch.orchestrator import (
    BackendInfo,
    CircuitInfo,
    CreatePod,
    JobPhase,
    JobState,
    PodPhase,
    SubmitJob,
    job_id,
    pod_name,
)
from qorch.orchestrator.plan import STATUS_BUDGET_BYTES, loop_job_prefix, result_config_map
from qorch.orchestrator.text import MESSAGE_LIMIT
from tests.unit.test_plan import T0, World, circuit, classical, spec


def test_a_spec_with_120_unknown_dependencies_fails_with_a_bounded_message() -> None:
    deps = [f"missing-dependency-{i:03d}" for i in range(50)]
    subtasks = [{**classical(f"s{j}"), "dependsOn": deps} for j in range(3)]
    w = World(spec(*subtasks))
    p = w.step()  # raised pydantic's ValidationError (message over 4096) before
    assert p.status.phase is WorkflowPhase.FAILED
    valid = next(c for c in p.status.conditions if c.type == "Valid")
    assert valid.status == "False"
    assert len(valid.message) <= MESSAGE_LIMIT
    assert "missing-dependency-000" in valid.message
    assert "more" in valid.message  # says that it was cut, and how much
    Condition.model_validate(valid.model_dump())  # survives the model's own limits


def test_a_gateway_failure_with_a_huge_message_fails_the_attempt_cleanly() -> None:
    backends = {"b": BackendInfo("b", Provider.FAKE, 27)}
    w = World(spec(circuit("q"), resources={"quantumBackends": ["b"]}), backends)
    w.step()
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.ERROR, "execution failed: " + "x" * 20000)
    p = w.step()
    st = w.sub("q")
    assert st.phase is SubtaskPhase.RETRYING
    assert len(st.message) <= MESSAGE_LIMIT
    assert all(len(h.message) <= 1024 for h in st.history)
    assert all(len(e.message) <= 1024 for e in p.events)


def test_a_permanent_gateway_error_is_not_retried() -> None:
    backends = {"b": BackendInfo("b", Provider.FAKE, 27)}
    w = World(spec(circuit("q"), resources={"quantumBackends": ["b"]}), backends)
    w.step()
    w.jobs["ns.wf.q.1"] = JobState(
        "ns.wf.q.1", JobPhase.ERROR, "unbound parameter theta", permanent=True
    )
    w.step()
    assert w.sub("q").phase is SubtaskPhase.FAILED
    assert w.sub("q").attempts == 1
    assert w.status.phase is WorkflowPhase.FAILED


def test_sampler_without_measurements_and_unbound_parameters_fail_validation() -> None:
    w = World(
        spec(circuit("nomeasure"), circuit("params")),
        circuits={
            "nomeasure": CircuitInfo(num_qubits=3, depth=3, num_clbits=0),
            "params": CircuitInfo(num_qubits=3, depth=3, num_clbits=3, parameters=("theta",)),
        },
    )
    p = w.step()
    assert p.status.phase is WorkflowPhase.FAILED
    message = next(c for c in p.status.conditions if c.type == "Valid").message
    assert "spec.subtasks[0].circuit.qasm: a sampler circuit needs measurements" in message
    assert "spec.subtasks[1].circuit.qasm: unbound parameters: theta" in message
    assert not [a for a in p.actions if isinstance(a, SubmitJob | CreatePod)]


def test_an_unreachable_gateway_is_bounded_then_the_job_is_placed_elsewhere() -> None:
    backends = {
        "a": BackendInfo("a", Provider.FAKE, 27, queue_length=0),
        "b": BackendInfo("b", Provider.FAKE, 27, queue_length=5),
    }
    w = World(spec(circuit("q"), resources={"quantumBackends": ["a", "b"]}), backends)
    w.step()
    assert w.sub("q").placement.name == "a"
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.QUEUED)
    w.step()
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.UNKNOWN, "gateway unreachable")
    p = w.step()
    assert w.sub("q").phase is SubtaskPhase.SCHEDULED  # still waiting, and saying so
    assert any(e.reason == "GatewayUnreachable" for e in p.events)
    cond = next(c for c in p.status.conditions if c.type == "GatewaysReachable")
    assert cond.status == "False" and "a" in cond.message
    # Within the bound nothing is decided, and a requeue comes before the bound ends.
    w.now += dt.timedelta(seconds=30)
    p = w.step()
    assert not [a for a in p.actions if isinstance(a, SubmitJob)]
    assert p.requeue_after is not None and p.requeue_after <= dt.timedelta(seconds=31)
    # Past the bound the job is given up on, without spending the retry budget, and
    # placed again where the gateway answers.
    w.backends = {**backends, "a": replace(backends["a"], healthy=False)}
    w.now += dt.timedelta(seconds=31)
    p = w.step()
    assert any(e.reason == "JobAbandoned" for e in p.events)
    w.step()
    st = w.sub("q")
    assert st.placement.name == "b"
    assert st.attempts == 2 and st.failures == 0
    assert [a for a in w.step().actions if isinstance(a, SubmitJob)] == []  # no duplicate
    w.jobs["ns.wf.q.2"] = JobState("ns.wf.q.2", JobPhase.DONE, result={"counts": {"0": 1}})
    p = w.step()
    assert w.status.phase is WorkflowPhase.SUCCEEDED
    cond = next(c for c in p.status.conditions if c.type == "GatewaysReachable")
    assert cond.status == "True"


def test_a_job_the_gateway_forgot_is_resubmitted_with_its_remote_id_and_an_event() -> None:
    backends = {"ibm": BackendInfo("ibm", Provider.IBM, 127)}
    w = World(spec(circuit("q"), resources={"quantumBackends": ["ibm"]}), backends)
    w.step()
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.RUNNING, remote_job_id="d1abc")
    w.step()
    assert w.sub("q").remoteJobId == "d1abc"
    del w.jobs["ns.wf.q.1"]  # the gateway restarted and lost its memory
    p = w.step()
    assert SubmitJob("q", 1, "ns.wf.q.1", "ibm", remote_job_id="d1abc") in p.actions
    assert any(e.reason == "JobResubmitted" and e.warning for e in p.events)


def test_running_jobs_are_polled_faster_than_the_resync() -> None:
    backends = {"b": BackendInfo("b", Provider.AER, 30)}
    w = World(spec(circuit("q"), resources={"quantumBackends": ["b"]}), backends)
    w.step()
    w.jobs["ns.wf.q.1"] = JobState("ns.wf.q.1", JobPhase.QUEUED)
    p = w.step()
    assert p.requeue_after is not None and p.requeue_after <= dt.timedelta(seconds=1)


def test_an_edit_naming_an_unknown_backend_holds_new_launches_and_says_so() -> None:
    backends = {"b": BackendInfo("b", Provider.AER, 30)}
    w = World(
        spec(classical("a"), circuit("q", "a"), resources={"quantumBackends": ["b"]}), backends
    )
    w.step()
    w.spec = spec(classical("a"), circuit("q", "a"), resources={"quantumBackends": ["nowhere"]})
    w.generation = 2
    w.pod_phase("wf-a-1", PodPhase.SUCCEEDED)
    p = w.step()
    valid = next(c for c in p.status.conditions if c.type == "Valid")
    assert (valid.status, valid.reason) == ("False", "InvalidUpdate")
    assert "unknown QuantumBackend 'nowhere'" in valid.message
    assert w.sub("a").phase is SubtaskPhase.SUCCEEDED  # what ran is kept
    assert w.sub("q").phase is SubtaskPhase.PENDING  # nothing new starts (no silent fallback)
    assert not [a for a in p.actions if isinstance(a, SubmitJob | CreatePod)]
    assert any(e.reason == "InvalidUpdate" and e.warning for e in p.events)
    # Fixing the edit lets the workflow go on.
    w.spec = spec(classical("a"), circuit("q", "a"), resources={"quantumBackends": ["b"]})
    w.generation = 3
    p = w.step()
    assert next(c for c in p.status.conditions if c.type == "Valid").status == "True"
    assert [a for a in p.actions if isinstance(a, SubmitJob)]


def test_child_names_stay_within_kubernetes_limits_for_the_longest_names() -> None:
    wf, ns, sub = "w" * 253, "n" * 63, "s" * 30
    assert len(pod_name(wf, sub, 10)) <= 253
    assert pod_name(wf, sub, 10) != pod_name(wf[:-1] + "x", sub, 10)
    assert pod_name(wf, sub, 10).endswith(f"-{sub}-10")
    assert len(job_id(ns, wf, sub, 10)) <= 253
    # A variational loop's batch jobs: the prefix leaves room for the largest batch number.
    last_batch = f"{loop_job_prefix(ns, wf, sub, 10)}.e{2 * 10000 + 10}"
    assert len(last_batch) <= 253 and last_batch.split(".")[-3:] == [sub, "10", "e20010"]
    assert loop_job_prefix("ns", "wf", "vqe", 1) == job_id("ns", "wf", "vqe", 1) == "ns.wf.vqe.1"
    assert len(result_config_map(wf, sub)) <= 253
    assert pod_name("short", "a", 1) == "short-a-1"  # short names are unchanged


def test_status_stays_under_its_budget_with_200_subtasks_at_every_limit() -> None:
    big_result = {"counts": {format(i, "012b"): i for i in range(300)}}  # ~5 KiB
    assert len(json.dumps(big_result)) > 4096
    n = 200
    w = World(spec(*[classical(f"s{i:03d}", retries=10) for i in range(n)]))
    w.step()
    for _ in range(10):  # ten failed attempts each, long messages, full histories
        for i in range(n):
            st = w.sub(f"s{i:03d}")
            if st.phase is SubtaskPhase.RETRYING:
                continue
            w.pods[st.podName] = PodStateFailed(st.podName, f"s{i:03d}", st.attempts)
        w.now += dt.timedelta(minutes=10)
        w.step()
    for i in range(n):
        st = w.sub(f"s{i:03d}")
        if st.podName in w.pods:
            w.pod_phase(st.podName, PodPhase.SUCCEEDED, result=big_result)
    p = w.step()
    size = len(json.dumps(p.status.model_dump(mode="json"), separators=(",", ":")))
    assert size <= STATUS_BUDGET_BYTES, size


def PodStateFailed(name: str, subtask: str, attempt: int) -> object:  # noqa: N802
    from qorch.orchestrator import PodState

    return PodState(name, subtask, attempt, PodPhase.FAILED, node="n", message="E" * 4000)


def test_an_unreadable_configmap_is_waited_for_then_fails_naming_it() -> None:
    w = World(
        spec(circuit("q")),
        circuits={"q": CircuitInfo(error="ConfigMap 'src' cannot be read (404)", transient=True)},
    )
    w.created = T0
    p = w.step()
    valid = next(c for c in p.status.conditions if c.type == "Valid")
    assert (valid.status, valid.reason) == ("Unknown", "WaitingForSource")
    assert p.status.phase is WorkflowPhase.PENDING and not p.actions
    assert p.requeue_after is not None
    # The ConfigMap shows up: the workflow goes on as if nothing happened.
    w.circuits = {"q": CircuitInfo(num_qubits=3, depth=3)}
    assert w.step().status.phase is WorkflowPhase.RUNNING
    # One that never shows up fails, naming it, once the wait is over.
    w2 = World(
        spec(circuit("q")),
        circuits={"q": CircuitInfo(error="ConfigMap 'src' cannot be read (404)", transient=True)},
    )
    w2.created = T0
    w2.now = T0 + dt.timedelta(seconds=121)
    p = w2.step()
    assert p.status.phase is WorkflowPhase.FAILED
    assert (
        "ConfigMap 'src' cannot be read"
        in next(c for c in p.status.conditions if c.type == "Valid").message
    )


def test_a_sampler_that_declares_bits_but_never_measures_fails_validation() -> None:
    w = World(
        spec(circuit("q")),
        circuits={"q": CircuitInfo(num_qubits=2, depth=2, num_clbits=2, measurements=0)},
    )
    p = w.step()
    assert p.status.phase is WorkflowPhase.FAILED
    valid = next(c for c in p.status.conditions if c.type == "Valid")
    assert "spec.subtasks[0].circuit.qasm: a sampler circuit needs measurements" in valid.message


def test_strings_a_pod_would_refuse_fail_validation_naming_them() -> None:
    bad_step = {
        "name": "a",
        "classical": {
            "image": "busybox",
            "annotations": {"not a valid/key!": "x"},
            "env": {"A=B": "x"},
        },
    }
    pools = [{"name": "cpu", "nodeSelector": {"bad key!": "x", "ok": "not valid!"}}]
    w = World(spec(bad_step, resources={"classicalPools": pools}))
    p = w.step()
    assert p.status.phase is WorkflowPhase.FAILED and not p.actions
    message = next(c for c in p.status.conditions if c.type == "Valid").message
    assert "spec.subtasks[0].classical.annotations['not a valid/key!']" in message
    assert "spec.subtasks[0].classical.env['A=B']" in message
    assert "spec.resources.classicalPools[0].nodeSelector['bad key!']: not a valid label" in message
    assert "'not valid!' is not a valid label value" in message


def test_a_pod_the_apiserver_refuses_fails_the_subtask_for_good() -> None:
    from qorch.orchestrator import PodState

    w = World(spec(classical("a")))
    w.step()
    w.pods["wf-a-1"] = PodState(
        "wf-a-1", "a", 1, PodPhase.FAILED, message="the apiserver refused", permanent=True
    )
    w.step()
    st = w.sub("a")
    assert st.phase is SubtaskPhase.FAILED and st.attempts == 1
    assert "the apiserver refused (permanent: not retried)" in st.message
