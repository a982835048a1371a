"""Hypothesis strategies for ``HybridWorkflow`` manifests, within and just outside the schema.

Every example is a ``Case``: a manifest (a plain dict, what a user would ``kubectl apply``),
the ``Expect``ed outcome and a ``hint`` (a field path or phrase the apiserver's rejection or
the operator's ``Failed`` condition must name). Near-misses are built as ONE defect applied
to a small valid workflow, so a failing case is already close to minimal without shrinking
(shrinking against a live cluster takes far too long).

The cluster these cases run on (see ``tests.fuzz``) provides the ``BACKENDS`` and, in each
namespace, the ``CONFIG_MAP``. Classical steps always carry KWOK's completion annotation so
they finish by themselves; resources stay within what the test's node pools can hold, since
a pod no node can hold waits forever by design (not a validation question).
"""

from __future__ import annotations

import copy
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hypothesis import strategies as st

API_VERSION = "qorch.io/v1alpha1"
KWOK_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
KWOK_EXIT = "qorch.io/kwok-exit-code"
MAX_SUBTASKS = 200
MAX_DEPENDS_ON = 50

# Cluster-scoped QuantumBackends the fuzzed workflows may name (created once per session).
BACKENDS: dict[str, dict[str, Any]] = {
    "fuzz-aer": {"provider": "aer", "numQubits": 32, "pricePerQpuSecondUSD": 0.5},
    "fuzz-fake": {
        "provider": "fake",
        "backendName": "fake_torino",
        "numQubits": 133,
        "pricePerQpuSecondUSD": 1.6,
    },
    "fuzz-small": {"provider": "aer", "numQubits": 5},
}
MISSING_BACKEND = "fuzz-no-such-backend"

STD = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
BELL = STD + "qubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\nc = measure q;\n"
GHZ3 = STD + "qubit[3] q;\nbit[3] c;\nh q[0];\ncx q[0], q[1];\ncx q[1], q[2];\nc = measure q;\n"
EST2 = STD + "qubit[2] q;\nh q[0];\ncx q[0], q[1];\n"
NO_MEASURE = STD + "qubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\n"
UNBOUND = STD + "input float theta;\nqubit[1] q;\nbit[1] c;\nrz(theta) q[0];\nc = measure q;\n"

# A ConfigMap of circuits in every namespace the cases run in: key -> (source, qubits).
CONFIG_MAP = "fuzz-circuits"
CONFIG_MAP_DATA: dict[str, tuple[str, int]] = {
    "bell.qasm": (BELL, 2),
    "ghz3.qasm": (GHZ3, 3),
    "est2.qasm": (EST2, 2),
    "no-measure.qasm": (NO_MEASURE, 2),
    "broken.qasm": (STD + "qubit[2] q;\nh q[0]\ncx q[0], q[1];\n", 2),  # missing ';'
}


class Expect(StrEnum):
    SUCCEED = "succeed"  # accepted; ends Succeeded
    FAIL = "fail"  # accepted and valid (Valid=True); a step fails at run time: ends Failed
    REJECT = "reject"  # kubectl apply is refused by the apiserver (the CRD schema)
    INVALID = "invalid"  # refused at apply, or accepted and Failed with Valid=False
    TERMINAL = "terminal"  # only the base property: refused, or ends Succeeded/Failed


@dataclass(frozen=True)
class Case:
    kind: str
    expect: Expect
    manifest: dict[str, Any]
    hint: str = ""  # the rejection / Failed condition message must contain this

    def __repr__(self) -> str:  # Hypothesis prints failing batches: keep that short
        return f"Case({self.kind!r}, {self.expect.value}, name={self.name!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis' printer
        printer.text(repr(self))

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def subtask_count(self) -> int:
        subtasks = self.manifest.get("spec", {}).get("subtasks")
        return len(subtasks) if isinstance(subtasks, list) else 0


# ---- names ------------------------------------------------------------------------------

_LABEL_CHARS = string.ascii_lowercase + string.digits


@st.composite
def dns_label(draw: st.DrawFn, max_size: int = 30) -> str:
    """A DNS-1123 label of 1..max_size characters, the edge length included."""
    size = draw(st.one_of(st.integers(1, 12), st.just(max_size)))
    first = draw(st.sampled_from(string.ascii_lowercase))
    if size == 1:
        return first
    middle = draw(st.text(alphabet=_LABEL_CHARS + "-", min_size=size - 2, max_size=size - 2))
    last = draw(st.sampled_from(_LABEL_CHARS))
    return first + middle + last


def workflow_name() -> st.SearchStrategy[str]:
    return st.one_of(dns_label(max_size=20), dns_label(max_size=63))


# ---- steps ------------------------------------------------------------------------------


