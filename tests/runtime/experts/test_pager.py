"""The pager's pure bookkeeping (runtime/experts/pager.py): which file ranges a load may have
mapped in beside the experts it was for, against the rule spelled out one expert at a time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def _neighbours_byte_by_expert(loaded, free, tensors, n_experts):
    """The spec, one expert at a time: a released expert's whole slice, per tensor, when an
    expert loaded in its layer lies within the window (in that tensor's experts)."""
    from runtime.experts.pager import FOLIO_WINDOW

    pieces = []
    for layer, experts in loaded.items():
        for offset, stride in tensors[layer]:
            k = -(-FOLIO_WINDOW // stride)
            for n in range(n_experts):
                if free[layer][n] and any(abs(n - e) <= k for e in experts):
                    pieces.append((offset + n * stride, offset + (n + 1) * stride))
    out = []
    for lo, hi in sorted(pieces):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.just(n),
    st.dictionaries(st.integers(0, 3), st.sets(st.integers(0, n - 1), min_size=1), min_size=1),
    st.lists(st.booleans(), min_size=4 * n, max_size=4 * n),
    st.lists(st.sampled_from([2**21, 2**20, 300_000, 147_582, 4_096]), min_size=1, max_size=3))))
def test_neighbour_spans_are_the_released_slices_within_the_window(case):
    from runtime.experts.pager import neighbour_spans

    n, loaded, bits, strides = case
    free = {layer: [bits[layer * n + e] and e not in loaded[layer] for e in range(n)]
            for layer in loaded}  # loaded experts are never released
    tensors, at = {}, 0
    for layer in sorted(loaded):  # each layer's tensors one after another in the file
        tensors[layer] = []
        for stride in strides:
            tensors[layer].append((at, stride))
            at += stride * n
    assert neighbour_spans(loaded, free, tensors, n) == \
        _neighbours_byte_by_expert(loaded, free, tensors, n)
