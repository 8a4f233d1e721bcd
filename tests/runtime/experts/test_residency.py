"""Residency on a real file mapping, checked from outside our books (smaps, pagemap, mincore)."""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.experts import residency
from runtime.experts.cache import ExpertCache
from runtime.experts.residency import (
    MadviseResidency,
    drop_file_cache,
    inward,
    outward,
    page_cache_residency,
)
from runtime.procfs import (
    PAGE_SIZE,
    mapped_pages,
    mapping_base,
    mapping_rss,
    peak_rss,
    peak_rss_reset,
    process_rss,
)

pytestmark = pytest.mark.unit
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and madvise")

FILE_BYTES = 64 << 20
N_EXPERTS = 16
SKEW = 1000  # experts do not start on page boundaries, as in a GGUF (32-byte alignment)
STRIDE = (FILE_BYTES - 2 * SKEW) // N_EXPERTS


def expert_ranges(layer: int, expert: int) -> list[tuple[int, int]]:
    start = SKEW + expert * STRIDE
    return [(start, start + STRIDE)]


# --- pure ----------------------------------------------------------------------------------------
def test_inward_and_outward_rounding() -> None:
    p = 4096
    assert inward(2 * p + 100, 5 * p + 100, p) == (3 * p, 5 * p)
    assert inward(2 * p, 5 * p, p) == (2 * p, 5 * p)
    assert inward(p + 1, 2 * p - 1, p) is None
    assert outward(2 * p + 100, 5 * p + 100, p) == (2 * p, 6 * p)


# --- a real mapping ------------------------------------------------------------------------------
@pytest.fixture
def mapped(tmp_path: Path) -> Iterator[tuple[Path, mmap.mmap, int]]:
    """A 64 MiB file mapped read-only and shared (as llama.cpp does), every page touched."""
    path = tmp_path / "model.gguf"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(FILE_BYTES >> 20):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    drop_file_cache(path)  # let faults, not the write, populate the page cache
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        # With THP "always" the kernel may map file pages by 2 MiB PMDs; a partial DONTNEED
        # then unmaps the whole PMD, neighbours included (harmless: they fault back). Small
        # pages keep the exact-page assertions below about our rounding, not about THP.
        m.madvise(mmap.MADV_NOHUGEPAGE)
    _touch(m, 0, FILE_BYTES)
    yield path, m, mapping_base(path)
    m.close()


