"""History features of a backend's queue, computed identically in training and at run time
(pure numpy, no training dependency, so serving can use this very function).

``recent_wait_*`` at submission time ``t`` for backend ``B``: take the jobs of ``B`` that had
already STARTED strictly before ``t`` (start = submission + queue wait); of those, the
``RECENT_JOBS`` with the latest start; their queue waits give

- ``recent_wait_p50_s``: median (numpy, mean of the two middle values for even counts),
- ``recent_wait_p90_s``: 90th percentile (numpy's default linear interpolation),
- ``recent_wait_count``: how many there were (0..20); with 0, p50 = p90 = 0.

A job still queued at ``t`` contributes nothing (its wait is not known yet): the features never
look into the future. ``hour_of_day_utc`` is the submission's UTC hour (0..23) and
``day_of_week`` its weekday, 0 = Monday.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt

RECENT_JOBS: Final = 20


def recent_wait(
    starts: Sequence[float] | npt.NDArray[np.float64],
    waits: Sequence[float] | npt.NDArray[np.float64],
    now: float,
) -> tuple[float, float, float]:
    """(p50, p90, count) of the queue waits of the ``RECENT_JOBS`` latest jobs that started
    strictly before ``now`` (all times in seconds since the epoch; one backend's jobs)."""
    start = np.asarray(starts, dtype=np.float64)
    wait = np.asarray(waits, dtype=np.float64)
    known = np.flatnonzero(start < now)
    if known.size == 0:
        return 0.0, 0.0, 0.0
    latest = known[np.argsort(start[known], kind="stable")[-RECENT_JOBS:]]
    values = wait[latest]
    return float(np.median(values)), float(np.percentile(values, 90)), float(values.size)


def recent_wait_all(
    backends: npt.NDArray[np.str_],
    submitted: npt.NDArray[np.float64],
    waits: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """``recent_wait`` for every job of a trace at its own submission time: [N, 3]."""
    out = np.zeros((len(submitted), 3), dtype=np.float64)
    started = submitted + waits
    for backend in np.unique(backends):
        idx = np.flatnonzero(backends == backend)
        order = idx[np.argsort(started[idx], kind="stable")]
        sorted_starts = started[order]
        for i in idx:
            n = int(np.searchsorted(sorted_starts, submitted[i], side="left"))
            if n == 0:
                continue
            values = waits[order[max(0, n - RECENT_JOBS) : n]]
            out[i] = (np.median(values), np.percentile(values, 90), values.size)
    return out


def calendar(when: datetime) -> tuple[float, float]:
    """(hour_of_day_utc, day_of_week) of a moment."""
    utc = when.astimezone(UTC)
    return float(utc.hour), float(utc.weekday())
