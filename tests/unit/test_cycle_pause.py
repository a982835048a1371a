"""When the pause between a workflow's cycles may end early (``pods_all_finished``)."""

from __future__ import annotations

from qorch.operator.handlers import pods_all_finished
from qorch.orchestrator.snapshot import PodPhase, PodState


def pod(subtask: str, phase: PodPhase, attempt: int = 1, deleting: bool = False) -> PodState:
    name = f"{subtask}-{attempt}"
    return PodState(name=name, subtask=subtask, attempt=attempt, phase=phase, deleting=deleting)


def test_only_a_finished_pod_for_every_subtask_ends_the_pause() -> None:
    done, failed = PodPhase.SUCCEEDED, PodPhase.FAILED
    assert pods_all_finished([pod("a", done), pod("b", failed)], 2)
    assert pods_all_finished([pod("a", failed), pod("a", done, attempt=2)], 1)
    assert not pods_all_finished([pod("a", done), pod("b", PodPhase.RUNNING)], 2)
    assert not pods_all_finished([pod("a", done), pod("a", PodPhase.PENDING, attempt=2)], 1)
    # A subtask whose pod the cache does not show yet, or that runs at a gateway.
    assert not pods_all_finished([pod("a", done)], 2)
    assert not pods_all_finished([], 1)
    assert not pods_all_finished([], 0)
    # A finished pod being deleted (a move) has events still to come.
    assert not pods_all_finished([pod("a", done, deleting=True)], 1)
