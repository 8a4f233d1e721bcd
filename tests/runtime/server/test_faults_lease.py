"""The model file guard on its own: fingerprints, kernel read leases, and the probe used to tell
when a changed file is quiet again. Real files and real lease breakers in child processes."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.server.lease import LEASE_SIGNAL, FileGuard, lease_problem, probe

pytestmark = pytest.mark.unit

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the degraded case drops CAP_LEASE")


def _file(tmp_path: Path, size: int = 64 << 10) -> Path:
    f = tmp_path / "model.gguf"
    f.write_bytes(os.urandom(size))
    return f


@pytest.fixture
def lease_signal_caught():
    """Leases signal the holder (SIGIO kills by default): catch it, as the server does."""
    got: list[float] = []
    old = signal.signal(LEASE_SIGNAL, lambda *_: got.append(time.monotonic()))
    yield got
    signal.signal(LEASE_SIGNAL, old)


def test_unchanged_file_passes_and_fingerprint_spots_changes(tmp_path: Path) -> None:
    f = _file(tmp_path)
    guard = FileGuard.open([f, f], lease=False)  # one file, named twice: held once
    try:
        assert guard.paths == (f,) and not guard.leased and guard.changed() is None
        os.truncate(f, 4096)
        assert "truncated in place" in (guard.changed() or "")
        assert "65536 -> 4096 bytes" in (guard.changed() or "")
    finally:
        guard.close()
    assert guard.closed and guard.changed() is None


def test_same_size_rewrite_is_noticed(tmp_path: Path) -> None:
    f = _file(tmp_path)
    guard = FileGuard.open([f], lease=False)
    try:
        time.sleep(0.01)
        with open(f, "r+b") as w:
            w.write(b"x" * 16)
        os.utime(f, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # coarse clocks
        assert "rewritten in place" in (guard.changed() or "")
    finally:
        guard.close()


def test_rename_and_delete_are_not_changes(tmp_path: Path) -> None:
    """The mapping pins the old inode, so a replaced or deleted file is still safe to serve."""
    f = _file(tmp_path)
    guard = FileGuard.open([f], lease=False)
    try:
        new = tmp_path / "new.gguf"
        new.write_bytes(b"other")
        os.replace(new, f)
        assert guard.changed() is None
        f.unlink()
        assert guard.changed() is None
    finally:
        guard.close()


def test_lease_holds_a_truncating_writer_until_released(tmp_path: Path,
                                                        lease_signal_caught) -> None:
    f = _file(tmp_path)
    guard = FileGuard.open([f], lease=True)
    assert guard.leased, guard.problems
    writer = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.truncate({str(f)!r}, 0)"])
    try:
        deadline = time.monotonic() + 30
        while not lease_signal_caught:
            assert time.monotonic() < deadline, "no lease-break signal"
            time.sleep(0.01)
        assert "for writing" in (guard.changed() or "")
        time.sleep(0.3)
        assert writer.poll() is None, "the writer was not held by the lease"
        assert f.stat().st_size == 64 << 10
    finally:
        guard.close()
    assert writer.wait(30) == 0
    assert f.stat().st_size == 0


def test_probe_tells_a_file_still_open_for_writing(tmp_path: Path) -> None:
    f = _file(tmp_path)
    fp, busy = probe(f, lease=True)
    assert fp is not None and fp.size == 64 << 10 and not busy
    with open(f, "r+b"):
        assert probe(f, lease=True)[1]
    assert probe(tmp_path / "missing", lease=True) == (None, False)


def test_lease_problems_name_the_cause(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    assert "CAP_LEASE" in lease_problem(f, OSError(errno.EACCES, "x"))
    assert "open for writing" in lease_problem(f, OSError(errno.EAGAIN, "x"))
    assert "does not support leases" in lease_problem(f, OSError(errno.EINVAL, "x"))


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_without_cap_lease_the_guard_degrades_with_a_reason(tmp_path: Path) -> None:
    """A process that neither owns the file nor holds CAP_LEASE gets no lease: the guard says
    why and still checks the fingerprint."""
    f = _file(tmp_path)
    os.chown(f, 65534, 65534)
    code = (
        "from pathlib import Path; from runtime.server.lease import FileGuard;"
        f"g = FileGuard.open([Path({str(f)!r})], lease=True);"
        "print(g.leased, g.problems[0]); g.close()"
    )
    out = subprocess.run(
        ["setpriv", "--inh-caps=-lease", "--bounding-set=-lease", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False ") and "CAP_LEASE" in out.stdout, out.stdout


def test_fcntl_has_what_the_guard_needs() -> None:
    for name in ("F_SETLEASE", "F_GETLEASE", "F_RDLCK", "F_UNLCK"):
        assert hasattr(fcntl, name)