@st.composite
def classical(draw: st.DrawFn, gpu_pool: bool = True, fail: bool = False) -> dict[str, Any]:
    annotations = {KWOK_DELAY: f"{draw(st.integers(50, 800))}ms"}
    if fail:
        annotations[KWOK_EXIT] = str(draw(st.integers(1, 255)))
    spec: dict[str, Any] = {
        "image": draw(
            st.sampled_from(
                [
                    "busybox",
                    "python:3.12-slim",
                    "registry.example.com/team/step:1.0@sha256:" + "a" * 64,
                ]
            )
        ),
        "annotations": annotations,
    }
    if draw(st.booleans()):
        spec["command"] = draw(
            st.lists(st.text(string.printable, max_size=20), min_size=1, max_size=4)
        )
    if draw(st.booleans()):
        spec["args"] = draw(st.lists(st.text(string.printable, max_size=20), max_size=4))
    if draw(st.booleans()):
        spec["env"] = draw(
            st.dictionaries(
                st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,15}\Z"), st.text(max_size=30), max_size=4
            )
        )
    if draw(st.booleans()):
        res: dict[str, Any] = {
            "cpu": draw(st.sampled_from(["10m", "50m", "100m", "0.1", ".25", "1"])),
            "memory": draw(st.sampled_from(["16Mi", "64Mi", "128Mi", "0.5Gi", "1Gi", "65536"])),
        }
        if gpu_pool and draw(st.booleans()):
            res["gpu"] = draw(st.integers(0, 2))
        spec["resources"] = res
    return spec


def _gate_lines(draw: st.DrawFn, qubits: int, qasm2: bool) -> list[str]:
    lines = []
    for op in draw(st.lists(st.sampled_from(["h", "x", "rz", "ry", "cx"]), max_size=8)):
        a = draw(st.integers(0, qubits - 1))
        if op == "cx":
            if qubits < 2:
                continue
            b = draw(st.integers(0, qubits - 2))
            b += b >= a  # any qubit but a
            lines.append(f"cx q[{a}],q[{b}];" if qasm2 else f"cx q[{a}], q[{b}];")
        elif op in ("rz", "ry"):
            angle = draw(st.floats(-6.3, 6.3, allow_nan=False))
            lines.append(f"{op}({angle:.4f}) q[{a}];")
        else:
            lines.append(f"{op} q[{a}];")
    return lines


@st.composite
def sampler_qasm(draw: st.DrawFn, qubits: int) -> str:
    """A sampler circuit: gates, then every qubit measured (OpenQASM 3, sometimes 2)."""
    if draw(st.integers(0, 4)) == 0:
        body = "\n".join(_gate_lines(draw, qubits, qasm2=True))
        return (
            f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{qubits}];\ncreg c[{qubits}];\n'
            f"{body}\nmeasure q -> c;\n"
        )
    body = "\n".join(_gate_lines(draw, qubits, qasm2=False))
    if draw(st.booleans()):
        measure = "c = measure q;"
    else:
        measure = "\n".join(f"c[{i}] = measure q[{i}];" for i in range(qubits))
    return f"{STD}qubit[{qubits}] q;\nbit[{qubits}] c;\n{body}\n{measure}\n"


@st.composite
def estimator_qasm(draw: st.DrawFn, qubits: int) -> str:
    body = "\n".join(_gate_lines(draw, qubits, qasm2=False))
    return f"{STD}qubit[{qubits}] q;\n{body}\n"


def observables(qubits: int) -> st.SearchStrategy[list[str]]:
    return st.lists(
        st.text(alphabet="IXYZ", min_size=qubits, max_size=qubits), min_size=1, max_size=4
    )


@st.composite
def circuit(draw: st.DrawFn, max_qubits: int = 5) -> dict[str, Any]:
    """A valid circuit spec: sampler or estimator, inline or from the namespace's ConfigMap."""
    estimator = draw(st.booleans())
    spec: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        key = "est2.qasm" if estimator else draw(st.sampled_from(["bell.qasm", "ghz3.qasm"]))
        spec["configMapRef"] = {"name": CONFIG_MAP, "key": key}
        qubits = CONFIG_MAP_DATA[key][1]
    else:
        qubits = draw(st.integers(1, max_qubits))
        spec["qasm"] = draw(estimator_qasm(qubits) if estimator else sampler_qasm(qubits))
    if estimator:
        spec["primitive"] = "estimator"
        spec["observables"] = draw(observables(qubits))
    elif draw(st.booleans()):
        spec["primitive"] = "sampler"
    if draw(st.booleans()):
        spec["shots"] = draw(st.one_of(st.integers(1, 100_000), st.sampled_from([1, 1_000_000])))
    return spec


# ---- whole workflows --------------------------------------------------------------------


