"""Writing a bundle directory: atomic creation, file entries and the manifest.

A bundle is built in a hidden staging folder beside its destination and renamed into place only
when every file, the manifest last, is written; a killed pack leaves a `.NAME.partial-*` folder
that never looks like a bundle (it has no manifest until the very end, and is not at OUT_DIR).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from contract.file_modes import publish_modes
from contract.files import atomic_write_text, sha256_file
from contract.manifest import MANIFEST_NAME, FileEntry, Manifest
from packager.errors import DiskSpaceError, OutputExistsError


def check_destination(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        raise OutputExistsError(f"{out_dir}: already exists (use --force to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a directory")


def check_free_space(out_dir: Path, needed: int) -> None:
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise DiskSpaceError(
            f"{parent}: {free / 1e6:.0f} MB free, the bundle needs about {needed / 1e6:.0f} MB"
        )


@contextmanager
def staging_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """A private folder: on success it replaces `out_dir` atomically, on failure it is removed."""
    out_dir = out_dir.resolve()
    check_destination(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield stage
        _publish(stage, out_dir)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == 28:  # ENOSPC
            raise DiskSpaceError(f"{out_dir.parent}: no space left on device while packing") from e
        raise


@contextmanager
def work_dir(out_dir: Path) -> Iterator[Path]:
    """Scratch space for what a pack makes but never ships (a pruned checkpoint, an F32 GGUF).

    It sits beside the bundle, on the same file system as the staging folder (so the free-space
    check covers it and nothing large lands in a small /tmp), apart from the bundle's files (so
    nothing has to be picked out of the bundle before it is hashed), and is removed however the
    pack ends.
    """
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.work-", dir=out_dir.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(stage: Path, out_dir: Path) -> None:
    # The staging folder and the manifest were created private (0700 / 0600, tempfile's
    # defaults); the published bundle is readable as mkdir/open() under the umask would make it.
    publish_modes(stage)
    if not out_dir.exists():
        os.replace(stage, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    os.replace(out_dir, old)
    os.replace(stage, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def file_entries(folder: Path) -> dict[str, FileEntry]:
    return {
        p.name: FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write manifest.json via a temp file + rename, so it is either whole or absent."""
    return atomic_write_text(folder / MANIFEST_NAME, manifest.to_json())
