"""How the applier cuts a plan into writes that may run at once: pod writes of one kind
(each names its own pod) together, everything else alone and in the plan's order."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from qorch.operator.apply import _bounded_gather, _segments
from qorch.orchestrator.plan import CancelJob, CreatePod, DeletePod, ReleasePod, SubmitJob


def _create(i: int) -> CreatePod:
    return CreatePod(subtask=f"s{i}", attempt=1, pod_name=f"p{i}", pool="cpu")


def test_a_run_of_pod_writes_is_one_chain_per_pod_and_the_rest_runs_alone() -> None:
    cancel = CancelJob(job_id="j0", backend="a", reason="moved")
    submit = SubmitJob(subtask="s9", attempt=2, job_id="j1", backend="b")
    release = [ReleasePod(pod_name=f"p{i}", pool="cpu") for i in range(3)]
    delete = DeletePod(pod_name="old", reason="moved")
    # The planner launches a pod as its create, then its release: one chain, in order.
    launches = [_create(0), release[0], _create(1), release[1]]
    actions = [*launches, cancel, submit, release[2], delete, _create(3)]
    segments = _segments(actions)
    assert segments == [
        [[_create(0), release[0]], [_create(1), release[1]]],
        [[cancel]],
        [[submit]],
        [[release[2]], [delete], [_create(3)]],
    ]
    # Nothing lost, nothing reordered within a pod or across segments.
    flat = [a for segment in segments for chain in segment for a in chain]
    assert sorted(map(repr, flat)) == sorted(map(repr, actions))
    assert flat[:4] == launches and flat[4:6] == [cancel, submit]


def test_bounded_gather_keeps_the_order_and_the_bound() -> None:
    running, peak = 0, 0

    async def write(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (5 - i % 5))  # later ones finish first
        running -= 1
        return i

    async def main() -> list[int]:
        return await _bounded_gather([partial(write, i) for i in range(20)], 4)

    assert asyncio.run(main()) == list(range(20))
    assert peak == 4


def test_bounded_gather_lets_every_call_finish_before_raising() -> None:
    finished: list[int] = []

    async def write(i: int) -> int:
        await asyncio.sleep(0.01 * i)
        if i == 0:
            raise RuntimeError("refused")
        finished.append(i)
        return i

    async def main() -> list[int]:
        return await _bounded_gather([partial(write, i) for i in range(5)], 2)

    with pytest.raises(RuntimeError, match="refused"):
        asyncio.run(main())
    assert sorted(finished) == [1, 2, 3, 4]