@st.composite
def pools(draw: st.DrawFn) -> list[dict[str, Any]] | None:
    """None: the default pools. Custom pools always select nodes the test cluster has."""
    if draw(st.booleans()):
        return None
    chosen = draw(st.lists(st.sampled_from(["cpu", "gpu"]), min_size=1, max_size=2, unique=True))
    out: list[dict[str, Any]] = []
    for pool in chosen:
        entry: dict[str, Any] = {
            "name": draw(dns_label(max_size=63)) if draw(st.booleans()) else pool,
            "nodeSelector": {"qorch.io/pool": pool},
            "maxQubits": draw(st.integers(28, 100)),
        }
        if pool == "gpu":
            entry["gpu"] = True
            entry["tolerations"] = [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        out.append(entry)
    names = [p["name"] for p in out]
    if len(set(names)) != len(names):
        out = out[:1]
    return out


@st.composite
def options(draw: st.DrawFn) -> dict[str, Any]:
    """objective, budget and reallocation, all within range."""
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        objective: dict[str, Any] = {
            "preset": draw(st.sampled_from(["speed", "accuracy", "cost", "balanced"]))
        }
        if draw(st.booleans()):
            weights = draw(st.lists(st.floats(0, 1), min_size=3, max_size=3).filter(any))
            objective["weights"] = dict(zip(("time", "error", "cost"), weights, strict=True))
        spec["objective"] = objective
    if draw(st.booleans()):
        spec["budget"] = {
            "maxCostUSD": draw(st.floats(100, 1e6)),
            "deadlineSeconds": draw(st.integers(600, 30 * 86400)),
        }
    if draw(st.booleans()):
        threshold = draw(st.floats(0, 1))
        spec["reallocation"] = {
            "enabled": draw(st.booleans()),
            "intervalSeconds": draw(st.integers(1, 3600)),
            "threshold": threshold,
            "hysteresis": draw(st.floats(0, threshold)),
            "maxMovesPerSubtask": draw(st.integers(0, 10)),
        }
    return spec


def _manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "HybridWorkflow",
        "metadata": {"name": name},
        "spec": spec,
    }


@st.composite
def valid_workflow(
    draw: st.DrawFn, min_subtasks: int = 1, max_subtasks: int = 6, may_fail: bool = True
) -> Case:
    """A DAG of classical steps and circuits that should run to the end."""
    count = draw(st.integers(min_subtasks, max_subtasks))
    names = draw(st.lists(dns_label(), min_size=count, max_size=count, unique=True))
    chosen_pools = draw(pools())
    gpu_pool = chosen_pools is None or any(p.get("gpu") for p in chosen_pools)
    backends = draw(st.lists(st.sampled_from(sorted(BACKENDS)), max_size=3, unique=True))
    # Without a backend, circuits are simulated on a pool: stay within its maxQubits.
    max_qubits = 5 if backends else 12
    failing = draw(st.sets(st.sampled_from(names))) if may_fail and draw(st.booleans()) else set()
    subtasks: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        sub: dict[str, Any] = {"name": name}
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        if deps:
            sub["dependsOn"] = deps
        if name in failing or draw(st.booleans()):
            sub["classical"] = draw(classical(gpu_pool=gpu_pool, fail=name in failing))
        else:
            sub["circuit"] = draw(circuit(max_qubits))
        # A failing step retries after a (test-capped) backoff: keep its retries few.
        retries = draw(st.one_of(st.none(), st.integers(0, 3 if name in failing else 10)))
        if retries is not None:
            sub["maxRetries"] = retries
        subtasks.append(sub)
    failing = {s["name"] for s in subtasks if s["name"] in failing and "classical" in s}
    subtasks = draw(st.permutations(subtasks))  # list order must not matter
    spec: dict[str, Any] = {"subtasks": subtasks, **draw(options())}
    resources: dict[str, Any] = {}
    if backends:
        resources["quantumBackends"] = backends
    if chosen_pools is not None:
        resources["classicalPools"] = chosen_pools
    explicit_empty = draw(st.booleans())
    if resources or explicit_empty:
        spec["resources"] = resources
    expect = Expect.FAIL if failing else Expect.SUCCEED
    return Case(
        "valid-dag-with-failing-step" if failing else "valid-dag",
        expect,
        _manifest(draw(workflow_name()), spec),
    )


@st.composite
def huge_workflow(draw: st.DrawFn) -> Case:
    """Up to the 200-subtask limit: independent small classical steps and a fan-in."""
    count = draw(st.sampled_from([150, 199, MAX_SUBTASKS]))
    subtasks: list[dict[str, Any]] = [
        {
            "name": f"s{i}",
            "classical": {
                "image": "busybox",
                "resources": {"cpu": "1m", "memory": "1Mi"},
                "annotations": {KWOK_DELAY: "100ms"},
            },
        }
        for i in range(count - 1)
    ]
    subtasks.append(
        {
            "name": "join",
            "dependsOn": [f"s{i}" for i in range(min(count - 1, MAX_DEPENDS_ON))],
            "classical": {"image": "busybox", "annotations": {KWOK_DELAY: "100ms"}},
        }
    )
    return Case(
        f"valid-{count}-subtasks",
        Expect.SUCCEED,
        _manifest(draw(workflow_name()), {"subtasks": subtasks}),
    )


# ---- near-misses: one defect on a small valid workflow ----------------------------------

Mutation = Callable[[st.DrawFn, dict[str, Any]], tuple[str, Expect, str]]


def _base(draw: st.DrawFn) -> dict[str, Any]:
    case = draw(valid_workflow(max_subtasks=3, may_fail=False))
    return copy.deepcopy(case.manifest)


