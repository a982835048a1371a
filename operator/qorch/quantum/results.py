"""Primitive results as small JSON documents."""

from __future__ import annotations

from typing import Any

TOP_OUTCOMES = 256  # results keep the most frequent outcomes (status objects stay small)


def sampler_result(pub_result: Any) -> dict[str, Any]:
    counts: dict[str, int] = pub_result.join_data().get_counts()
    shots = sum(counts.values())
    top = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_OUTCOMES])
    result: dict[str, Any] = {"counts": top, "shots": shots}
    if len(top) < len(counts):
        result.update(truncated=True, distinctOutcomes=len(counts))
    return result


def estimator_result(pub_result: Any, observables: tuple[str, ...]) -> dict[str, Any]:
    evs = [float(v) for v in pub_result.data.evs]
    stds = [float(v) for v in pub_result.data.stds]
    return {"observables": list(observables), "expectationValues": evs, "stds": stds}
