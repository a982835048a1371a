"""The twin's simulated classical pool: gated pods wait for their release, then for room,
first come first served; deleting one frees its room; background GPU load takes GPUs away;
``PodState`` read back as ``plan`` reads it from the apiserver."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qorch.orchestrator.cluster import PodRequest
from qorch.orchestrator.snapshot import PodPhase
from qorch.sim.pool import SimPod, SimPool

GIB = float(1 << 30)
ONE_CPU = PodRequest(1.0, GIB, 0.0)


def phase(pool: SimPool, name: str, t: float) -> PodPhase | None:
    state = pool.state(name, t)
    return state.phase if state is not None else None


def test_pods_start_as_room_frees_in_release_order() -> None:
    pool = SimPool("cpu", cpu_cores=2.0, memory_bytes=8 * GIB)
    for i, seconds in enumerate((100.0, 50.0, 10.0)):
        pool.create(f"p{i}", f"s{i}", 1, ONE_CPU, seconds)
    assert phase(pool, "p0", 0.0) is PodPhase.GATED
    for i in range(3):
        assert pool.release(f"p{i}", 0.0)
    assert not pool.release("p0", 1.0)  # released already
    assert phase(pool, "p0", 1.0) is PodPhase.RUNNING
    assert phase(pool, "p2", 1.0) is PodPhase.PENDING  # two cores, two pods running
    assert pool.free(1.0)[0] == 0.0
    # p1 ends at 50 s: p2 starts then, and ends at 60 s.
    assert phase(pool, "p2", 55.0) is PodPhase.RUNNING
    done = pool.state("p2", 60.0)
    assert done is not None and done.phase is PodPhase.SUCCEEDED
    assert done.result == {"simulated": True} and done.usage == {"wallSeconds": 10.0}
    assert done.pool == "cpu" and done.node is not None
    assert pool.next_change(60.0) == 100.0


def test_no_pod_overtakes_one_released_before_it() -> None:
    pool = SimPool("cpu", cpu_cores=2.0, memory_bytes=8 * GIB)
    pool.create("long", "a", 1, ONE_CPU, 100.0)
    pool.create("big", "b", 1, PodRequest(2.0, GIB, 0.0), 10.0)
    pool.create("small", "c", 1, ONE_CPU, 10.0)
    for name in ("long", "big", "small"):
        pool.release(name, 0.0)
    # One core is free, but "big" (two cores) is first in line: "small" waits behind it.
    assert phase(pool, "small", 5.0) is PodPhase.PENDING
    assert phase(pool, "big", 100.0) is PodPhase.RUNNING
    assert phase(pool, "small", 111.0) is PodPhase.RUNNING


def test_a_deleted_pod_frees_its_room_and_background_load_takes_gpus() -> None:
    busy = {"gpus": 3.0}
    pool = SimPool("gpu", cpu_cores=8.0, memory_bytes=32 * GIB, gpus=4.0,
                   background_gpus=lambda t: busy["gpus"])  # fmt: skip
    one_gpu = PodRequest(1.0, GIB, 1.0)
    pool.create("a", "a", 1, one_gpu, 1000.0)
    pool.create("b", "b", 1, one_gpu, 10.0)
    pool.release("a", 0.0)
    pool.release("b", 0.0)
    assert phase(pool, "a", 0.0) is PodPhase.RUNNING
    assert phase(pool, "b", 0.0) is PodPhase.PENDING  # the other tenants hold 3 of 4 GPUs
    assert pool.delete("a", 20.0) and pool.state("a", 20.0) is None
    assert phase(pool, "b", 20.0) is PodPhase.RUNNING  # a's GPU is free again
    busy["gpus"] = 4.0
    assert pool.free(25.0)[2] == -1.0  # b keeps its GPU; nothing else would fit
    assert not pool.delete("a", 30.0)
    assert pool.create("b", "x", 9, one_gpu, 1.0).subtask == "b"  # a 409: unchanged


def test_node_loss_fails_the_newest_running_pods_and_shrinks_the_pool() -> None:
    pool = SimPool("cpu", cpu_cores=4, memory_bytes=8 * GIB, outages=((100.0, 400.0, 0.5),))
    for i in range(4):
        pool.create(f"p{i}", f"s{i}", 1, PodRequest(1, GIB, 0), 1000.0)
        pool.release(f"p{i}", float(i))
    pool.create("late", "s", 1, PodRequest(1, GIB, 0), 10.0)
    pool.release("late", 150.0)
    states = {n: pool.state(n, 200.0) for n in ("p0", "p1", "p2", "p3", "late")}
    # Half the nodes left at 100 s: the two newest pods failed, the oldest two still run.
    assert [states[n].phase for n in ("p0", "p1")] == [PodPhase.RUNNING] * 2  # type: ignore[union-attr]
    for n in ("p2", "p3"):
        state = states[n]
        assert state is not None and state.phase is PodPhase.FAILED
        assert "left pool cpu" in state.message
    # The pod released during the outage waits: the half that is left is full.
    assert states["late"] is not None and states["late"].phase is PodPhase.PENDING
    assert pool.capacity_share(200.0) == 0.5 and pool.capacity_share(400.0) == 1.0
    assert pool.next_change(200.0) == 400.0  # the nodes come back
    late = pool.state("late", 400.0)
    assert late is not None and late.phase is PodPhase.RUNNING


class ScanningPool(SimPool):
    """The reference: every read scans every pod ever created, nothing is left out."""

    def _matter(self, at: float) -> Iterable[SimPod]:
        return self.pods.values()


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0, 0, 1, 1, 1, 2, 3, 4]), st.integers(0, 7), st.floats(0, 300)),
        max_size=80,
    )
)
def test_leaving_ended_pods_out_of_the_scans_changes_no_answer(
    steps: list[tuple[int, int, float]],
) -> None:
    """A pool that leaves the pods that ended out of its scans answers every read as one
    that scans every pod ever created: the same states, room, next change and running pods,
    with a node loss, a background load that comes and goes, and pods that end early (a
    loop's worker done with its batches)."""
    kw: dict[str, Any] = {
        "background_gpus": lambda t: 1.0 if int(t // 500) % 2 else 0.0,
        "outages": ((2000.0, 2600.0, 0.5),),
    }
    pools = (
        SimPool("gpu", 4.0, 16 * GIB, 2.0, prune_seconds=60.0, **kw),
        ScanningPool("gpu", 4.0, 16 * GIB, 2.0, prune_seconds=math.inf, **kw),
    )
    t, created = 0.0, 0
    for kind, index, dt in steps:
        t += dt
        answers = []
        for pool in pools:
            name = f"p{index}"
            if kind == 0:
                request = PodRequest(1.0 + index % 3, GIB, 0.5 * (index % 3))
                run = math.inf if index % 4 == 0 else 100.0 + 37.0 * index  # a loop: inf
                pool.create(f"p{created}", "s", 1, request, run)
            elif kind == 1:
                pool.release(name, t)
            elif kind == 2:
                pool.delete(name, t)
            elif kind == 3 and name in pool.pods and pool.pods[name].start <= t:
                pool.advance(t)
                pool.end_early(pool.pods[name], min(t, pool.pods[name].end))
            elif kind == 4 and name in pool.pods and pool.pods[name].released_at is None:
                pool.put(pool.take(name))
            states = [pool.state(n, t) for n in sorted(pool.pods)]
            running = sorted(p.name for p in pool.running(t))
            answers.append((pool.free(t), pool.next_change(t), states, running))
        created += kind == 0
        assert answers[0] == answers[1]


def test_a_released_pod_stays_in_its_pool_and_ends_no_later_than_it_would() -> None:
    pool, other = SimPool("cpu", 4.0, 16 * GIB), SimPool("gpu", 4.0, 16 * GIB, 2.0)
    pod = pool.create("p", "s", 1, ONE_CPU, 100.0)
    other.put(pool.take("p"))
    other.release("p", 0.0)
    with pytest.raises(ValueError, match="stays there"):
        other.take("p")
    with pytest.raises(ValueError, match="later"):
        other.end_early(pod, 500.0)
    other.end_early(pod, 40.0)
    assert phase(other, "p", 41.0) is PodPhase.SUCCEEDED
