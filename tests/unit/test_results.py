"""Primitive results as JSON: the counts come out as qiskit's own ``get_counts`` has them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from qiskit.primitives.containers import BitArray, DataBin, SamplerPubResult

from qorch.quantum.results import TOP_OUTCOMES, bit_counts, sampler_result


@st.composite
def bit_arrays(draw: st.DrawFn) -> BitArray:
    """Any packed array, the first byte's unused high bits included (a BitArray keeps
    them zero; the counts must not depend on it), in any leading shape."""
    num_bits = draw(st.integers(1, 130))
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))
    shots = draw(st.integers(1, 300))
    width = (num_bits + 7) // 8
    # Few distinct values per byte: repeated outcomes, as real counts have.
    values = st.sampled_from([0, 1, 128, 255])
    data = draw(arrays(np.uint8, (*shape, shots, width), elements=values))
    return BitArray(data, num_bits)


@settings(max_examples=300, deadline=None)
@given(bit_arrays())
def test_bit_counts_are_qiskits_counts(bits: BitArray) -> None:
    assert bit_counts(bits) == bits.get_counts()


def test_sampler_result_keeps_the_most_frequent_outcomes_of_all_registers() -> None:
    rng = np.random.default_rng(7)
    wide = BitArray.from_bool_array(rng.random((5000, 12)) < 0.5)  # ~4096 outcomes
    narrow = BitArray.from_bool_array(np.ones((5000, 1), dtype=bool))
    one = SamplerPubResult(DataBin(c=wide, shape=()))
    two = SamplerPubResult(DataBin(a=narrow, c=wide, shape=()))
    result = sampler_result(one)
    counts = wide.get_counts()
    assert result["shots"] == 5000
    assert result["truncated"] and result["distinctOutcomes"] == len(counts)
    kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_OUTCOMES]
    assert result["counts"] == dict(kept)
    # Two registers: joined as qiskit joins them, the first register rightmost.
    joined = sampler_result(two)
    assert all(len(k) == 13 and k.endswith("1") for k in joined["counts"])
    assert joined["distinctOutcomes"] == len(counts)
