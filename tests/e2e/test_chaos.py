"""A short slice of ``bench/chaos.py``: two runs of mixed workflows (fan-out, chains,
retries, doomed ones) while the operator is SIGKILLed and a gateway, Prometheus and the
kube-apiserver are restarted in place. No subtask may be lost or run twice (counted at
the gateway and from pods), and every workflow must end Succeeded or Failed with a
reason, the one it was built for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.controlplane import ControlPlane
from devenv.prometheus import Prometheus
from devenv.rbac import least_privilege_kubeconfig
from tests.harness import chaos

pytestmark = [pytest.mark.controlplane, pytest.mark.prometheus]

SEEDS = (7, 8)


@pytest.fixture(scope="module")
def chaos_stack(
    control_plane: ControlPlane, prometheus: Prometheus, session_dir: Path
) -> Iterator[chaos.Stack]:
    work = session_dir / "chaos"
    work.mkdir(exist_ok=True)
    with chaos.stack(
        control_plane,
        prometheus,
        work,
        least_privilege_kubeconfig(control_plane, work / "operator-sa.yaml"),
        rng_seed=SEEDS[0],
    ) as st:
        yield st


def test_no_subtask_is_lost_or_run_twice_under_faults(chaos_stack: chaos.Stack) -> None:
    reports = [
        chaos.run_once(chaos_stack, seed, workflows=4, horizon=12.0, deadline=180.0)
        for seed in SEEDS
    ]
    chaos.render(reports)

    injected: Counter[str] = Counter()
    for r in reports:
        injected.update(r.fault_counts())
    assert set(injected) == set(chaos.FAULT_KINDS), (
        f"every fault kind must hit a run mid-way; injected {dict(injected)}, skipped "
        f"{[f.label for r in reports for f in r.skipped]}"
    )
    shapes = {w.shape for r in reports for w in r.workflows}
    assert shapes == set(chaos.SHAPES), shapes
    assert any(s.fail_injected for r in reports for s in r.subtasks), "no step failed once"

    violations = [v for r in reports for v in r.violations]
    assert not violations, chaos.summary(reports) + "\n" + chaos.failure_report(reports)
    assert sum(r.lost for r in reports) == 0
    assert sum(r.twice_gateway + r.twice_pods for r in reports) == 0
