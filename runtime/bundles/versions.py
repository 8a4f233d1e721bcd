"""Installed versions on disk, and the leases readers hold on them.

    DEST                      -> DEST.versions/<id>   (a relative symlink, see store.py)
    DEST.versions/<id>/       one complete bundle per version, never modified once there
    DEST.versions/.leases/<id>  an empty file: readers hold a shared flock on it

A reader that opens DEST (`open_bundle`, so `runtime.load` and a server) resolves it once and
holds a shared lock on the version it found until it is closed; pruning removes a version only
when it can take that lock exclusively, so a version stays whole on disk while anyone has it
open, however many pulls happen meanwhile (it goes at a later pull). Without write access to
create a lease (a version installed before leases existed, seen by a read-only account), the
reader goes on without one, as before.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

VERSION_NAME = re.compile(r"^(\d{4,})-([0-9a-f]{12})$")
LEASES = ".leases"
_ATTEMPTS = 8  # DEST re-resolved when the version it named was pruned before the lock was held


@dataclass(frozen=True)
class Version:
    """One installed bundle under DEST.versions/."""

    seq: int
    id: str
    path: Path


def versions_dir(dest: Path) -> Path:
    return Path(dest).parent / f"{Path(dest).name}.versions"


def versions(dest: str | Path) -> list[Version]:
    """The installed versions, oldest first."""
    vdir = versions_dir(Path(os.path.abspath(dest)))
    found = []
    if vdir.is_dir():
        for p in vdir.iterdir():
            m = VERSION_NAME.match(p.name)
            if m and p.is_dir() and not p.is_symlink():
                found.append(Version(int(m.group(1)), p.name, p))
    return sorted(found, key=lambda v: v.seq)


def linked_version(dest: Path) -> str | None:
    """The version id DEST's symlink names, if DEST is a symlink into its versions folder."""
    if not dest.is_symlink():
        return None
    target = Path(os.readlink(dest))
    if target.parent != Path(versions_dir(dest).name) or not VERSION_NAME.match(target.name):
        return None
    return target.name


def lease_path(vdir: Path, version_id: str) -> Path:
    return vdir / LEASES / version_id


def make_lease(vdir: Path, version_id: str) -> None:
    """The lease file of a version about to be published (readable by every account)."""
    path = lease_path(vdir, version_id)
    path.parent.mkdir(mode=0o755, exist_ok=True)
    path.touch(mode=0o644)


class VersionLease:
    """A shared lock on one installed version, released by `close` (or when collected)."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        self._file = file
        self.path = path  # the version folder it keeps

    def close(self) -> None:
        self._file.close()


def _open_lease(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")  # noqa: SIM115 - held for the reader's lifetime
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        path.parent.mkdir(mode=0o755, exist_ok=True)
        return open(path, "ab")  # noqa: SIM115
    except OSError:  # a read-only account, a read-only file system: no lease, as before
        return None


def hold(given: Path) -> VersionLease | None:
    """A shared lease on the version `given` (a pulled DEST) points at now; None when `given`
    is not a pulled DEST, or no lease can be taken there."""
    dest = Path(os.path.abspath(given))
    for _ in range(_ATTEMPTS):
        version_id = linked_version(dest)
        if version_id is None:
            return None
        vdir = versions_dir(dest)
        file = _open_lease(lease_path(vdir, version_id))
        if file is None:
            return None
        fcntl.flock(file.fileno(), fcntl.LOCK_SH)  # waits only while a pruner deletes it
        if (vdir / version_id).is_dir():
            return VersionLease(file, vdir / version_id)
        file.close()  # pruned between resolving and locking: DEST has moved on
    return None


@contextmanager
def retiring(vdir: Path, version_id: str) -> Iterator[bool]:
    """True (holding the version's lease exclusively) when no reader holds it, so it may be
    deleted; False when a reader does. The lease file goes with the version."""
    path = lease_path(vdir, version_id)
    try:
        path.parent.mkdir(mode=0o755, exist_ok=True)
        file = open(path, "ab")  # noqa: SIM115
    except OSError:
        yield True  # no lease can exist where none can be made
        return
    try:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
        path.unlink(missing_ok=True)
    finally:
        file.close()
