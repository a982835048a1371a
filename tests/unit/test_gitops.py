"""The Argo CD health check (deploy/argocd/hybridworkflow-health.lua), run as Argo CD runs it
on HybridWorkflows whose status the operator's own planner wrote.

Argo CD (util/lua/lua.go) runs a custom health script in gopher-lua, a Lua 5.1, with the
base, table and a restricted os library only, the object as the global ``obj`` (JSON
arrays as 1-based tables, nulls absent), and takes the table the chunk returns: its
``status`` must be one of Healthy, Progressing, Degraded, Suspended, Missing, Unknown.
The runtime here is lupa's Lua 5.1 with the same libraries (and no string methods).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from lupa.lua51 import LuaError, LuaRuntime

from qorch.api.backend import Provider
from qorch.api.meta import API_VERSION
from qorch.api.workflow import (
    HybridWorkflow,
    HybridWorkflowSpec,
    Placement,
    ResourceKind,
    SubtaskPhase,
    WorkflowPhase,
)
from qorch.orchestrator import BackendInfo, CircuitInfo, JobPhase, JobState, PodPhase
from qorch.orchestrator.snapshot import MoveRequest
from tests.unit.test_plan import World

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "argocd" / "hybridworkflow-health.lua"
CM_PATCH = REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml"
HEALTH_KEY = "resource.customizations.health.qorch.io_HybridWorkflow"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
# What Argo CD opens for a script without useOpenLibs: base and table (os: a few safe
# functions, which the script does not need, so leaving them out here is stricter).
BASE_AND_TABLE = (
    "assert", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal", "rawget",
    "rawset", "select", "getmetatable", "setmetatable", "tonumber", "tostring", "type",
    "unpack", "xpcall", "_VERSION", "table",
)  # fmt: skip

Health = tuple[str, str]


class ArgoLua:
    """One Lua 5.1 state that runs the health script in a sandbox like Argo CD's."""

    def __init__(self, script: str) -> None:
        self.lua = LuaRuntime(unpack_returned_tuples=False, register_eval=False)
        self.script = script
        # Argo CD never opens the string library: strings have no methods there.
        self.lua.execute('getmetatable("").__index = nil')
        self._run: Callable[..., Any] = self.lua.eval(
            """
            function(src, obj, names)
              local env = {}
              for _, name in ipairs(names) do env[name] = _G[name] end
              env._G = env
              env.obj = obj
              local chunk, err = loadstring(src, "health.lua")
              if chunk == nil then error(err) end
              setfenv(chunk, env)
              return chunk()
            end
            """
        )

    def to_lua(self, value: Any) -> Any:
        """JSON as Argo CD decodes it: objects and arrays (1-based) are tables, nulls absent."""
        if isinstance(value, dict):
            return self.lua.table_from(
                {k: self.to_lua(v) for k, v in value.items() if v is not None}
            )
        if isinstance(value, list):
            return self.lua.table_from([self.to_lua(v) for v in value if v is not None])
        return value

    def health(self, obj: dict[str, Any]) -> Health:
        names = self.lua.table_from(BASE_AND_TABLE)
        hs = self._run(self.script, self.to_lua(obj), names)
        assert self.lua.eval("type")(hs) == "table", f"the script returned {hs!r}"
        out = dict(hs.items())
        assert set(out) <= {"status", "message"}, out
        assert out.get("status") in ARGO_STATUSES, out
        assert isinstance(out.get("message", ""), str), out
        return out["status"], out.get("message", "")


@pytest.fixture(scope="module")
def argo() -> ArgoLua:
    return ArgoLua(SCRIPT.read_text())


def example_spec(name: str, **resources: Any) -> HybridWorkflowSpec:
    doc = yaml.safe_load((REPO / "examples" / name).read_text())
    spec = doc["spec"]
    if resources:
        spec["resources"] = {**spec.get("resources", {}), **resources}
    return HybridWorkflowSpec.model_validate(spec)


def three_stage(**resources: Any) -> World:
    return World(example_spec("three-stage-dag.yaml", **resources))


def workflow(w: World, *, status: bool = True) -> dict[str, Any]:
    """The object as the apiserver serves it: the spec, the status the planner wrote
    (serialised as the operator writes it) and the generation the apiserver counts."""
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "HybridWorkflow",
        "metadata": {"name": "wf", "namespace": "ns", "generation": w.generation},
        "spec": w.spec.model_dump(mode="json"),
    }
    if status:
        obj["status"] = w.status.model_dump(mode="json")
    HybridWorkflow.model_validate(obj)  # what the operator itself would read back
    return obj


def run_pod(w: World, pod: str, *, until: PodPhase = PodPhase.SUCCEEDED) -> None:
    w.pod_phase(pod, PodPhase.RUNNING)
    w.step()
    if until is not PodPhase.RUNNING:
        w.pod_phase(pod, until)
        w.step()