def _touch(m: mmap.mmap, start: int, end: int) -> int:
    return sum(m[i] for i in range(start // PAGE_SIZE * PAGE_SIZE, end, PAGE_SIZE))


def _rss(path: Path) -> int:
    value = mapping_rss(path)
    assert value is not None
    return value


@linux
def test_release_half_the_experts_halves_mapping_rss(mapped) -> None:
    path, m, base = mapped
    before = _rss(path)
    assert before >= FILE_BYTES * 0.98
    with MadviseResidency(path, base, expert_ranges, strict=True) as res:
        for e in range(0, N_EXPERTS, 2):
            res.release(0, e)
        dropped = before - _rss(path)
        assert res.stats.bytes_released == sum(
            (lambda p: p[1] - p[0])(inward(*expert_ranges(0, e)[0])) for e in range(0, 16, 2)
        )
        assert abs(dropped - res.stats.bytes_released) <= 4 * PAGE_SIZE
        assert res.stats.bytes_kept_partial == 8 * STRIDE - res.stats.bytes_released
        # The kept experts are still fully mapped; so are the released ones' edge pages.
        for e in range(1, N_EXPERTS, 2):
            assert all(mapped_pages(base + SKEW + e * STRIDE, STRIDE))
        res.load(0, 0)
        _touch(m, *expert_ranges(0, 0)[0])
        assert _rss(path) - (before - dropped) >= STRIDE - 2 * PAGE_SIZE


@linux
def test_release_rounds_inward_and_never_touches_neighbours(mapped) -> None:
    path, _, base = mapped
    p = PAGE_SIZE
    before = _rss(path)
    one = [(2 * p + 100, 5 * p + 100)]
    with MadviseResidency(path, base, lambda layer, e: one, strict=True) as res:
        res.release(0, 0)
        assert mapped_pages(base + 2 * p, 4 * p) == [True, False, False, True]
        assert before - _rss(path) == 2 * p
        assert res.kept_partial_bytes(0, 0) == (p - 100) + 100


@linux
def test_cold_release_drops_the_page_cache_too(mapped) -> None:
    path, _, base = mapped
    warm_res = MadviseResidency(path, base, expert_ranges, strict=True)
    warm_res.release(0, 1)
    lo, hi = inward(*expert_ranges(0, 1)[0])
    assert all(page_cache_residency(base + lo, hi - lo))  # warm: only unmapped
    with MadviseResidency(path, base, expert_ranges, cold=True, strict=True) as cold:
        cold.release(0, 2)
        lo, hi = inward(*expert_ranges(0, 2)[0])
        cached = page_cache_residency(base + lo, hi - lo)
        # fadvise drops only page-cache folios wholly inside the range: a large folio that
        # straddles an edge stays (readahead builds them), so allow a few edge pages.
        assert sum(cached) <= 64 and not any(cached[64:-64])
        assert all(page_cache_residency(base + SKEW + 3 * STRIDE, STRIDE))


@linux
def test_pin_locks_and_release_unlocks_first(mapped) -> None:
    path, _, base = mapped
    small = [(SKEW, SKEW + (1 << 20))]  # 1 MiB fits the usual 8 MiB RLIMIT_MEMLOCK
    with MadviseResidency(path, base, lambda layer, e: small, strict=True) as res:
        locked_before = _status_bytes("VmLck")
        res.pin(0, 0)
        if res.stats.pin_fallbacks:
            pytest.skip("mlock refused on this machine")
        assert _status_bytes("VmLck") - locked_before >= 1 << 20
        res.release(0, 0)  # MADV_DONTNEED fails on locked pages: must unlock first
        assert res.stats.errors == 0
        assert _status_bytes("VmLck") == locked_before


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


class _RefusingLibc:
    """The real libc, except that mlock is refused as RLIMIT_MEMLOCK would."""

    def __init__(self, real: ctypes.CDLL) -> None:
        self.real = real
        self.madvise_calls: list[int] = []

    def madvise(self, addr: int, length: int, advice: int) -> int:
        self.madvise_calls.append(advice)
        return self.real.madvise(addr, length, advice)

    def mlock(self, addr: int, length: int) -> int:
        ctypes.set_errno(errno.ENOMEM)
        return -1

    def munlock(self, addr: int, length: int) -> int:
        return self.real.munlock(addr, length)


@linux
def test_pin_falls_back_to_willneed_with_one_warning(mapped, monkeypatch, caplog) -> None:
    path, _, base = mapped
    fake = _RefusingLibc(residency._LIBC)
    monkeypatch.setattr(residency, "_LIBC", fake)
    with caplog.at_level(logging.WARNING, logger="runtime.experts.residency"):
        with MadviseResidency(path, base, expert_ranges) as res:
            res.pin(0, 0)
            res.pin(0, 1)
    assert res.stats.pin_fallbacks == 2 and res.stats.errors == 0
    hints = [c for c in fake.madvise_calls if c != getattr(mmap, "MADV_NOHUGEPAGE", None)]
    assert hints == [mmap.MADV_WILLNEED] * 2
    warnings = [r for r in caplog.records if "mlock refused" in r.getMessage()]
    assert len(warnings) == 1 and "RLIMIT_MEMLOCK" in warnings[0].getMessage()


def test_missing_madvise_is_a_logged_no_op(tmp_path: Path, monkeypatch, caplog) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"\0" * PAGE_SIZE * 4)
    monkeypatch.setattr(residency, "_LIBC", None)
    with caplog.at_level(logging.WARNING, logger="runtime.experts.residency"):
        res = MadviseResidency(f, 0, lambda layer, e: [(0, 4 * PAGE_SIZE)])
        res.release(0, 0)
        res.load(0, 0)
        res.pin(0, 0)
    assert res.stats.bytes_released == 0 and res.stats.pin_fallbacks == 1
    assert any("madvise is unavailable" in r.getMessage() for r in caplog.records)


@linux
def test_cache_books_match_the_mapping(mapped) -> None:
    """The expert cache drives real madvise: smaps Rss follows its resident bytes."""
    path, m, base = mapped
    with MadviseResidency(path, base, expert_ranges, strict=True) as res:
        cache = ExpertCache({0: STRIDE}, N_EXPERTS, 4 * STRIDE, {0: [0]}, "lru", res)
        cache.warm()
        _touch(m, *expert_ranges(0, 0)[0])
        slack = 2 * PAGE_SIZE * N_EXPERTS  # edge pages released experts keep
        for experts in ([1, 2], [3], [1, 4], [5, 6, 2]):
            cache.access(0, experts)
            for e in experts:
                _touch(m, *expert_ranges(0, e)[0])  # the matmul faults them in
            assert abs(_rss(path) - cache.stats().resident_bytes) <= slack


@linux
def test_process_rss_and_peak_reset(mapped) -> None:
    path, m, base = mapped
    with MadviseResidency(path, base, expert_ranges) as res:
        for e in range(N_EXPERTS):
            res.release(0, e)
    assert peak_rss_reset()
    rss = process_rss()
    assert peak_rss() - rss < 8 << 20
    _touch(m, 0, FILE_BYTES)
    assert process_rss() - rss >= FILE_BYTES * 0.9
    assert peak_rss() >= process_rss()
