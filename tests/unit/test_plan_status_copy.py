"""The plan's status copy and size count: fast paths that must answer what the slow ones did
(a deep copy; the ASCII JSON size the status budget is kept by)."""

from __future__ import annotations

from qorch.api.workflow import (
    HistoryEntry,
    HybridWorkflowStatus,
    Placement,
    PredictedOutcome,
    ResourceKind,
    SubtaskPhase,
    SubtaskStatus,
    VariationalProgress,
    WorkflowPhase,
)
from qorch.orchestrator.plan import STATUS_BUDGET_BYTES, _copy_status, _json_size, _within_budget


def status(message: str = "queued behind 12 jobs") -> HybridWorkflowStatus:
    return HybridWorkflowStatus(
        phase=WorkflowPhase.RUNNING,
        subtasks=[
            SubtaskStatus(
                name=f"s{i}",
                phase=SubtaskPhase.SCHEDULED,
                placement=Placement(kind=ResourceKind.BACKEND, name="ibm_kyiv"),
                predicted=PredictedOutcome(
                    source="model",
                    queueSecondsP10=1.0,
                    queueSecondsP50=12.5,
                    queueSecondsP90=1e-05,
                    runSeconds=3.0,
                    fidelity=0.93,
                    costUSD=1e-05,
                ),
                progress=VariationalProgress(batches={"ibm_kyiv": 3}, qpuSeconds={"x": 0.1}),
                history=[
                    HistoryEntry(time="2026-11-27T10:00:00Z", event="Placed", message=message)
                ],
                result={"counts": {"000": 510, "111": 490}, "nested": [1.5, None, "a"]},
                message=message,
            )
            for i in range(5)
        ],
    )


def test_the_copy_is_equal_and_shares_nothing_the_plan_changes() -> None:
    original = status()
    copy = _copy_status(original)
    assert copy == original and copy.model_dump() == original.model_dump()
    copy.subtasks[0].history.append(HistoryEntry(time="t", event="Moved"))
    copy.subtasks[0].result["counts"]["000"] = 0  # type: ignore[index]
    assert copy.subtasks[0].progress is not None
    copy.subtasks[0].progress.batches["ibm_kyiv"] = 9
    assert original == status()


def test_a_status_that_would_not_validate_again_is_still_copied() -> None:
    bad = HybridWorkflowStatus.model_construct(moves=-1, subtasks=[])  # fails ge=0
    copy = _copy_status(bad)
    assert copy.moves == -1 and copy is not bad


def test_the_budget_check_answers_as_the_exact_size_does() -> None:
    for s in (status(), status("naïve — ünïcode ✓" * 40), status("ü" * 1000)):
        assert _within_budget(s)
    big = status()
    big.subtasks[0].result = {"blob": "x" * int(STATUS_BUDGET_BYTES * 0.95)}
    size = _json_size(big.model_dump(mode="json"))
    assert STATUS_BUDGET_BYTES * 0.9 < size <= STATUS_BUDGET_BYTES  # counted exactly: fits
    assert _within_budget(big)
    big.subtasks[0].result = {"blob": "x" * STATUS_BUDGET_BYTES}
    assert not _within_budget(big)
    # Under the budget in characters, over it as _json_size escapes them: over.
    big.subtasks[0].result = {"blob": "ü" * (STATUS_BUDGET_BYTES // 5)}
    assert len(big.model_dump_json()) < STATUS_BUDGET_BYTES * 0.9
    assert not _within_budget(big)
    # json.dumps spells 1e-7 "1e-07": past the sure share, the exact count decides, and
    # here it is over where pydantic's JSON is not.
    big.subtasks[0].result = {"x": [1e-7] * int(STATUS_BUDGET_BYTES * 0.9 / 5)}
    assert len(big.model_dump_json()) < STATUS_BUDGET_BYTES
    assert _json_size(big.model_dump(mode="json")) > STATUS_BUDGET_BYTES
    assert not _within_budget(big)
