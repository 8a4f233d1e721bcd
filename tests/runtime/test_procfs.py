"""The /proc probes on hand-written maps text: parsing, and finding the one mapping of a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.procfs import (
    MappedSpans,
    ProcfsError,
    file_regions,
    mapping_base,
    parse_maps_line,
)

pytestmark = pytest.mark.unit


def test_parse_maps_line() -> None:
    r = parse_maps_line("7f00a000-7f00c000 r--s 00003000 fd:01 1234   /m/model gguf.gguf")
    assert r is not None
    assert (r.start, r.end, r.perms, r.offset, r.dev, r.inode) == (
        0x7F00A000, 0x7F00C000, "r--s", 0x3000, (0xFD, 1), 1234,
    )
    assert r.path == "/m/model gguf.gguf" and r.base == 0x7F007000
    assert parse_maps_line("") is None


def _maps_line(path: Path, start: int, end: int, offset: int) -> str:
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    return f"{start:x}-{end:x} r--s {offset:08x} {dev} {st.st_ino} {path}"


def test_mapping_base_groups_split_regions(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"\0" * 100)
    # llama.cpp unmapped the header page, mlock split the rest: one base, two regions.
    text = "\n".join([
        _maps_line(f, 0x10001000, 0x10005000, 0x1000),
        _maps_line(f, 0x10005000, 0x10009000, 0x5000),
        "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [vdso]",
    ])
    assert len(file_regions(f, text)) == 2
    assert mapping_base(f, text) == 0x10000000
    with pytest.raises(ProcfsError, match="not mapped in this process"):
        mapping_base(f, "")
    twice = text + "\n" + _maps_line(f, 0x20000000, 0x20001000, 0)
    with pytest.raises(ProcfsError, match="mapped 2 times"):
        mapping_base(f, twice)


def test_mapped_spans_tell_the_regions_that_were_there_before(tmp_path: Path) -> None:
    """What a second load of one file excludes (another model's regions of it): any region
    overlapping a file mapping of the snapshot, by as little as one page; anonymous memory and
    regions mapped since are not covered."""
    f = tmp_path / "model.onnx.data"
    f.write_bytes(b"\0" * 100)
    before = MappedSpans("\n".join([
        _maps_line(f, 0x10000000, 0x10004000, 0),
        _maps_line(f, 0x10008000, 0x1000A000, 0x4000),
        "20000000-20010000 rw-p 00000000 00:00 0 ",  # anonymous: not a file mapping
    ]))
    region = lambda lo, hi: parse_maps_line(_maps_line(f, lo, hi, 0))  # noqa: E731
    assert before.covers(region(0x10000000, 0x10004000))  # the same region
    assert before.covers(region(0x10003000, 0x10005000))  # its last page
    assert before.covers(region(0x10006000, 0x10009000))  # the second one's first page
    assert before.covers(region(0x0FFFF000, 0x1000B000))  # around both
    assert not before.covers(region(0x10004000, 0x10008000))  # the gap between
    assert not before.covers(region(0x0FFFF000, 0x10000000))  # ends where the first starts
    assert not before.covers(region(0x20000000, 0x20001000))  # where the anonymous one is
    assert not MappedSpans("").covers(region(0x10000000, 0x10004000))
    assert before.any_under(tmp_path) and not before.any_under(tmp_path / "elsewhere")
    other = tmp_path / "tokenizer.json"  # another file's addresses, since handed to this one
    other.write_bytes(b"{}")
    assert not MappedSpans(_maps_line(other, 0x10000000, 0x10004000, 0)).covers(
        region(0x10000000, 0x10004000))
