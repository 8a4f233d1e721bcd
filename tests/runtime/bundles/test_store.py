"""Safe updates on a device: `pull` verifies a bundle in full before DEST points at it, swaps
atomically, keeps the previous version for `rollback`, prunes the rest; every failure leaves
DEST exactly as it was, with one line saying why.

Versions are real packed bundles (the session's tiny bundle, and copies of it whose README
differs, re-hashed into their manifest, so each is a distinct valid bundle).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from contract.verify import verify_bundle
from runtime.bundles import store
from runtime.bundles.open import open_bundle
from runtime.bundles.store import StoreError, current, pull, rollback
from runtime.bundles.versions import versions, versions_dir

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[3]


def _variant(tiny_bundle: Path, root: Path, tag: str) -> Path:
    """A distinct, valid bundle: the tiny bundle with another README, hashed into the manifest."""
    out = root / f"src-{tag}"
    if out.exists():
        return out
    shutil.copytree(tiny_bundle, out)
    readme = out / "README.md"
    readme.write_text(readme.read_text() + f"\nversion {tag}\n")
    d = json.loads((out / "manifest.json").read_text())
    data = readme.read_bytes()
    d["files"]["README.md"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (out / "manifest.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    return out


def _state(dest: Path) -> tuple:
    """Everything a failed pull must leave alone: the link, the versions, their files."""
    link = os.readlink(dest) if dest.is_symlink() else None
    vdir = versions_dir(dest)
    listing = sorted(
        (str(p.relative_to(vdir)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in vdir.rglob("*") if p.name != ".lock"
    ) if vdir.is_dir() else []
    return link, listing


@pytest.fixture
def srcs(tiny_bundle, tmp_path):
    return lambda tag: _variant(tiny_bundle, tmp_path, tag)


def test_first_pull_installs_a_verified_readable_version(srcs, tmp_path):
    dest = tmp_path / "kiosk" / "model"
    done = pull(srcs("a"), dest)
    assert done.changed and done.previous is None
    assert dest.is_symlink() and os.readlink(dest) == f"model.versions/{done.version.id}"
    assert current(dest) == done.version and versions(dest) == [done.version]
    opened = open_bundle(dest)
    assert opened.path == done.version.path and opened.name == "model"
    assert verify_bundle(dest).ok
    modes = {stat.S_IMODE(p.stat().st_mode) for p in done.version.path.iterdir()}
    assert stat.S_IMODE(done.version.path.stat().st_mode) == 0o755 and modes == {0o644}
    again = pull(srcs("a"), dest)
    assert not again.changed and again.version == done.version and len(versions(dest)) == 1


def test_update_then_rollback_restores_the_previous_version(srcs, tmp_path):
    dest = tmp_path / "model"
    v1 = pull(srcs("a"), dest).version
    done = pull(srcs("b"), dest)
    assert done.previous == v1 and current(dest) == done.version
    assert "version b" in (dest / "README.md").read_text()
    back = rollback(dest)
    assert back.version == v1 and back.previous == done.version
    assert "version a" in (dest / "README.md").read_text() and open_bundle(dest)
    before = _state(dest)
    with pytest.raises(StoreError, match="no earlier version") as e:
        rollback(dest)
    assert "left as it was" in str(e.value) and _state(dest) == before


def test_old_versions_are_pruned_keeping_current_and_previous(srcs, tmp_path):
    dest = tmp_path / "model"
    ids = [pull(srcs(tag), dest, keep=2).version.id for tag in "abcd"]
    assert [v.id for v in versions(dest)] == ids[-2:]
    assert current(dest).id == ids[-1]
    hidden = sorted(p.name for p in versions_dir(dest).iterdir() if p.name.startswith("."))
    assert hidden == [".leases", ".lock"]
    assert sorted(p.name for p in (versions_dir(dest) / ".leases").iterdir()) == sorted(ids[-2:])


def test_corrupt_source_is_refused_and_dest_is_untouched(srcs, tmp_path):
    dest = tmp_path / "model"
    pull(srcs("a"), dest)
    bad = srcs("bad")
    with open(bad / "model.gguf", "r+b") as f:  # same size, one page of other bytes
        f.seek(os.path.getsize(bad / "model.gguf") // 2)
        f.write(b"\x00" * 4096)
    before = _state(dest)
    with pytest.raises(StoreError) as e:
        pull(bad, dest)
    msg = str(e.value)
    assert "model.gguf: sha256 mismatch" in msg and "left as it was" in msg and "\n" not in msg
    assert _state(dest) == before


@pytest.mark.parametrize(("source", "expected"), [
    ("no/such-folder/here", "no such folder"),
    ("not a repo id", "not a Hub repo id"),
])
def test_bad_source_is_one_line_and_dest_untouched(source, expected, srcs, tmp_path,
                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "model"
    pull(srcs("a"), dest)
    before = _state(dest)
    with pytest.raises(StoreError, match=expected):
        pull(source, dest, cache_dir=tmp_path / "empty-hub")
    assert _state(dest) == before


def test_folder_without_manifest_is_not_a_bundle(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(StoreError, match="not an edgemoe bundle"):
        pull(tmp_path / "junk", tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk"]  # nothing made beside it


def test_a_plain_folder_at_dest_is_refused(srcs, tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(srcs("a"), dest)
    with pytest.raises(StoreError, match="not managed by `edgemoe pull`"):
        pull(srcs("b"), dest)
    assert dest.is_dir() and not dest.is_symlink() and not versions_dir(dest).exists()


def test_disk_full_before_copying_is_refused(srcs, tmp_path, monkeypatch):
    dest = tmp_path / "model"
    pull(srcs("a"), dest)
    before = _state(dest)
    free = shutil.disk_usage(tmp_path).free
    monkeypatch.setattr(store, "HEADROOM", free)  # the real free space, just too little
    with pytest.raises(StoreError, match="disk full"):
        pull(srcs("b"), dest)
    assert _state(dest) == before


@pytest.mark.parametrize("failure", ["enospc", "interrupt"])
def test_failure_mid_copy_leaves_dest_as_it_was(failure, srcs, tmp_path, monkeypatch):
    """The copy fails after the first file: ENOSPC as the kernel reports it, or Ctrl-C."""
    dest = tmp_path / "model"
    pull(srcs("a"), dest)
    before = _state(dest)
    real, calls = store.copy_file, []

    def failing(src: Path, dst: Path) -> None:
        calls.append(src.name)
        if len(calls) == 2:
            if failure == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(store, "copy_file", failing)
    if failure == "enospc":
        with pytest.raises(StoreError, match="no space left on device.*left as it was"):
            pull(srcs("b"), dest)
    else:
        with pytest.raises(KeyboardInterrupt):
            pull(srcs("b"), dest)
    assert _state(dest) == before  # no .incoming-* folder left either


# A reader in its own process (as a kiosk's server is), in a tight loop: resolve DEST, read the
# manifest, check every listed file's size. Replacing the link by unlink + symlink instead of
# rename fails it within a few swaps (measured: 150 bad reads of 12,536).
_TIGHT_READER = """
import json, os, sys
from pathlib import Path
from runtime.bundles.versions import hold
dest, stop = sys.argv[1], sys.argv[2]
n = bad = 0
while not os.path.exists(stop):
    n += 1
    lease = hold(Path(dest))  # another process: the lease is a lock on a file, seen by all
    try:
        real = str(lease.path)
        with open(os.path.join(real, "manifest.json"), "rb") as f:
            files = json.loads(f.read())["files"]
        bad += any(os.path.getsize(os.path.join(real, k)) != v["bytes"] for k, v in files.items())
    except Exception:
        bad += 1
    finally:
        lease.close()
