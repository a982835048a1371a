"""Primitive results as small JSON documents."""

from __future__ import annotations

from typing import Any

import numpy as np

TOP_OUTCOMES = 256  # results keep the most frequent outcomes (status objects stay small)


def sampler_result(pub_result: Any) -> dict[str, Any]:
    data = pub_result.data
    names = list(data)
    # One register (the usual case) as it is: joining copies and pads it.
    counts = bit_counts(data[names[0]] if len(names) == 1 else pub_result.join_data())
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


def bit_counts(bits: Any) -> dict[str, int]:
    """``BitArray.get_counts()`` (bitstrings, most significant bit first, over all shots),
    counted with ``numpy.unique`` on the packed rows: qiskit's own converts every shot to
    a string in Python (0.8 ms for 1,000 shots of 3 bits, against 0.05)."""
    array = bits.array.reshape(-1, bits.array.shape[-1])
    width = int(bits.num_bits)
    if width == 0 or array.shape[0] == 0:
        return dict(bits.get_counts())
    shots, size = array.shape
    if width % 8:  # the first byte's unused high bits are not outcome bits
        array = array.copy()
        array[:, 0] &= (1 << (width % 8)) - 1
    if size <= 8:  # up to 64 bits: each shot as one big-endian integer
        padded = np.zeros((shots, 8), dtype=np.uint8)
        padded[:, 8 - size :] = array
        values, times = np.unique(padded.view(">u8").ravel(), return_counts=True)
        outcomes = [int(v) for v in values]
    else:
        rows, times = np.unique(array, axis=0, return_counts=True)
        outcomes = [int.from_bytes(row.tobytes(), "big") for row in rows]
    return {format(o, f"0{width}b"): int(n) for o, n in zip(outcomes, times, strict=True)}
