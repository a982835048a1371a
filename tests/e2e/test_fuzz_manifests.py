"""Fuzzed HybridWorkflow manifests against the real apiserver and a real operator.

Property (see ``tests.fuzz``): every manifest is refused by ``kubectl apply`` with a message
naming the field, or ends ``Succeeded``/``Failed`` within 60 s with a condition saying why;
the operator never dies and logs no handler crash. Hypothesis runs a fixed, derandomized
set of batches (per shard, ``QORCH_FUZZ_EXAMPLES`` batches of 10-11 manifests applied
together); shrinking is off, as each near-miss is already one defect on a small valid
workflow. About 2 minutes on 2 cores when the operator is correct; every manifest that hangs
makes its batch wait the full 60 s. For far more examples:
``.venv/bin/python bench/fuzz_manifests.py --examples 200``.

``REGRESSIONS`` are minimal manifests of bugs the fuzzing found, run as one batch. Those
marked ``xfail(strict=True)`` are KNOWN BUGS not fixed yet: the mark must go when the fix
lands (a fixed one turns into a strict XPASS failure, so it cannot be forgotten).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from devenv.cluster import Cluster
from devenv.controlplane import ControlPlane
from devenv.rbac import least_privilege_kubeconfig
from tests.fuzz import Checker, Outcome
from tests.fuzz.strategies import (
    ALL_MUTATIONS,
    BELL,
    CONFIG_MAP,
    KWOK_DELAY,
    NO_MEASURE,
    STD,
    UNBOUND,
    Case,
    Expect,
    batches,
)
from tests.harness import operator as operator_mod

pytestmark = pytest.mark.controlplane
EXAMPLES = int(os.environ.get("QORCH_FUZZ_EXAMPLES", "2"))
# Retries back off 1 s, capped at 2 s: a step failing 3 times stays well within 60 s.
OPERATOR_ENV = {"QORCH_RETRY_BACKOFF_SECONDS": "1", "QORCH_RETRY_BACKOFF_MAX_SECONDS": "2"}


@pytest.fixture(scope="module")
def fuzz_operator(
    control_plane: ControlPlane, session_dir: Path
) -> Iterator[operator_mod.OperatorProcess]:
    """One operator for the whole module, as the chart's ServiceAccount, scripted gateway."""
    kubeconfig = least_privilege_kubeconfig(control_plane, session_dir / "sa-fuzz.yaml")
    with operator_mod.running(
        control_plane,
        session_dir / "operator-fuzz.log",
        kubeconfig=kubeconfig,
        extra_env=OPERATOR_ENV,
    ) as op:
        yield op


@pytest.fixture(scope="module")
def checker(cluster: Cluster, fuzz_operator: operator_mod.OperatorProcess) -> Checker:
    return Checker(cluster, fuzz_operator, timeout=60.0)


# Every near-miss kind runs in every CI run: the kinds are split into shards, one batch per
# shard and example: 3 valid DAGs (in shard 0, one of them has 150-200 subtasks) and each of
# the shard's 7-8 near-miss kinds once.
SHARDS = 4


@pytest.mark.parametrize("shard", range(SHARDS))
def test_fuzzed_manifests_are_refused_or_finish_with_a_reason(checker: Checker, shard: int) -> None:
    mutations = ALL_MUTATIONS[shard::SHARDS]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(batch=batches(size=3 + len(mutations), mutations=mutations, huge=shard == 0))
    def check(batch: list[Case]) -> None:
        result = checker.run(batch, hint=f"fuzz-{shard}")
        if result.failures or result.operator_violations:
            pytest.fail(result.report(), pytrace=False)

    check()


# ---- regressions: minimal manifests of what the fuzzing found ---------------------------


def _wf(name: str, subtasks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "qorch.io/v1alpha1",
        "kind": "HybridWorkflow",
        "metadata": {"name": name},
        "spec": {"subtasks": subtasks, **spec},
    }


def _step(**extra: Any) -> dict[str, Any]:
    annotations = {KWOK_DELAY: "100ms", **extra.pop("annotations", {})}
    return {"image": "busybox", "annotations": annotations, **extra}


GHOSTS = [
    {"name": f"s{k}", "dependsOn": [f"g{k}-{n:03d}".ljust(30, "x") for n in range(40)]}
    for k in range(3)
]
CPU_POOL = {"name": "cpu", "nodeSelector": {"qorch.io/pool": "cpu"}}