print(n, bad)
"""


def test_readers_during_swaps_always_see_one_whole_version(srcs, tmp_path):
    dest = tmp_path / "model"
    a, b = srcs("a"), srcs("b")
    pull(a, dest)
    stop_file = tmp_path / "stop"
    tight = subprocess.Popen(
        [sys.executable, "-c", _TIGHT_READER, str(dest), str(stop_file)],
        stdout=subprocess.PIPE, text=True,
    )
    stop, seen, errors = threading.Event(), set(), []

    def reader() -> None:
        while not stop.is_set():
            try:
                # Resolves DEST once and holds that version (a lease) until closed, however
                # many pulls happen meanwhile and however slowly this thread is scheduled.
                with open_bundle(dest) as opened:
                    report = verify_bundle(opened.path)  # every byte of the version it resolved
                    assert report.ok, report.problems
                    seen.add((opened.path / "README.md").read_text().rsplit("version ", 1)[1])
            except Exception as e:  # noqa: BLE001 - any failure at all is the finding
                errors.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            pull(b, dest)
            rollback(dest)
            pull(a, dest)  # installs `a` again as a new version (the old one was pruned)
    finally:
        stop.set()
        stop_file.touch()
        for t in threads:
            t.join(timeout=60)
        out, _ = tight.communicate(timeout=60)
    reads, bad = map(int, out.split())
    assert errors == [] and bad == 0 and reads > 100
    assert seen == {"a\n", "b\n"}


def test_a_version_held_open_outlives_any_number_of_pulls(srcs, tmp_path):
    dest = tmp_path / "model"
    a, b = srcs("a"), srcs("b")
    first = pull(a, dest).version
    with open_bundle(dest) as opened:
        assert opened.path == first.path
        for _ in range(3):  # KEEP=3 would have pruned it after the second of these
            pull(b, dest)
            pull(a, dest)
        assert first.path.is_dir() and verify_bundle(first.path).ok
        assert first.id in [v.id for v in versions(dest)]
    done = pull(b, dest)  # released: the next pull prunes it
    assert first.id in done.pruned and not first.path.exists()
    assert len(versions(dest)) == 3


def test_hub_repo_installs_offline_from_the_local_cache(tiny_bundle, srcs, tmp_path,
                                                        monkeypatch):
    from edgemoe_fixtures import make_hub_cache

    cache = tmp_path / "hub"
    commit = make_hub_cache(tiny_bundle, cache, "edgemoe-test/tiny-bundle")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "model"
    done = pull("edgemoe-test/tiny-bundle", dest, cache_dir=cache)
    assert done.changed and verify_bundle(dest).ok
    assert (dest / "manifest.json").read_bytes() == (tiny_bundle / "manifest.json").read_bytes()
    assert not (dest / "README.md").is_symlink()  # copied out of the cache's blobs
    assert not pull("edgemoe-test/tiny-bundle", dest, cache_dir=cache, revision=commit).changed
    before = _state(dest)
    with pytest.raises(StoreError, match="not in the local Hub cache, and HF_HUB_OFFLINE"):
        pull("edgemoe-test/absent", dest, cache_dir=cache)
    assert _state(dest) == before


def test_corrupt_blob_in_the_hub_cache_is_refused(srcs, tmp_path, monkeypatch):
    from edgemoe_fixtures import make_hub_cache

    cache = tmp_path / "hub"
    make_hub_cache(srcs("b"), cache, "edgemoe-test/tiny-bundle")
    gguf = (cache / "models--edgemoe-test--tiny-bundle" / "snapshots").glob("*/model.gguf")
    blob = next(iter(gguf)).resolve()
    with open(blob, "r+b") as f:  # an interrupted download finished with garbage
        f.seek(-4096, os.SEEK_END)
        f.write(b"\xee" * 4096)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "model"
    pull(srcs("a"), dest)
    before = _state(dest)
    with pytest.raises(StoreError, match="sha256 mismatch"):
        pull("edgemoe-test/tiny-bundle", dest, cache_dir=cache)
    assert _state(dest) == before


def test_unreachable_hub_falls_back_to_the_cache(tiny_bundle, tmp_path, monkeypatch):
    """Online mode, but the endpoint refuses (a closed port on loopback): huggingface_hub
    serves the cached snapshot of the ref, so a kiosk without network still installs."""
    from edgemoe_fixtures import make_hub_cache

    cache = tmp_path / "hub"
    make_hub_cache(tiny_bundle, cache, "edgemoe-test/tiny-bundle")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    done = pull("edgemoe-test/tiny-bundle", tmp_path / "model", cache_dir=cache,
                endpoint="http://127.0.0.1:9")
    assert done.changed and verify_bundle(tmp_path / "model").ok
    before = _state(tmp_path / "model")
    with pytest.raises(StoreError, match="edgemoe-test/absent: cannot download: .*left as it"):
        pull("edgemoe-test/absent", tmp_path / "model", cache_dir=cache,
             endpoint="http://127.0.0.1:9")
    assert _state(tmp_path / "model") == before


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "apps.cli.main", *args], capture_output=True, text=True,
        timeout=300, cwd=ROOT, env={**os.environ, **(env or {})},
    )


def test_cli_pull_rollback_and_errors(srcs, tmp_path):
    dest = tmp_path / "model"
    r = _cli("pull", str(srcs("a")), str(dest))
    assert r.returncode == 0 and "-> 0001-" in r.stdout, r.stderr
    r = _cli("pull", str(srcs("b")), str(dest))
    assert r.returncode == 0 and "(was 0001-" in r.stdout, r.stderr
    r = _cli("pull", "--rollback", str(dest))
    assert r.returncode == 0 and "-> 0001-" in r.stdout, r.stderr
    for args in (("pull", "--rollback", str(dest)), ("pull", str(tmp_path / "nope"), str(dest))):
        r = _cli(*args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


@pytest.mark.unit
def test_dest_states_without_a_bundle(tmp_path):
    assert current(tmp_path / "nothing") is None and versions(tmp_path / "nothing") == []
    (tmp_path / "foreign").symlink_to("/etc")
    with pytest.raises(StoreError, match="not at a version"):
        current(tmp_path / "foreign")
    (tmp_path / "gone").symlink_to("gone.versions/0003-0123456789ab")
    with pytest.raises(StoreError, match="which is missing"):
        current(tmp_path / "gone")
    with pytest.raises(StoreError, match="at least 2"):
        pull(tmp_path, tmp_path / "x", keep=1)
