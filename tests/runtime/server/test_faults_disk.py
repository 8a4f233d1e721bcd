"""A full disk while a routing trace is saved (`edgemoe trace --save`): a clear error, the previous
file intact, no temporary file left. The full disk is real: a 64 KiB tmpfs mounted for the test
(needs root; skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.experts.routing_trace import RoutingTrace, TraceError, synthetic_trace

pytestmark = pytest.mark.unit

SMALL_FS_BYTES = 64 << 10


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 64 KiB: writes past it fail with ENOSPC, as on a full SD card."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_BYTES}", "tmpfs",
                           str(mnt)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def _trace(n_steps: int, seed: int) -> RoutingTrace:
    return synthetic_trace(n_steps, n_experts=64, moe_layers=range(8), top_k=4, seed=seed)


def test_full_disk_keeps_the_previous_trace_and_leaves_no_temp_file(small_fs: Path) -> None:
    path = small_fs / "trace.json"
    small = _trace(20, seed=1)
    small.save(path)
    before = path.read_bytes()
    big = _trace(2000, seed=2)  # ~250 KB of JSON: four times the filesystem
    with pytest.raises(TraceError) as e:
        big.save(path)
    message = str(e.value)
    assert str(path) in message and "No space left on device" in message
    assert "previous file is unchanged" in message
    assert path.read_bytes() == before
    assert RoutingTrace.load(path).steps == small.steps
    assert sorted(p.name for p in small_fs.iterdir()) == ["trace.json"]


def test_full_disk_on_a_first_save_leaves_nothing(small_fs: Path) -> None:
    path = small_fs / "new.json"
    with pytest.raises(TraceError, match="nothing was written"):
        _trace(2000, seed=3).save(path)
    assert list(small_fs.iterdir()) == []


def test_space_freed_then_save_succeeds(small_fs: Path) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (SMALL_FS_BYTES - 4096))
    path = small_fs / "trace.json"
    tr = _trace(60, seed=4)
    with pytest.raises(TraceError):
        tr.save(path)
    filler.unlink()
    tr.save(path)
    assert RoutingTrace.load(path).steps == tr.steps