# (id, case, KNOWN BUG description or None). A known bug's case is marked
# xfail(strict=True): remove the description when the fix lands.
_TABLE: list[tuple[str, Case, str | None]] = [
    (
        "control-bell-on-backend",
        Case(
            "control",
            Expect.SUCCEED,
            _wf(
                "bell",
                [{"name": "q", "circuit": {"qasm": BELL}}],
                resources={"quantumBackends": ["fuzz-aer"]},
            ),
        ),
        None,
    ),
    (
        "many-unknown-deps",
        Case(
            "120 unknown dependencies of 30 chars: a Valid message over 4096 chars",
            Expect.INVALID,
            _wf("ghosts", [{**g, "classical": _step()} for g in GHOSTS]),
            "dependsOn",
        ),
        None,
    ),
    (
        "many-long-bad-observables",
        Case(
            "64 observables of 1000 letters, one bad: a Valid message far over 4096 chars",
            Expect.INVALID,
            _wf(
                "longobs",
                [
                    {
                        "name": "e",
                        "circuit": {
                            "qasm": STD + "qubit[2] q;\nh q[0];\n",
                            "primitive": "estimator",
                            "observables": ["ZQ" * 500] * 64,
                        },
                    }
                ],
            ),
            "spec.subtasks[0].circuit.observables[0]",
        ),
        None,
    ),
    (
        "workflow-name-253",
        Case(
            "253-char workflow name: label values and pod names over their limits",
            Expect.TERMINAL,
            _wf("w" * 253, [{"name": "a" * 30, "classical": _step()}]),
            "metadata.name",
        ),
        None,
    ),
    (
        "sampler-without-measurements",
        Case(
            "sampler circuit without measurements",
            Expect.INVALID,
            _wf("nomeasure", [{"name": "q", "circuit": {"qasm": NO_MEASURE}}]),
            "spec.subtasks[0].circuit",
        ),
        None,
    ),
    (
        "unbound-parameter",
        Case(
            "circuit with an unbound input parameter",
            Expect.INVALID,
            _wf("unbound", [{"name": "q", "circuit": {"qasm": UNBOUND}}]),
            "spec.subtasks[0].circuit",
        ),
        None,
    ),
    (
        "configmap-qasm-does-not-parse",
        Case(
            "circuit from a ConfigMap that does not parse",
            Expect.INVALID,
            _wf(
                "cmbroken",
                [
                    {
                        "name": "q",
                        "circuit": {"configMapRef": {"name": CONFIG_MAP, "key": "broken.qasm"}},
                    }
                ],
            ),
            "spec.subtasks[0].circuit.configMapRef",
        ),
        None,
    ),
    (
        "pod-annotation-key-invalid",
        Case(
            "classical.annotations key the CRD admits but a Pod does not",
            Expect.TERMINAL,
            _wf(
                "annokey",
                [{"name": "a", "classical": _step(annotations={"not a valid/key!": "x"})}],
            ),
            "spec.subtasks[0]",
        ),
        None,
    ),
    (
        "pod-env-name-empty",
        Case(
            "classical.env with an empty variable name",
            Expect.TERMINAL,
            _wf("envempty", [{"name": "a", "classical": _step(env={"": "x"})}]),
            "spec.subtasks[0]",
        ),
        None,
    ),
    (
        "pod-env-name-with-equals",
        Case(
            "classical.env with a variable name containing '='",
            Expect.TERMINAL,
            _wf("envequals", [{"name": "a", "classical": _step(env={"A=B": "x"})}]),
            "spec.subtasks[0]",
        ),
        None,
    ),
    (
        "pod-image-leading-space",
        Case(
            "classical.image with a leading space",
            Expect.TERMINAL,
            _wf("imagespace", [{"name": "a", "classical": {**_step(), "image": " busybox"}}]),
            "spec.subtasks[0]",
        ),
        None,
    ),
    (
        "pool-node-selector-key-invalid",
        Case(
            "classical pool whose nodeSelector key a Pod cannot carry",
            Expect.TERMINAL,
            _wf(
                "selkey",
                [{"name": "a", "classical": _step()}],
                resources={
                    "classicalPools": [
                        {**CPU_POOL, "nodeSelector": {"qorch.io/pool": "cpu", "bad key!": "x"}}
                    ]
                },
            ),
            "spec.resources.classicalPools[0]",
        ),
        None,
    ),
    (
        "pool-toleration-key-invalid",
        Case(
            "classical pool whose toleration key a Pod cannot carry",
            Expect.TERMINAL,
            _wf(
                "tolkey",
                [{"name": "a", "classical": _step()}],
                resources={
                    "classicalPools": [
                        {**CPU_POOL, "tolerations": [{"key": "bad key!", "operator": "Exists"}]}
                    ]
                },
            ),
            "spec.resources.classicalPools[0]",
        ),
        None,
    ),
    (
        "pod-cpu-below-millicore",
        Case(
            "cpu 0.0001 (below a millicore)",
            Expect.TERMINAL,
            _wf("cpusmall", [{"name": "a", "classical": _step(resources={"cpu": "0.0001"})}]),
            "spec.subtasks[0]",
        ),
        None,
    ),
    (
        "pod-memory-fractional-bytes",
        Case(
            "memory 0.5 (half a byte)",
            Expect.TERMINAL,
            _wf("memhalf", [{"name": "a", "classical": _step(resources={"memory": "0.5"})}]),
            "spec.subtasks[0]",
        ),
        None,
    ),
    (
        "no-classical-pools",
        Case(
            "classicalPools: [] with a classical step",
            Expect.TERMINAL,
            _wf("nopools", [{"name": "a", "classical": _step()}], resources={"classicalPools": []}),
            "spec.resources.classicalPools",
        ),
        None,
    ),
    (
        "duplicate-pool-names",
        Case(
            "two classical pools of one name",
            Expect.TERMINAL,
            _wf(
                "duppools",
                [{"name": "a", "classical": _step()}],
                resources={"classicalPools": [CPU_POOL, {**CPU_POOL, "maxQubits": 40}]},
            ),
            "spec.resources.classicalPools",
        ),
        None,
    ),
]
REGRESSIONS = [
    pytest.param(
        case,
        id=ident,
        marks=[pytest.mark.xfail(strict=True, reason=f"KNOWN BUG: {bug}")] if bug else [],
    )
    for ident, case, bug in _TABLE
]


@pytest.fixture(scope="module")
def regression_outcomes(checker: Checker) -> dict[str, Outcome]:
    """All regression manifests applied together: one wait for all of them."""
    result = checker.run([case for _, case, _ in _TABLE], hint="fuzz-regressions")
    if result.operator_violations:  # charge them to every case: they cannot be told apart
        for out in result.outcomes:
            out.violations += [f"OPERATOR: {v}" for v in result.operator_violations]
    return {o.case.name: o for o in result.outcomes}


@pytest.mark.parametrize("case", REGRESSIONS)
def test_regression_manifest(regression_outcomes: dict[str, Outcome], case: Case) -> None:
    out = regression_outcomes[case.name]
    if out.violations:
        pytest.fail(out.report(), pytrace=False)
