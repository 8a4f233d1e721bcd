"""Guards on the files a served model is mapped from: a kernel read lease and a fingerprint.

Why: llama.cpp (and onnxruntime, for its external data) maps the model file MAP_SHARED. A file
replaced by rename or deleted leaves the mapping valid (the mapping pins the old inode), but a
file truncated or rewritten in place changes the pages under it: after a truncation the next
access raises SIGBUS and kills the process; an in-place rewrite feeds the engine other bytes.

A read lease (`F_SETLEASE`, `F_RDLCK`) makes the kernel hold any other process's open-for-writing
or truncate(2) of the file for up to /proc/sys/fs/lease-break-time seconds (45 by default) and
signal us (SIGIO) first, so the server stops using the mapping, unmaps it and releases the lease
before a byte changes. Leases need the process to own the file or hold CAP_LEASE, a filesystem
that supports them (local ones do; NFS and FUSE mostly not), and no process holding the file
open for writing when the lease is taken. Without one the guard falls back to its fingerprint
(inode, size, mtime of the open file), checked before every generation and once a second: the
change is noticed, but a truncation that lands while a generation runs can still kill the
process; `serve` enables faulthandler so that death is written to the log with its stack.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import EdgemoeError

# The signal the kernel sends when a lease is broken (F_SETSIG 0: the default, SIGIO).
LEASE_SIGNAL = signal.SIGIO


class ModelFileChangedError(EdgemoeError):
    """A served model's file was truncated or rewritten in place; the server stopped using it."""


@dataclass(frozen=True)
class Fingerprint:
    """What identifies one version of a file without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class _Held:
    """One guarded file: its descriptor (kept open), what it was at load, whether leased."""

    path: Path
    fd: int
    loaded: Fingerprint
    leased: bool


def lease_problem(path: Path, error: OSError) -> str:
    """Why the kernel refused a read lease on `path`, in words an operator can act on."""
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"this process neither owns {path} nor has CAP_LEASE"
    if error.errno == errno.EAGAIN:
        return f"another process has {path} open for writing"
    if error.errno == errno.EINVAL:
        return f"the filesystem of {path} does not support leases (or fs.leases-enable is 0)"
    return f"{path}: {os.strerror(error.errno or 0)}"


class FileGuard:
    """Holds a model's mapped files open read-only, leased where the kernel allows.

    `changed()` is the cheap check (one fstat and, when leased, one F_GETLEASE per file, a few
    microseconds) run before each generation and by the server's watcher. `close()` releases
    the leases; call it only after the model's mapping is gone.
    """

    def __init__(self, held: list[_Held], problems: list[str]) -> None:
        self._held = held
        self.problems = problems  # why some file has no lease; empty when all are leased
        # changed() and close() exclude each other: a descriptor number closed here could be
        # reused by another open at once, and an fstat on it would see some other file.
        self._lock = threading.Lock()

    @classmethod
    def open(cls, paths: Iterable[Path], *, lease: bool) -> FileGuard:
        """Open each file (once, whatever its spelling) and take a read lease if `lease`."""
        held: list[_Held] = []
        problems: list[str] = []
        seen: set[tuple[int, int]] = set()
        try:
            for path in paths:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) in seen:
                    os.close(fd)
                    continue
                seen.add((st.st_dev, st.st_ino))
                leased = False
                if lease:
                    try:
                        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
                        leased = True
                    except OSError as e:
                        problems.append(lease_problem(Path(path), e))
                held.append(_Held(Path(path), fd, Fingerprint.of(st), leased))
        except BaseException:
            for h in held:
                os.close(h.fd)
            raise
        return cls(held, problems)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(h.path for h in self._held)

    @property
    def leased(self) -> bool:
        """Every guarded file is leased: a writer is held until the server lets go."""
        return bool(self._held) and all(h.leased for h in self._held)

    @property
    def closed(self) -> bool:
        return all(h.fd < 0 for h in self._held)

    def changed(self) -> str | None:
        """None while every file is as loaded; else what happened, naming the file."""
        with self._lock:
            return self._changed()

    def _changed(self) -> str | None:
        for h in self._held:
            if h.fd < 0:
                continue
            now = Fingerprint.of(os.fstat(h.fd))
            if now.size != h.loaded.size:
                verb = "truncated" if now.size < h.loaded.size else "extended"
                return (f"{h.path} was {verb} in place while being served "
                        f"({h.loaded.size} -> {now.size} bytes)")
            if now.mtime_ns != h.loaded.mtime_ns:
                return f"{h.path} was rewritten in place while being served"
            if h.leased and fcntl.fcntl(h.fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
                # A lease being broken reports the type it will drop to (F_UNLCK).
                return f"a process opened {h.path} for writing (or truncated it) while served"
        return None

    def close(self) -> None:
        """Close the files; closing the descriptor releases its lease and frees the writer."""
        with self._lock:
            for h in self._held:
                if h.fd >= 0:
                    os.close(h.fd)
                    h.fd = -1


def probe(path: Path, *, lease: bool) -> tuple[Fingerprint | None, bool]:
    """(fingerprint, busy) of the file at `path` now; (None, False) when it is missing.

    busy: with leases available, some process still has it open for writing (a read lease is
    refused then), so whatever is being written is not finished. The probe lease is released
    at once; a writer that opens the file meanwhile waits only that long.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, False
    try:
        fp = Fingerprint.of(os.fstat(fd))
        if not lease:
            return fp, False
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            return fp, e.errno == errno.EAGAIN
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return fp, False
    finally:
        os.close(fd)


def lease_break_seconds() -> float:
    """How long the kernel holds a lease breaker before it breaks the lease by force."""
    try:
        return float(Path("/proc/sys/fs/lease-break-time").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 45.0