def fail_until_given_up(w: World, subtask: str) -> None:
    """Its pod fails on every attempt, past maxRetries (retries after each backoff)."""
    retries = next(s.maxRetries for s in w.spec.subtasks if s.name == subtask)
    for attempt in range(1, retries + 2):
        w.pod_phase(f"wf-{subtask}-{attempt}", PodPhase.FAILED, message="exit code 1")
        w.step()
        if w.sub(subtask).phase is SubtaskPhase.FAILED:
            return
        w.now += dt.timedelta(minutes=5)
        w.step()
    raise AssertionError(f"{subtask} never gave up: {w.sub(subtask)}")


def test_the_argocd_cm_patch_embeds_the_script_verbatim() -> None:
    doc = yaml.safe_load(CM_PATCH.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "ConfigMap")
    assert (doc["metadata"]["name"], doc["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    assert doc["data"] == {HEALTH_KEY: SCRIPT.read_text()}


@pytest.mark.parametrize(
    "script",
    [
        'return {status = string.upper("healthy")}',
        'return {status = ("Healthy"):sub(1)}',
        "return {status = tostring(math.floor(1))}",
        'return {status = os.getenv("HOME")}',
    ],
)
def test_the_sandbox_is_as_strict_as_argo_cds(script: str) -> None:
    """What Argo CD's VM lacks fails here too: no string, math or os functions."""
    with pytest.raises(LuaError):
        ArgoLua(script).health({})


def test_just_created_waits_for_the_operator(argo: ArgoLua) -> None:
    w = three_stage()
    assert argo.health(workflow(w, status=False)) == (
        "Progressing",
        "Waiting for the operator to pick up the workflow",
    )


def test_a_started_workflow_reports_its_progress(argo: ArgoLua) -> None:
    w = three_stage()
    w.step()
    assert w.status.phase is WorkflowPhase.RUNNING
    assert argo.health(workflow(w)) == ("Progressing", "Running: 0/3 subtasks succeeded")
    run_pod(w, "wf-prepare-1")
    run_pod(w, "wf-train-1", until=PodPhase.RUNNING)
    assert w.sub("train").phase is SubtaskPhase.RUNNING
    assert argo.health(workflow(w)) == ("Progressing", "Running: 1/3 subtasks succeeded")


def test_a_retry_and_a_move_under_way_are_named(argo: ArgoLua) -> None:
    w = three_stage()
    w.step()
    w.pod_phase("wf-prepare-1", PodPhase.FAILED, message="exit code 1")
    w.step()
    assert argo.health(workflow(w)) == (
        "Progressing",
        "Running: 0/3 subtasks succeeded; "
        "prepare retrying: pod wf-prepare-1 failed: exit code 1; retry 1/2 in 10s",
    )
    w.now += dt.timedelta(seconds=11)
    w.step()  # attempt 2, released to the cpu pool, not bound yet: it may move
    w.moves = {"prepare": MoveRequest(Placement(kind=ResourceKind.POOL, name="gpu"), "cpu full")}
    w.step()
    assert w.sub("prepare").moving is not None
    assert argo.health(workflow(w)) == (
        "Progressing",
        "Running: 0/3 subtasks succeeded; prepare moving from cpu to pool gpu",
    )


def test_succeeded_is_healthy(argo: ArgoLua) -> None:
    w = three_stage()
    w.step()
    for sub in ("prepare", "train", "analyse"):
        run_pod(w, f"wf-{sub}-1")
    assert w.status.phase is WorkflowPhase.SUCCEEDED
    assert argo.health(workflow(w)) == ("Healthy", "3 subtasks succeeded")
    # An edit after the end is never observed (the operator leaves finished workflows
    # alone): still Healthy, not Progressing forever.
    w.generation = 2
    w.step()
    assert w.status.observedGeneration == 1
    assert argo.health(workflow(w)) == (
        "Healthy",
        "3 subtasks succeeded; generation 2 is not run: a finished workflow does not restart",
    )


def test_a_subtask_failing_past_its_retries_is_degraded(argo: ArgoLua) -> None:
    w = three_stage()
    w.step()
    run_pod(w, "wf-prepare-1")
    fail_until_given_up(w, "train")
    assert w.status.phase is WorkflowPhase.FAILED
    assert argo.health(workflow(w)) == (
        "Degraded",
        "SubtaskFailed: subtask train: pod wf-train-3 failed: exit code 1; "
        "gave up after 3 failed attempts",
    )


def test_an_invalid_spec_is_degraded_with_the_field(argo: ArgoLua) -> None:
    w = three_stage(quantumBackends=["nowhere"])
    w.step()
    assert w.status.phase is WorkflowPhase.FAILED
    assert argo.health(workflow(w)) == (
        "Degraded",
        "InvalidSpec: spec.resources.quantumBackends[0]: unknown QuantumBackend 'nowhere'",
    )


def test_an_unparseable_spec_failed_by_the_handler_is_degraded(
    argo: ArgoLua, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spec the schema let through but the models reject (an older CRD): the kopf
    handler writes Failed with Valid=False only (no Succeeded condition)."""
    from qorch.operator import handlers

    patches: list[dict[str, Any]] = []

    class Custom:
        def patch_namespaced_custom_object_status(self, *args: Any) -> None:
            patches.append(args[-1])

    class Runtime:
        custom = Custom()

    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    w = three_stage()
    obj = workflow(w, status=False)
    asyncio.run(
        handlers._fail_unparseable(
            Runtime(),  # type: ignore[arg-type]
            kopf.Body(obj),
            obj,
            "spec.subtasks[0].classical.image: String should match pattern",
        )
    )
    obj["status"] = patches[-1]["status"]
    assert argo.health(obj) == (
        "Degraded",
        "InvalidSpec: spec.subtasks[0].classical.image: String should match pattern",
    )


def test_an_unobserved_edit_is_progressing_and_an_invalid_one_degraded(argo: ArgoLua) -> None:
    w = three_stage()
    w.step()
    run_pod(w, "wf-prepare-1", until=PodPhase.RUNNING)
    w.spec = example_spec("three-stage-dag.yaml", quantumBackends=["nowhere"])
    w.generation = 2  # the apiserver counted the edit; the operator has not planned on it
    assert argo.health(workflow(w)) == (
        "Progressing",
        "Waiting for the operator to observe generation 2 (observed 1)",
    )
    w.step()
    assert w.status.phase is WorkflowPhase.RUNNING and w.status.observedGeneration == 2
    assert argo.health(workflow(w)) == (
        "Degraded",
        "InvalidUpdate: spec.resources.quantumBackends[0]: unknown QuantumBackend 'nowhere'; "
        "no new subtask starts until the spec is fixed",
    )


def bell_ghz_from_config_map() -> World:
    """hybrid-bell-ghz with the GHZ circuit in a ConfigMap that is not there yet (Argo CD
    applied the workflow first), as the operator's source loader reports it."""
    doc = yaml.safe_load((REPO / "examples" / "hybrid-bell-ghz.yaml").read_text())
    ghz = next(s for s in doc["spec"]["subtasks"] if s["name"] == "ghz")
    del ghz["circuit"]["qasm"]
    ghz["circuit"]["configMapRef"] = {"name": "ghz-circuit", "key": "ghz.qasm"}
    w = World(
        HybridWorkflowSpec.model_validate(doc["spec"]),
        backends={"aer": BackendInfo("aer", Provider.AER, 30)},
        circuits={
            "bell": CircuitInfo(num_qubits=2, depth=2, num_clbits=0),
            "ghz": CircuitInfo(
                error="ConfigMap 'ghz-circuit' cannot be read (404 Not Found)", transient=True
            ),
        },
    )
    w.created = w.now
    return w


def test_a_circuit_source_not_applied_yet_is_waited_for_then_degraded(argo: ArgoLua) -> None:
    w = bell_ghz_from_config_map()
    w.step()
    assert w.status.observedGeneration is None
    assert argo.health(workflow(w)) == (
        "Progressing",
        "WaitingForSource: subtask ghz: ConfigMap 'ghz-circuit' cannot be read "
        "(404 Not Found); waiting up to 120s more before failing",
    )
    w.now += dt.timedelta(seconds=121)
    w.step()
    status, message = argo.health(workflow(w))
    assert status == "Degraded"
    assert message.startswith("InvalidSpec: spec.subtasks[2].circuit")
    assert "ConfigMap 'ghz-circuit' cannot be read" in message


def test_a_silent_gateway_is_named_while_its_jobs_wait(argo: ArgoLua) -> None:
    w = bell_ghz_from_config_map()
    w.circuits = {**w.circuits, "ghz": CircuitInfo(num_qubits=3, depth=3, num_clbits=3)}
    w.step()
    run_pod(w, "wf-prepare-1")
    jobs = {w.sub(s).jobId for s in ("bell", "ghz")}
    assert None not in jobs
    for job in jobs:
        assert job is not None
        w.jobs[job] = JobState(job, JobPhase.UNKNOWN, message="connection refused")
    w.step()
    assert argo.health(workflow(w)) == (
        "Progressing",
        "Running: 1/4 subtasks succeeded; GatewayUnreachable: no answer from the gateway of "
        "aer; waiting at most 60s before placing their jobs again",
    )
