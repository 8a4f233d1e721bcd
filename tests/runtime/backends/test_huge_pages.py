"""A full budget's huge-folio read (runtime/backends/huge_pages.py) on real files: it leaves the
whole file in the page cache, maps nothing afterwards, and gives up quietly on what it cannot
read; and the smaps probe behind `huge_mapped_bytes` counts only the named file's mappings."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.huge_pages import cached_share, read_in_huge_folios
from runtime.experts.residency import drop_file_cache
from runtime.procfs import file_regions, mapping_huge_bytes, mapping_rss

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(sys.platform != "linux", reason="madvise/mincore are Linux's")]

MIB = 2**20


def _file(tmp_path: Path, size: int) -> Path:
    p = tmp_path / "weights.bin"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    return p


def _share(path: Path) -> float:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)
        try:
            share = cached_share(view.ctypes.data, len(view))
        finally:
            del view
    assert share is not None
    return share


def test_reads_the_whole_file_into_the_page_cache(tmp_path: Path) -> None:
    p = _file(tmp_path, 8 * MIB + 123)
    os.sync()
    drop_file_cache(p)
    took = read_in_huge_folios(p)
    assert took is not None and took >= 0
    assert _share(p) == 1.0
    assert file_regions(p) == []  # its own mapping is gone
    assert read_in_huge_folios(p) is not None  # warm: nothing dropped, nothing failed


def test_gives_up_quietly_where_it_cannot_read(tmp_path: Path) -> None:
    assert read_in_huge_folios(tmp_path / "missing.gguf") is None
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert read_in_huge_folios(empty) is None
    assert read_in_huge_folios(tmp_path) is None  # a folder: mmap fails, no exception


def test_huge_mapped_bytes_counts_only_that_files_mappings(tmp_path: Path) -> None:
    p = _file(tmp_path, 4 * MIB)
    other = tmp_path / "other.bin"
    other.write_bytes(b"\0" * MIB)
    assert mapping_huge_bytes(p) == 0  # not mapped: nothing counted
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)
        assert int(view[:: mmap.PAGESIZE].sum()) >= 0  # touch every page
        del view
        huge, rss = mapping_huge_bytes(p), mapping_rss(p)
        assert huge is not None and rss is not None
        assert rss == 4 * MIB and 0 <= huge <= rss and huge % (2 * MIB) == 0
        assert mapping_huge_bytes(other) == 0
