"""The bundle directory on disk: atomic creation and checksum verification.

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
from dataclasses import dataclass, field
from pathlib import Path

from packager.errors import DiskSpaceError, OutputExistsError
from packager.files import atomic_write_text
from packager.manifest import MANIFEST_NAME, FileEntry, Manifest, ManifestError, read_manifest
from packager.source import sha256_file


@dataclass
class VerifyReport:
    bundle: Path
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


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


def _publish(stage: Path, out_dir: Path) -> None:
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


def verify_bundle(bundle: Path) -> VerifyReport:
    """Re-hash every file the manifest lists; any mismatch or missing file is a problem."""
    report = VerifyReport(Path(bundle))
    try:
        manifest = read_manifest(bundle)
    except ManifestError as e:
        report.problems.append(str(e))
        return report
    for name, entry in sorted(manifest.files.items()):
        path = Path(bundle) / name
        if not path.is_file():
            report.problems.append(f"{name}: missing")
            continue
        size = path.stat().st_size
        if size != entry.bytes:
            report.problems.append(
                f"{name}: {size} bytes, manifest says {entry.bytes} (truncated?)"
            )
            continue
        if sha256_file(path) != entry.sha256:
            report.problems.append(f"{name}: sha256 mismatch (file changed or corrupt)")
            continue
        report.checked.append(name)
    return report