def _subs(m: dict[str, Any]) -> list[dict[str, Any]]:
    subs: list[dict[str, Any]] = m["spec"]["subtasks"]
    return subs


def _pick(draw: st.DrawFn, m: dict[str, Any]) -> int:
    return draw(st.integers(0, len(_subs(m)) - 1))


def _set_circuit(draw: st.DrawFn, m: dict[str, Any], spec: dict[str, Any]) -> int:
    """Make one subtask the given circuit; returns its index."""
    i = _pick(draw, m)
    sub = _subs(m)[i]
    sub.pop("classical", None)
    sub["circuit"] = spec
    return i


def _first_circuit(draw: st.DrawFn, m: dict[str, Any]) -> int:
    for i, sub in enumerate(_subs(m)):
        if "circuit" in sub:
            return i
    return _set_circuit(draw, m, draw(circuit()))


def _first_classical(draw: st.DrawFn, m: dict[str, Any]) -> int:
    for i, sub in enumerate(_subs(m)):
        if "classical" in sub:
            return i
    i = _pick(draw, m)
    _subs(m)[i].pop("circuit")
    _subs(m)[i]["classical"] = draw(classical(gpu_pool=False))
    return i


# Schema near-misses: the apiserver must refuse them, naming the field.


def bad_workflow_name(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    m["metadata"]["name"] = draw(
        st.sampled_from(["Upper-Case", "under_score", "-leading", "trailing-", "a..b", "x" * 254])
    )
    return "bad-workflow-name", Expect.REJECT, "metadata.name"


def bad_subtask_name(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    i = _pick(draw, m)
    old = _subs(m)[i]["name"]
    new = draw(st.sampled_from(["Step", "step_1", "-step", "step-", "a.b", "x" * 31, ""]))
    _subs(m)[i]["name"] = new
    for sub in _subs(m):  # keep the DAG pointing at it
        sub["dependsOn"] = [new if d == old else d for d in sub.get("dependsOn", [])]
    return "bad-subtask-name", Expect.REJECT, "spec.subtasks["


def bad_dependency_name(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    i = _pick(draw, m)
    _subs(m)[i]["dependsOn"] = ["Not_A_Label"]
    return "bad-dependency-name", Expect.REJECT, f"spec.subtasks[{i}].dependsOn[0]"


def too_many_dependencies(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    i = _pick(draw, m)
    n = draw(st.integers(MAX_DEPENDS_ON + 1, 120))
    _subs(m)[i]["dependsOn"] = [f"ghost-{k}" for k in range(n)]
    return "too-many-dependencies", Expect.REJECT, f"spec.subtasks[{i}].dependsOn"


def too_many_subtasks(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    n = draw(st.integers(MAX_SUBTASKS + 1, MAX_SUBTASKS + 5))
    m["spec"]["subtasks"] = [{"name": f"s{k}", "classical": {"image": "busybox"}} for k in range(n)]
    return "too-many-subtasks", Expect.REJECT, "spec.subtasks"


def no_subtasks(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    m["spec"]["subtasks"] = []
    return "no-subtasks", Expect.REJECT, "spec.subtasks"


def duplicate_names(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    dup = copy.deepcopy(_subs(m)[_pick(draw, m)])
    dup.pop("dependsOn", None)
    _subs(m).append(dup)
    return "duplicate-subtask-names", Expect.REJECT, "spec.subtasks"


# (path inside a subtask or the spec, bad value, the field the error must name)
_OUT_OF_RANGE: list[tuple[str, tuple[str, ...], Any]] = [
    ("sub", ("maxRetries",), -1),
    ("sub", ("maxRetries",), 11),
    ("sub", ("maxRetries",), 1.5),
    ("sub", ("maxRetries",), "2"),
    ("circuit", ("shots",), 0),
    ("circuit", ("shots",), 1_000_001),
    ("circuit", ("shots",), -5),
    ("circuit", ("shots",), 2**64),
    ("circuit", ("shots",), "many"),
    ("circuit", ("observables",), "ZZ"),
    ("sub", ("maxRetries",), 10**30),
    ("sub", ("dependsOn",), "a"),
    ("sub", ("classical",), ["busybox"]),
    ("classical", ("command",), "echo hi"),
    ("classical", ("env",), [{"name": "A", "value": "b"}]),
    ("classical", ("env",), {"A": 1}),
    ("spec", ("resources",), []),
    ("spec", ("reallocation", "enabled"), "yes"),
    ("circuit", ("primitive",), "counts"),
    ("classical", ("resources", "gpu"), 17),
    ("classical", ("resources", "gpu"), -1),
    ("classical", ("resources", "cpu"), "1.5cores"),
    ("classical", ("resources", "cpu"), "12345678901234567"),
    ("classical", ("resources", "memory"), "1GB"),
    ("classical", ("image",), ""),
    ("classical", ("image",), "i" * 513),
    ("spec", ("objective", "preset"), "fastest"),
    ("spec", ("objective", "weights"), {"time": 1.5, "error": 0, "cost": 0}),
    ("spec", ("objective", "weights"), {"time": -0.1, "error": 0.5, "cost": 0}),
    ("spec", ("objective", "weights"), {"time": 0, "error": 0, "cost": 0}),
    ("spec", ("budget", "maxCostUSD"), -1),
    ("spec", ("budget", "maxCostUSD"), 1e7),
    ("spec", ("budget", "deadlineSeconds"), 0),
    ("spec", ("budget", "deadlineSeconds"), 30 * 86400 + 1),
    ("spec", ("reallocation", "intervalSeconds"), 0),
    ("spec", ("reallocation", "intervalSeconds"), 3601),
    ("spec", ("reallocation", "threshold"), 1.01),
    ("spec", ("reallocation", "hysteresis"), -0.01),
    ("spec", ("reallocation", "maxMovesPerSubtask"), 11),
    ("spec", ("reallocation",), {"threshold": 0.1, "hysteresis": 0.3}),
    ("spec", ("reallocation",), {"hysteresis": 0.5}),  # above the default threshold 0.2
    ("spec", ("resources", "quantumBackends"), ["Fuzz_Aer"]),
    ("spec", ("resources", "quantumBackends"), [f"b{k}" for k in range(21)]),
    ("spec", ("resources", "classicalPools"), [{"name": "p", "maxQubits": 0}]),
    ("spec", ("resources", "classicalPools"), [{"name": "p", "maxQubits": 101}]),
    ("spec", ("resources", "classicalPools"), [{"name": "p", "tolerations": [{"operator": "In"}]}]),
]


def out_of_range(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    where, path, value = draw(st.sampled_from(_OUT_OF_RANGE))
    if where == "spec":
        target, prefix = m["spec"], "spec"
    else:
        if where == "sub":
            i = _pick(draw, m)
            target = _subs(m)[i]
        elif where == "circuit":
            i = _first_circuit(draw, m)
            target = _subs(m)[i]["circuit"]
        else:
            i = _first_classical(draw, m)
            target = _subs(m)[i]["classical"]
        prefix = f"spec.subtasks[{i}]" + ("" if where == "sub" else f".{where}")
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = copy.deepcopy(value)
    # The apiserver names the object a CEL rule sits on, or the field itself.
    field = f"{prefix}.{path[0]}"
    return f"out-of-range:{'.'.join(path)}={value!r}"[:80], Expect.REJECT, field


def circuit_and_classical(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    i = _pick(draw, m)
    sub = _subs(m)[i]
    if draw(st.booleans()):
        sub["circuit"], sub["classical"] = draw(circuit()), draw(classical())
        kind = "both-circuit-and-classical"
    else:
        sub.pop("circuit", None)
        sub.pop("classical", None)
        kind = "neither-circuit-nor-classical"
    return kind, Expect.REJECT, f"spec.subtasks[{i}]"


def qasm_and_configmap(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    if draw(st.booleans()):
        spec: dict[str, Any] = {
            "qasm": BELL,
            "configMapRef": {"name": CONFIG_MAP, "key": "bell.qasm"},
        }
        kind = "both-qasm-and-configmap"
    else:
        spec = {"shots": 10}
        kind = "neither-qasm-nor-configmap"
    i = _set_circuit(draw, m, spec)
    return kind, Expect.REJECT, f"spec.subtasks[{i}].circuit"


def estimator_without_observables(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    spec: dict[str, Any] = {"qasm": EST2, "primitive": "estimator"}
    if draw(st.booleans()):
        spec["observables"] = []
    i = _set_circuit(draw, m, spec)
    return "estimator-without-observables", Expect.REJECT, f"spec.subtasks[{i}].circuit"


def sampler_with_observables(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    spec: dict[str, Any] = {"qasm": BELL, "observables": ["ZZ"]}
    if draw(st.booleans()):
        spec["primitive"] = "sampler"
    i = _set_circuit(draw, m, spec)
    return "sampler-with-observables", Expect.REJECT, f"spec.subtasks[{i}].circuit"


_UNKNOWN_FIELD_PLACES = ["spec", "subtask", "circuit", "classical", "resources", "metadata-ok"]


def unknown_field(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    place = draw(st.sampled_from(_UNKNOWN_FIELD_PLACES))
    key = draw(st.sampled_from(["bogus", "dependson", "retries", "qasmFile"]))
    if place == "spec":
        m["spec"][key] = 1
        return "unknown-field:spec", Expect.REJECT, f"spec.{key}"
    if place == "resources":
        m["spec"].setdefault("resources", {})[key] = []
        return "unknown-field:resources", Expect.REJECT, f"spec.resources.{key}"
    if place == "subtask":
        i = _pick(draw, m)
        _subs(m)[i][key] = "x"
        return "unknown-field:subtask", Expect.REJECT, f"spec.subtasks[{i}].{key}"
    if place == "circuit":
        i = _first_circuit(draw, m)
        _subs(m)[i]["circuit"][key] = "x"
        return "unknown-field:circuit", Expect.REJECT, f"spec.subtasks[{i}].circuit.{key}"
    if place == "classical":
        i = _first_classical(draw, m)
        _subs(m)[i]["classical"][key] = "x"
        return "unknown-field:classical", Expect.REJECT, f"spec.subtasks[{i}].classical.{key}"
    # Unknown top-level field: kubectl's strict decoding refuses it too.
    m[key] = {"x": 1}
    return "unknown-field:top-level", Expect.REJECT, key


def too_long_strings(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    which = draw(st.sampled_from(["qasm", "configMapKey", "pool", "backend", "annotations"]))
    if which == "qasm":
        i = _set_circuit(draw, m, {"qasm": BELL + "// " + "x" * 65536 + "\n"})
        return "too-long:qasm", Expect.REJECT, f"spec.subtasks[{i}].circuit.qasm"
    if which == "configMapKey":
        i = _set_circuit(draw, m, {"configMapRef": {"name": CONFIG_MAP, "key": "k" * 254}})
        return "too-long:configmap-key", Expect.REJECT, f"spec.subtasks[{i}].circuit.configMapRef"
    if which == "pool":
        m["spec"].setdefault("resources", {})["classicalPools"] = [{"name": "p" * 64}]
        return "too-long:pool-name", Expect.REJECT, "spec.resources.classicalPools[0].name"
    if which == "backend":
        m["spec"].setdefault("resources", {})["quantumBackends"] = ["b" * 64]
        return "too-long:backend-name", Expect.REJECT, "spec.resources.quantumBackends[0]"
    i = _first_classical(draw, m)
    _subs(m)[i]["classical"]["annotations"] = {f"k{k}": "v" for k in range(33)}
    return "too-many:annotations", Expect.REJECT, f"spec.subtasks[{i}].classical.annotations"


SCHEMA_MUTATIONS: tuple[Mutation, ...] = (
    bad_workflow_name,
    bad_subtask_name,
    bad_dependency_name,
    too_many_dependencies,
    too_many_subtasks,
    no_subtasks,
    duplicate_names,
    out_of_range,
    circuit_and_classical,
    qasm_and_configmap,
    estimator_without_observables,
    sampler_with_observables,
    unknown_field,
    too_long_strings,
)

# Semantic near-misses: the schema admits them; the operator must fail the workflow with
# Valid=False naming the field (refusing them at apply time is as good).


def unknown_dependency(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    i = _pick(draw, m)
    _subs(m)[i]["dependsOn"] = [*_subs(m)[i].get("dependsOn", []), "ghost"]
    j = len(_subs(m)[i]["dependsOn"]) - 1
    return "unknown-dependency", Expect.INVALID, f"spec.subtasks[{i}].dependsOn[{j}]"


def many_unknown_dependencies(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    """~120 unknown names of 30 characters over three subtasks: a long error message."""
    per = draw(st.integers(35, MAX_DEPENDS_ON))
    while len(_subs(m)) < 3:
        _subs(m).append({"name": f"pad{len(_subs(m))}", "classical": draw(classical())})
    for k, sub in enumerate(_subs(m)[:3]):
        sub["dependsOn"] = [f"ghost-{k}-{n:03d}".ljust(30, "x") for n in range(per)]
    return "many-unknown-dependencies", Expect.INVALID, "dependsOn"


def dependency_cycle(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    while len(_subs(m)) < 2:
        _subs(m).append({"name": f"pad{len(_subs(m))}", "classical": draw(classical())})
    subs = _subs(m)
    ring = draw(st.integers(2, len(subs)))
    for k in range(ring):
        sub = subs[k]
        sub["dependsOn"] = [subs[(k + 1) % ring]["name"]]
    for sub in subs[ring:]:
        sub.pop("dependsOn", None)
    return f"dependency-cycle-{ring}", Expect.INVALID, "dependency cycle"


def self_dependency(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    i = _pick(draw, m)
    sub = _subs(m)[i]
    sub["dependsOn"] = [d for d in sub.get("dependsOn", []) if d != sub["name"]] + [sub["name"]]
    j = len(sub["dependsOn"]) - 1
    return "self-dependency", Expect.INVALID, f"spec.subtasks[{i}].dependsOn[{j}]"


_BAD_QASM = [
    STD + "qubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0] q[1];\nc = measure q;\n",  # missing comma
    STD + "qubit[2] q;\nbit[2] c;\nfoo q[0];\nc = measure q;\n",  # unknown gate
    STD + "qubit[2] q;\nbit[2] c;\nh q[5];\nc = measure q;\n",  # index out of range
    STD + "qubit[2 q;\n",
    "OPENQASM 2.0;\nqreg q[2];\ncreg c[2];\nh q[0];\nmeasure q -> c;\n",  # no qelib1.inc
    "h q[0];",
    STD + "(" * 400,
]


@st.composite
def broken_qasm(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(_BAD_QASM))
    # Arbitrary text after a valid header, made unparseable by an unbalanced bracket.
    text = draw(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=60))
    return f"{STD}qubit[1] q;\n{text}\nh q[0"


def qasm_does_not_parse(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    i = _set_circuit(draw, m, {"qasm": draw(broken_qasm())})
    return "qasm-does-not-parse", Expect.INVALID, f"spec.subtasks[{i}].circuit.qasm"


def wrong_observables(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    good = draw(observables(2))
    bad = draw(
        st.one_of(
            st.text("IXYZ", min_size=1, max_size=1),
            st.text("IXYZ", min_size=3, max_size=6),
            st.sampled_from(["zz", "ZA", "Z Z", "II\n"]),
        )
    )
    if draw(st.integers(0, 3)) == 0:  # many long ones: a long error message
        good, bad = [draw(st.text("IXYZ", min_size=900, max_size=1000)) for _ in range(63)], "Q"

    k = draw(st.integers(0, len(good)))
    obs = [*good[:k], bad, *good[k:]]
    i = _set_circuit(draw, m, {"qasm": EST2, "primitive": "estimator", "observables": obs})
    return (
        "observables-wrong-length",
        Expect.INVALID,
        f"spec.subtasks[{i}].circuit.observables[{k}]",
    )


def sampler_without_measurements(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    if draw(st.booleans()):
        spec: dict[str, Any] = {"configMapRef": {"name": CONFIG_MAP, "key": "no-measure.qasm"}}
    else:
        spec = {"qasm": draw(estimator_qasm(draw(st.integers(1, 4))))}
    if draw(st.booleans()):
        spec["primitive"] = "sampler"
    i = _set_circuit(draw, m, spec)
    return "sampler-without-measurements", Expect.INVALID, f"spec.subtasks[{i}].circuit"


def unbound_parameters(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    if draw(st.booleans()):
        spec: dict[str, Any] = {"qasm": UNBOUND}
    else:
        spec = {
            "qasm": STD + "input float alpha;\nqubit[2] q;\nry(alpha) q[1];\n",
            "primitive": "estimator",
            "observables": ["ZZ"],
        }
    i = _set_circuit(draw, m, spec)
    return "unbound-parameters", Expect.INVALID, f"spec.subtasks[{i}].circuit"


def missing_config_map(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    which = draw(st.sampled_from(["missing", "key-missing", "does-not-parse"]))
    key = {"key-missing": "missing.qasm", "does-not-parse": "broken.qasm"}.get(which, "bell.qasm")
    ref = {"name": "fuzz-missing" if which == "missing" else CONFIG_MAP, "key": key}
    kind = f"configmap-{which}"
    i = _set_circuit(draw, m, {"configMapRef": ref})
    return kind, Expect.INVALID, f"spec.subtasks[{i}].circuit.configMapRef"


def missing_backend(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    backends = list(m["spec"].get("resources", {}).get("quantumBackends", []))
    j = draw(st.integers(0, len(backends)))
    backends.insert(j, MISSING_BACKEND)
    m["spec"].setdefault("resources", {})["quantumBackends"] = backends
    return "quantum-backend-missing", Expect.INVALID, f"spec.resources.quantumBackends[{j}]"


def too_wide_circuit(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    m["spec"].setdefault("resources", {})["quantumBackends"] = ["fuzz-small"]
    m["spec"]["resources"]["classicalPools"] = [
        {"name": "cpu", "nodeSelector": {"qorch.io/pool": "cpu"}, "maxQubits": 28}
    ]
    qubits = draw(st.integers(29, 60))
    i = _set_circuit(
        draw, m, {"qasm": f"{STD}qubit[{qubits}] q;\nbit[{qubits}] c;\nc = measure q;\n"}
    )
    for sub in _subs(m):  # the only pool is a CPU pool now
        if "classical" in sub:
            sub["classical"].get("resources", {}).pop("gpu", None)
    return "circuit-too-wide", Expect.INVALID, f"spec.subtasks[{i}].circuit.qasm"


def gpu_without_gpu_pool(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    i = _first_classical(draw, m)
    _subs(m)[i]["classical"].setdefault("resources", {})["gpu"] = 1
    m["spec"].setdefault("resources", {})["classicalPools"] = [
        {"name": "cpu", "nodeSelector": {"qorch.io/pool": "cpu"}}
    ]
    return "gpu-without-gpu-pool", Expect.INVALID, "spec.resources.classicalPools"


SEMANTIC_MUTATIONS: tuple[Mutation, ...] = (
    unknown_dependency,
    many_unknown_dependencies,
    dependency_cycle,
    self_dependency,
    qasm_does_not_parse,
    wrong_observables,
    sampler_without_measurements,
    unbound_parameters,
    missing_config_map,
    missing_backend,
    too_wide_circuit,
    gpu_without_gpu_pool,
)

# Inside the CRD schema but at the edge of what Kubernetes accepts elsewhere: only the base
# property (refused with a message, or terminal with a condition) is required.


def long_workflow_name(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    """Longer than a label (63) but a valid object name (up to 253)."""
    size = draw(st.one_of(st.integers(64, 253), st.sampled_from([64, 253])))
    m["metadata"]["name"] = "w" + draw(st.text(_LABEL_CHARS, min_size=size - 1, max_size=size - 1))
    return f"workflow-name-{size}-chars", Expect.TERMINAL, "metadata.name"


def dotted_workflow_name(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    m["metadata"]["name"] = f"{draw(dns_label(max_size=20))}.{draw(dns_label(max_size=20))}"
    return "workflow-name-with-dot", Expect.TERMINAL, "metadata.name"


def pod_invalid_within_schema(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    """Strings the CRD admits that a Pod does not: annotation keys, env names, quantities."""
    i = _first_classical(draw, m)
    spec = _subs(m)[i]["classical"]
    which = draw(st.sampled_from(["annotation", "env", "cpu", "memory", "image", "pool"]))
    if which == "image":
        spec["image"] = draw(st.sampled_from([" busybox", "busybox\n"]))
    elif which == "pool":  # a pool whose selector or toleration a Pod cannot carry
        pool: dict[str, Any] = {"name": "cpu", "nodeSelector": {"qorch.io/pool": "cpu"}}
        if draw(st.booleans()):
            pool["nodeSelector"]["bad key!"] = "x"
        else:
            pool["tolerations"] = [{"key": "bad key!", "operator": "Exists"}]
        m["spec"].setdefault("resources", {})["classicalPools"] = [pool]
        for sub in _subs(m):
            if "classical" in sub:
                sub["classical"].get("resources", {}).pop("gpu", None)
        # The schema refuses the toleration key, validation the selector key: both name
        # the pool, not a subtask.
        return (
            f"pod-invalid-within-schema:{which}",
            Expect.TERMINAL,
            "spec.resources.classicalPools",
        )
    elif which == "annotation":
        spec["annotations"]["not a valid/key!"] = "x"
    elif which == "env":
        spec["env"] = {draw(st.sampled_from(["", "A=B"])): "x"}
    elif which == "cpu":
        spec.setdefault("resources", {})["cpu"] = draw(st.sampled_from(["0.0001", "0", "0m"]))
    else:
        spec.setdefault("resources", {})["memory"] = draw(st.sampled_from(["0.5", "0", "1.5Ki"]))
    return f"pod-invalid-within-schema:{which}", Expect.TERMINAL, f"spec.subtasks[{i}]"


def odd_pools(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, Expect, str]:
    """No classical pool at all, or two pools of one name."""
    resources = m["spec"].setdefault("resources", {})
    if draw(st.booleans()):
        resources["classicalPools"] = []
        return "no-classical-pools", Expect.TERMINAL, "spec.resources.classicalPools"
    cpu = {"name": "p", "nodeSelector": {"qorch.io/pool": "cpu"}}
    resources["classicalPools"] = [cpu, {**cpu, "maxQubits": 40}]
    for sub in _subs(m):
        if "classical" in sub:
            sub["classical"].get("resources", {}).pop("gpu", None)
    return "duplicate-pool-names", Expect.TERMINAL, "spec.resources.classicalPools"


EDGE_MUTATIONS: tuple[Mutation, ...] = (
    long_workflow_name,
    dotted_workflow_name,
    pod_invalid_within_schema,
    odd_pools,
)

ALL_MUTATIONS: tuple[Mutation, ...] = SCHEMA_MUTATIONS + SEMANTIC_MUTATIONS + EDGE_MUTATIONS


@st.composite
def near_miss(draw: st.DrawFn, mutation: Mutation) -> Case:
    manifest = _base(draw)
    kind, expect, hint = mutation(draw, manifest)
    return Case(kind, expect, manifest, hint)


def cases() -> st.SearchStrategy[Case]:
    """One manifest: valid DAGs about a third of the time, else one near-miss of any kind."""
    generators: list[st.SearchStrategy[Case]] = [
        valid_workflow(),
        valid_workflow(),
        valid_workflow(min_subtasks=4, max_subtasks=8),
        *(near_miss(mut) for mut in ALL_MUTATIONS),
    ]
    return st.one_of(generators)


@st.composite
def batches(
    draw: st.DrawFn,
    size: int = 10,
    mutations: Sequence[Mutation] = ALL_MUTATIONS,
    valid: int = 3,
    huge: bool = False,
) -> list[Case]:
    """``size`` manifests with distinct names, applied together: ``valid`` valid DAGs (one
    of them with 150-200 subtasks when ``huge``), the rest near-misses of distinct kinds
    from ``mutations`` (each kind once when there are few enough)."""
    slots = size - max(valid, int(huge))
    if len(mutations) <= slots:  # every kind, in a drawn order
        kinds = draw(st.permutations(list(mutations)))
    else:
        kinds = [draw(st.sampled_from(mutations)) for _ in range(slots)]
    out: list[Case] = []
    names: set[str] = set()

    def add(strategy: st.SearchStrategy[Case]) -> None:
        case = draw(strategy.filter(lambda c: c.name not in names))
        names.add(case.name)
        out.append(case)

    if huge:
        add(huge_workflow())
    while len(out) < valid:
        add(valid_workflow(max_subtasks=draw(st.sampled_from([3, 8]))))
    for k in range(size - len(out)):
        add(near_miss(kinds[k % len(kinds)]))
    return out
