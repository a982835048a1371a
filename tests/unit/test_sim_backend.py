"""The twin's simulated quantum backend: others' queue ahead of each job, Qorch's jobs first
come first served, cancellations that let the jobs behind move up, and the gateway's
``JobState`` read back as ``plan`` reads it from a real gateway."""

from __future__ import annotations

import pytest

from qorch.orchestrator.snapshot import JobPhase
from qorch.sim.backend import SimBackend


def test_jobs_wait_for_the_others_ahead_then_run_one_at_a_time() -> None:
    # Others' queue: 100 s of work ahead of anything submitted before t=50, none after.
    qb = SimBackend("qb", 27, others_wait=lambda t: 100.0 if t < 50 else 0.0,
                    others_length=lambda t: 4 if t < 50 else 0)  # fmt: skip
    a = qb.submit("a", 0.0, 30.0)
    b = qb.submit("b", 10.0, 20.0)
    late = qb.submit("late", 60.0, 5.0)
    assert (a.start, a.end) == (100.0, 130.0)
    assert (b.start, b.end) == (130.0, 150.0)  # behind the others, then behind a
    assert late.start == 150.0  # no others ahead of it, but Qorch's two are
    assert qb.submit("a", 99.0, 1.0) is a  # idempotent by id, as a gateway
    assert qb.state("a", 50.0).phase is JobPhase.QUEUED
    assert qb.state("a", 100.0).phase is JobPhase.RUNNING
    done = qb.state("a", 130.0)
    assert done is not None and done.phase is JobPhase.DONE
    assert (done.queue_seconds, done.execution_seconds, done.qpu_seconds) == (100.0, 30.0, 30.0)
    assert done.result == {"simulated": True}
    assert qb.state("nobody", 0.0) is None
    assert qb.next_change(0.0) == 100.0 and qb.next_change(130.0) == 150.0
    assert qb.next_change(155.0) is None
    assert qb.busy_seconds(140.0) == pytest.approx(30.0 + 10.0)


def test_queue_positions_count_qorchs_jobs_and_the_others_still_ahead() -> None:
    qb = SimBackend("qb", 27, others_wait=lambda t: 100.0, others_length=lambda t: 10)
    qb.submit("a", 0.0, 10.0)
    qb.submit("b", 0.0, 10.0)
    assert qb.state("a", 0.0).queue_position == 10  # the others it found
    assert qb.state("b", 0.0).queue_position == 11  # ... and a
    assert qb.state("a", 50.0).queue_position == 5  # half its wait is over
    assert qb.queue_length(0.0) == 12


def test_a_cancelled_job_lets_the_ones_behind_it_move_up() -> None:
    qb = SimBackend("qb", 27)
    qb.submit("a", 0.0, 60.0)
    qb.submit("b", 0.0, 60.0)
    c = qb.submit("c", 0.0, 60.0)
    assert c.start == 120.0
    assert qb.cancel("b", 10.0)
    assert qb.state("b", 10.0).phase is JobPhase.CANCELLED
    assert c.start == 60.0  # b no longer holds it up
    assert not qb.cancel("a", 10.0)  # running: cannot be cancelled
    assert not qb.cancel("c", 200.0)  # done
    assert qb.busy_seconds(500.0) == 120.0  # a and c only
    assert qb.next_change(60.0) == 120.0


def test_a_job_submitted_behind_a_running_one_waits_for_it_to_end() -> None:
    qb = SimBackend("qb", 27)
    qb.submit("a", 0.0, 100.0)
    b = qb.submit("b", 50.0, 10.0)
    assert b.start == 100.0
    assert qb.cancel("b", 60.0) and qb.submit("b2", 70.0, 10.0).start == 100.0
