"""Fuzzing ``HybridWorkflow`` manifests against the real apiserver and a real operator.

``strategies`` generates the manifests (within and just outside the schema); ``Checker``
here applies a batch of them with ``kubectl apply`` into a fresh namespace, waits, and
judges each one against the property:

- refused by the apiserver with a non-empty message that names the field, or
- accepted, and ``Succeeded`` or ``Failed`` within ``timeout`` seconds; when ``Failed``, a
  ``Valid`` or ``Succeeded`` condition is ``False`` with a reason and a message, and no
  subtask is left active;
- throughout, the operator process stays up and its log shows no handler or daemon crash;

plus what each case's ``Expect`` adds (a valid DAG succeeds, a semantic error fails with
``Valid=False`` naming the field, a schema near-miss is refused).

KWOK plays the kubelet: classical steps finish through their completion annotation; the
circuit worker pods Qorch creates (circuits simulated on a pool) carry none, so the checker
adds it to them once they run, as a node would run the worker to completion.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client, config

from devenv.cluster import Cluster
from tests.fuzz.strategies import (
    BACKENDS,
    CONFIG_MAP,
    CONFIG_MAP_DATA,
    KWOK_DELAY,
    Case,
    Expect,
)
from tests.harness.operator import OperatorProcess

GROUP, VERSION, PLURAL = "qorch.io", "v1alpha1", "hybridworkflows"
TERMINAL = ("Succeeded", "Failed")
TERMINAL_SUBTASK = ("Succeeded", "Failed", "Skipped")
# What Kopf logs when a handler or daemon raises, and what an uncaught error prints.
CRASH = re.compile(
    r"failed with an exception|failed permanently|Traceback \(most recent call last\)"
    r"|Unhandled exception|CRITICAL"
)
# An apiserver message that names something: a field path.
NAMES_A_FIELD = re.compile(r"\b(spec|metadata)(\.[A-Za-z]|\[)")


@dataclass
class Outcome:
    case: Case
    namespace: str
    applied: bool = False
    apply_message: str = ""
    workflow: dict[str, Any] | None = None
    seconds: float = 0.0
    log_lines: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def status(self) -> dict[str, Any]:
        return dict((self.workflow or {}).get("status") or {})

    @property
    def label(self) -> str:
        """Short outcome for summary tables."""
        if not self.applied:
            return "rejected"
        phase = self.status.get("phase") or "no status"
        if phase != "Failed":
            return phase if phase == "Succeeded" else f"stuck:{phase}"
        conds = {c.get("type"): c for c in self.status.get("conditions") or []}
        valid = conds.get("Valid", {})
        return "Failed:invalid" if valid.get("status") == "False" else "Failed:run"

    def report(self) -> str:
        """A reproducer: the manifest and what was observed."""
        status = self.status
        observed: dict[str, Any] = {
            "phase": status.get("phase"),
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in status.get("conditions") or []
            ],
            "subtasks": [
                {k: s.get(k) for k in ("name", "phase", "attempts", "message")}
                for s in (status.get("subtasks") or [])[:10]
            ],
        }
        parts = [
            f"case {self.case.kind} (expect {self.case.expect.value}) in namespace "
            f"{self.namespace}: {self.label} after {self.seconds:.1f}s",
            *(f"  VIOLATION: {v}" for v in self.violations),
        ]
        if not self.applied:
            parts.append(f"  kubectl apply said: {_clip(self.apply_message, 1500)}")
        else:
            parts.append("  observed: " + _clip(json.dumps(observed), 3000))
        if self.log_lines:
            parts.append("  operator log:\n" + _clip("\n".join(self.log_lines[-15:]), 4000))
        parts.append("  manifest:\n" + _clip(yaml.safe_dump(self.case.manifest, width=100), 6000))
        return "\n".join(parts)


@dataclass
class BatchResult:
    outcomes: list[Outcome]
    operator_violations: list[str]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.violations]

    def report(self) -> str:
        parts = [*(f"OPERATOR: {v}" for v in self.operator_violations)]
        parts += [o.report() for o in self.failures]
        return "\n\n".join(parts)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n...\n" + text[-limit // 2 :]


class Checker:
    def __init__(
        self,
        cluster: Cluster,
        operator: OperatorProcess,
        timeout: float = 60.0,
        apply_threads: int = 4,
    ) -> None:
        self.cluster = cluster
        self.operator = operator
        self.timeout = timeout
        self.apply_threads = apply_threads
        api = config.new_client_from_config(config_file=str(cluster.plane.kubeconfig))
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._create_backends()

    def _create_backends(self) -> None:
        items = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "QuantumBackend",
                "metadata": {"name": name},
                "spec": spec,
            }
            for name, spec in BACKENDS.items()
        ]
        self.cluster.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def run(self, cases: Sequence[Case], hint: str = "fuzz") -> BatchResult:
        """Apply ``cases`` together into a new namespace; wait; judge each."""
        ns = self.cluster.new_namespace(hint)
        self.core.create_namespaced_config_map(
            ns,
            {
                "metadata": {"name": CONFIG_MAP},
                "data": {key: src for key, (src, _) in CONFIG_MAP_DATA.items()},
            },
        )
        log_offset = len(self.operator.log())
        outcomes = [Outcome(case, ns) for case in cases]
        started = time.monotonic()
        with ThreadPoolExecutor(self.apply_threads) as pool:
            list(pool.map(self._apply, outcomes))
        self._wait(ns, [o for o in outcomes if o.applied], started)
        new_log = self.operator.log()[log_offset:]
        operator_violations = self._check_operator(new_log, outcomes)
        for out in outcomes:
            out.violations[:0] = judge(out, self.timeout)
        result = BatchResult(outcomes, operator_violations)
        # A failing batch's namespace stays for inspection; the rest go, to keep the
        # session's control plane light for the tests after these.
        if not (result.failures or operator_violations or os.environ.get("QORCH_KEEP_NAMESPACES")):
            self.cluster.plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        return result

    def _apply(self, out: Outcome) -> None:
        res = self.cluster.plane.kubectl(
            "apply",
            "-n",
            out.namespace,
            "-f",
            "-",
            input=json.dumps(out.case.manifest),
            check=False,
        )
        out.applied = res.returncode == 0
        out.apply_message = (res.stderr or "").strip()

    def _wait(self, ns: str, pending: list[Outcome], started: float) -> None:
        by_name = {o.case.name: o for o in pending}
        deadline = started + self.timeout
        while by_name and time.monotonic() < deadline and self.operator.process.poll() is None:
            items = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
            now = time.monotonic()
            for wf in items:
                out = by_name.get(wf["metadata"]["name"])
                if out is None:
                    continue
                out.workflow = wf
                out.seconds = now - started
                if (wf.get("status") or {}).get("phase") in TERMINAL:
                    del by_name[out.case.name]
            self._complete_worker_pods(ns)
            time.sleep(0.5)
        for out in by_name.values():  # record the last status of what never finished
            out.seconds = time.monotonic() - started
            try:
                out.workflow = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, out.case.name
                )
            except client.ApiException:
                out.workflow = None

    def _complete_worker_pods(self, ns: str) -> None:
        """KWOK runs nothing: let circuit worker pods finish once they run."""
        for pod in self.core.list_namespaced_pod(ns).items:
            annotations = pod.metadata.annotations or {}
            if pod.status.phase == "Running" and KWOK_DELAY not in annotations:
                try:
                    self.core.patch_namespaced_pod(
                        pod.metadata.name,
                        ns,
                        {"metadata": {"annotations": {KWOK_DELAY: "200ms"}}},
                    )
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise

    def _check_operator(self, new_log: str, outcomes: list[Outcome]) -> list[str]:
        problems: list[str] = []
        code = self.operator.process.poll()
        if code is not None:
            problems.append(f"the operator process exited with code {code}")
        lines = new_log.splitlines()
        for out in outcomes:
            tag = f"[{out.namespace}/{out.case.name}]"
            out.log_lines = [ln for ln in lines if tag in ln]
            crashes = [ln for ln in out.log_lines if CRASH.search(ln)]
            if crashes:
                out.violations.append(f"operator crash in the log: {_clip(crashes[0], 600)}")
        attributed = {ln for out in outcomes for ln in out.log_lines}
        stray = [i for i, ln in enumerate(lines) if CRASH.search(ln) and ln not in attributed]
        if stray:
            first = stray[0]
            problems.append(
                "operator log shows a crash: " + _clip("\n".join(lines[first : first + 25]), 3000)
            )
        return problems


def judge(out: Outcome, timeout: float) -> list[str]:
    """The property and the case's expectation; returns what is violated."""
    case, v = out.case, []
    if not out.applied:
        msg = out.apply_message
        if not msg:
            v.append("refused with an empty message")
        elif case.hint and case.hint not in msg:
            v.append(f"refusal does not name {case.hint!r}")
        elif not case.hint and not NAMES_A_FIELD.search(msg):
            v.append("refusal names no field")
        if case.expect in (Expect.SUCCEED, Expect.FAIL):
            v.append("a valid manifest was refused")
        return v
    if case.expect is Expect.REJECT:
        v.append(f"accepted, but the schema should refuse it (field {case.hint!r})")
    status = out.status
    phase = status.get("phase")
    if phase not in TERMINAL:
        v.append(f"not Succeeded or Failed after {timeout:.0f}s (phase {phase!r})")
        return v
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    subtasks = status.get("subtasks") or []
    active = [s["name"] for s in subtasks if s.get("phase") not in TERMINAL_SUBTASK]
    if active:
        v.append(f"workflow {phase} but subtasks still active: {active[:5]}")
    if len(subtasks) != case.subtask_count:
        v.append(f"status lists {len(subtasks)} subtasks, the spec has {case.subtask_count}")
    if phase == "Failed":
        false = [
            c
            for t, c in conds.items()
            if t in ("Valid", "Succeeded") and c.get("status") == "False"
        ]
        if not false:
            v.append("Failed without a Valid or Succeeded condition that is False")
        elif not all(c.get("reason") and c.get("message") for c in false):
            v.append("Failed with a condition lacking a reason or a message")
    valid = conds.get("Valid", {})
    if case.expect is Expect.SUCCEED:
        n = case.subtask_count
        if phase != "Succeeded" or status.get("progress") != f"{n}/{n}":
            v.append(f"expected Succeeded {n}/{n}, got {phase} {status.get('progress')}")
    elif case.expect is Expect.FAIL:
        if phase != "Failed" or valid.get("status") != "True":
            v.append(f"expected a valid spec failing at run time, got {phase}, Valid={valid}")
    elif case.expect is Expect.INVALID:
        if phase != "Failed" or valid.get("status") != "False":
            v.append(f"expected Failed with Valid=False, got {phase} (Valid={valid.get('status')})")
        elif case.hint not in (valid.get("message") or ""):
            v.append(f"Valid=False message does not name {case.hint!r}")
    return v
