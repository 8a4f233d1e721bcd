"""Where an engine mapped the expert file (runtime/backends/mapping.py): file ranges turned into
address pieces, checked against a byte-by-byte walk of the regions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.backends.mapping import FileMapping


def _walk(regions, lo: int, hi: int):
    """Byte by byte: each byte's address in the first region (by start) holding it."""
    if lo >= hi:
        return None
    out: list[tuple[int, int]] = []
    for b in range(lo, hi):
        holder = next(((r_lo, addr) for r_lo, r_hi, addr in sorted(regions)
                       if r_lo <= b < r_hi), None)  # fmt: skip
        if holder is None:
            return None
        a = holder[1] + (b - holder[0])
        if out and out[-1][0] + out[-1][1] == a:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((a, 1))
    return out


_region = st.tuples(st.integers(0, 60), st.integers(1, 20), st.integers(0, 9))


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(st.lists(_region, min_size=1, max_size=6, unique_by=lambda r: r[0]),
       st.integers(0, 90), st.integers(0, 30))
def test_pieces_cover_a_range_exactly_or_say_none(raw, lo, n):
    # Regions with their own addresses, far apart (no two regions' addresses touch), so the
    # byte walk's merged pieces are the pieces a mapping should report, adjacent regions apart.
    regions = tuple((start, start + size, 10_000 * (k + 1) + start)
                    for k, (start, size, _) in enumerate(raw))
    got = FileMapping(regions).pieces(lo, lo + n)
    want = _walk(regions, lo, lo + n)
    if want is None:
        assert got is None
        return
    assert got is not None
    merged: list[tuple[int, int]] = []
    for addr, length in got:
        assert length > 0
        if merged and merged[-1][0] + merged[-1][1] == addr:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((addr, length))
    assert merged == want
