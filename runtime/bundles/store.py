"""Installing bundles on a device: pull a new version in beside the running one, verify it in
full, swap it in atomically, roll back, prune.

    DEST                 -> DEST.versions/<id>   a relative symlink, replaced by rename(2)
    DEST.versions/<id>/  one complete, verified bundle per version, never modified once there
    DEST.versions/.lock  held (flock) while a pull or a rollback runs
    DEST.versions/.leases/<id>  what readers hold open (versions.py): pruning skips held versions

`<id>` is `<seq>-<sha256 of manifest.json, 12 hex>`: the sequence number orders versions without
trusting a device's clock, the digest says what is inside. A new version is copied into a hidden
`.incoming-*` folder on the same file system, checked with every file's sha256
(`contract.verify.verify_bundle`) and the open-time checks of each build, renamed to its id, and
only then does DEST point at it. So a reader that resolves DEST sees either the old bundle or
the new one, whole, and keeps it while it has it open (a lease: pruning passes it over); a
server that mapped the old files keeps them (nothing is written into a version; pruning only
unlinks). Every failure before the swap leaves DEST exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from contract.errors import EdgemoeError
from contract.file_modes import publish_modes
from contract.manifest import MANIFEST_NAME, Manifest, manifest_from_dict, read_manifest
from contract.verify import verify_bundle
from runtime.bundles.open import open_bundle
from runtime.bundles.versions import (
    LEASES,
    Version,
    linked_version,
    make_lease,
    retiring,
    versions,
    versions_dir,
)

KEEP = 3  # versions kept after a pull: the new one, the one it replaced, one more
HEADROOM = 16 << 20  # free space left over after a pull, so the device is not filled to the brim
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class StoreError(EdgemoeError):
    """A pull, rollback or lookup that could not be done; DEST is as it was."""


@dataclass(frozen=True)
class Installed:
    """What a pull or rollback left behind: DEST now points at `version`."""

    dest: Path
    version: Version
    previous: Version | None
    changed: bool
    pruned: tuple[str, ...] = ()


def current(dest: str | Path) -> Version | None:
    """The version DEST points at; None when nothing is installed there yet."""
    return _current(_dest(dest), strict=True)


def _dest(dest: str | Path) -> Path:
    # Absolute but not resolved: DEST itself is the symlink we manage.
    return Path(os.path.abspath(os.fspath(dest)))


def _current(dest: Path, strict: bool) -> Version | None:
    """strict=False: a link to a version that has vanished counts as nothing installed (a
    pull may then repair it); a plain folder or a foreign link is refused either way."""
    if not dest.is_symlink():
        if dest.exists():
            raise StoreError(
                f"{dest}: exists and is not managed by `edgemoe pull` (it should be a symlink "
                f"into {versions_dir(dest).name}/); move it away or pull to another path"
            )
        return None
    name = linked_version(dest)
    if name is None:
        raise StoreError(f"{dest}: points at {os.readlink(dest)}, not at a version in "
                         f"{versions_dir(dest)}")
    path = versions_dir(dest) / name
    if not path.is_dir():
        if strict:
            raise StoreError(f"{dest}: points at version {name}, which is missing")
        return None
    return Version(int(name.split("-")[0]), name, path)


@contextmanager
def _locked(dest: Path) -> Iterator[Path]:
    """One pull or rollback per DEST at a time; stale leftovers of a killed one are removed.
    A first pull that fails takes the versions folder it created away again."""
    _current(dest, strict=False)  # a plain folder at DEST is refused before anything is made
    vdir = versions_dir(dest)
    created = not vdir.exists()
    vdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(vdir / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{dest}: another pull or rollback is running") from None
        for p in vdir.iterdir():
            if p.name.startswith((".incoming-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)
        for p in (vdir / LEASES).glob("*"):  # a reader's lease on a version pruned since
            if not (vdir / p.name).is_dir():
                p.unlink(missing_ok=True)
        for p in dest.parent.glob(f".{dest.name}.swap-*"):
            p.unlink(missing_ok=True)
        yield vdir
    except BaseException:
        if created and not dest.is_symlink():
            (vdir / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                vdir.rmdir()  # only if empty
        raise
    finally:
        os.close(fd)


def pull(
    source: str | Path,
    dest: str | Path,
    *,
    revision: str | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    keep: int = KEEP,
) -> Installed:
    """Install or update DEST from a bundle folder or a Hub repo id (offline from the local Hub
    cache when HF_HUB_OFFLINE=1); verified in full before DEST points at it. Keeps `keep`
    versions (at least 2: the new one and the one it replaced, for `rollback`). Pulling the
    version already installed re-checks it (`verify --fast`) and installs a fresh copy when
    its files were damaged (a served model with damaged weights then reloads from it)."""
    dest = _dest(dest)
    if keep < 2:
        raise StoreError(f"keep={keep}: at least 2 (the new version and the one to roll back to)")
    with _unchanged_on_error(dest), _locked(dest) as vdir:
        cur = _current(dest, strict=False)
        folder, commit = _fetch(source, revision, cache_dir, endpoint, [MANIFEST_NAME])
        digest = _sha256(folder / MANIFEST_NAME, str(source))
        if cur is not None and _sha256(cur.path / MANIFEST_NAME, cur.id) == digest and \
                verify_bundle(cur.path, fast=True).ok:
            # The same version, intact (its weights re-hashed by their checksums): nothing to
            # do. A damaged install of the same version is repaired by a fresh copy below.
            return Installed(dest, cur, None, changed=False)
        manifest = _source_manifest(folder, str(source))
        if commit is not None:  # now the files, at the very commit the manifest came from
            names = [MANIFEST_NAME, *manifest.files]
            folder, _ = _fetch(source, commit, cache_dir, endpoint, names)
        seq = max((v.seq for v in versions(dest)), default=0) + 1
        new = _stage(folder, vdir, seq, digest, str(source))
        try:
            _point(dest, new)
        except BaseException:
            shutil.rmtree(new.path, ignore_errors=True)
            raise
        pruned = _prune(dest, keep, {new.id, *([cur.id] if cur else [])})
        return Installed(dest, new, cur, changed=True, pruned=pruned)


def rollback(dest: str | Path) -> Installed:
    """Point DEST at the newest kept version older than the current one (checked in full
    first). Each rollback steps one version further back, while versions remain."""
    dest = _dest(dest)
    with _unchanged_on_error(dest), _locked(dest):
        cur = _current(dest, strict=True)
        if cur is None:
            raise StoreError(f"{dest}: nothing installed to roll back")
        older = [v for v in versions(dest) if v.seq < cur.seq]
        if not older:
            raise StoreError(f"{dest}: no earlier version kept to roll back to (at {cur.id})")
        target = older[-1]
        _check_bundle(target.path, f"{dest} version {target.id}")
        _point(dest, target)
        return Installed(dest, target, cur, changed=True)


@contextmanager
def _unchanged_on_error(dest: Path) -> Iterator[None]:
    """Every failure is one StoreError line that also says DEST was not touched."""
    try:
        yield
    except EdgemoeError as e:
        raise StoreError(f"{e} ({dest} left as it was)") from None
    except OSError as e:
        what = "no space left on device" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise StoreError(f"{e.filename or dest}: {what} ({dest} left as it was)") from None


def hub_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises for a network or Hub failure: OSError and ValueError (its
    own errors) plus the HTTP client's, which changed across versions (requests, httpx,
    httpx2); caught as such so a programming error still shows as one."""
    found: list[type[BaseException]] = [OSError, ValueError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"),
                         ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("", "0", "false", "no")


def _fetch(
    source: str | Path,
    revision: str | None,
    cache_dir: Path | None,
    endpoint: str | None,
    names: list[str],
) -> tuple[Path, str | None]:
    """(folder, Hub commit or None): a bundle folder as is, or the named files of a Hub repo
    through snapshot_download (the Hub cache, or only it when offline)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise StoreError(f"{source}: a file, not a bundle folder")
        return path.resolve(), None
    repo_id = str(source)
    if not _REPO_ID.match(repo_id):
        raise StoreError(f"{source}: no such folder, and not a Hub repo id (expected 'org/name')")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
            allow_patterns=names, local_files_only=offline,
        )
    except hub_errors() as e:
        at = f"{repo_id}@{revision}" if revision else repo_id
        if offline:
            msg = f"{at}: not in the local Hub cache, and HF_HUB_OFFLINE is set"
            raise StoreError(msg) from None
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise StoreError(f"{at}: cannot download: {reason}") from None
    return Path(str(folder)), Path(str(folder)).name


def _sha256(path: Path, label: str) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise StoreError(f"{label}: no {path.name} (not an edgemoe bundle)") from None


def _source_manifest(folder: Path, label: str) -> Manifest:
    manifest = read_manifest(folder)
    for name in manifest.files:
        # The manifest is input from elsewhere: a name must stay inside the version folder.
        if name in ("", ".", "..", MANIFEST_NAME) or "/" in name or "\\" in name or "\0" in name:
            raise StoreError(f"{label}: manifest lists the file name {name!r}, not a plain name")
    return manifest


def _stage(folder: Path, vdir: Path, seq: int, digest: str, label: str) -> Version:
    """Copy, verify in full and publish one version under `vdir` (not yet pointed at)."""
    raw = (folder / MANIFEST_NAME).read_bytes()
    if hashlib.sha256(raw).hexdigest() != digest:
        raise StoreError(f"{label}: manifest.json changed while being pulled; pull again")
    manifest = manifest_from_dict(json.loads(raw), f"{label}/{MANIFEST_NAME}")
    needed = len(raw) + sum(entry.bytes for entry in manifest.files.values())
    free = shutil.disk_usage(vdir).free
    if free < needed + HEADROOM:
        raise StoreError(
            f"{vdir}: {free / 1e6:.0f} MB free, the bundle needs {needed / 1e6:.0f} MB "
            f"plus {HEADROOM >> 20} MiB headroom (disk full)"
        )
    stage = Path(tempfile.mkdtemp(prefix=".incoming-", dir=vdir))
    try:
        for name in sorted(manifest.files):
            if not (folder / name).is_file():
                raise StoreError(f"{label}: file '{name}' listed in the manifest is missing")
            copy_file(folder / name, stage / name)
        (stage / MANIFEST_NAME).write_bytes(raw)
        _fsync(stage / MANIFEST_NAME)
        _check_bundle(stage, label)
        publish_modes(stage)
        final = vdir / f"{seq:04d}-{digest[:12]}"
        make_lease(vdir, final.name)
        os.rename(stage, final)
        _fsync(vdir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return Version(seq, final.name, final)


def copy_file(src: Path, dst: Path) -> None:
    """Copy one file (a Hub snapshot's files are links into its blobs: the bytes are copied)
    and flush it, so a version is on disk before anything points at it."""
    shutil.copyfile(src, dst)
    _fsync(dst)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_bundle(folder: Path, label: str) -> None:
    """Every file's sha256, then the open-time checks of each build (the manifest against the
    model file's own table, the sampled blocks): what verifies but cannot open is refused."""
    report = verify_bundle(folder)
    if not report.ok:
        shown = "; ".join(report.problems[:3])
        more = f" (+{len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        raise StoreError(f"{label}: verification failed: {shown}{more}")
    for fmt in read_manifest(folder).formats:
        open_bundle(folder, fmt=fmt)


def _point(dest: Path, version: Version) -> None:
    """DEST -> version, by renaming a new symlink over the old one: atomic for readers."""
    tmp = dest.parent / f".{dest.name}.swap-{secrets.token_hex(6)}"
    os.symlink(f"{versions_dir(dest).name}/{version.id}", tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(dest.parent)


def _prune(dest: Path, keep: int, protect: set[str]) -> tuple[str, ...]:
    """Remove all but the `keep` newest versions, never one in `protect` nor one a reader holds
    open (its lease; it goes at a later pull). A version is renamed out of sight first, so a
    half-deleted one is never listed; files a running server mapped stay valid (unlinked)."""
    kept = set(protect)
    for v in reversed(versions(dest)):
        if len(kept) >= keep:
            break
        kept.add(v.id)
    gone = []
    for v in versions(dest):
        if v.id in kept:
            continue
        with retiring(v.path.parent, v.id) as unused:
            if not unused:
                continue
            trash = v.path.with_name(f".trash-{v.id}-{secrets.token_hex(4)}")
            os.rename(v.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        gone.append(v.id)
    return tuple(gone)
