"""``qorch.operator.heap.settle_heap``: what lives at start-up leaves the garbage collector's
walks, and what becomes garbage later is still collected."""

from __future__ import annotations

import gc
import weakref

import qorch.operator.handlers  # noqa: F401  (what the operator imports, for the count)
from qorch.operator.heap import GC_YOUNG_THRESHOLD, settle_heap


def test_what_lives_at_start_up_is_frozen_and_later_garbage_still_collected() -> None:
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000  # the modules imported here, at least
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, threshold[1], threshold[2])

        class Node:
            def __init__(self) -> None:
                self.me = self

        # Cycles made after the freeze are still found and freed (whenever it runs).
        made = [weakref.ref(Node()) for _ in range(1_000)]
        gc.collect()
        assert all(ref() is None for ref in made)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
