"""A published bundle is readable by other users, as mkdir/open() under the umask would make
it: 0755 / 0644 under umask 022 (the folder was 0700 and manifest.json 0600 before)."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from contract.file_modes import current_umask, publish_modes, published_modes

pytestmark = pytest.mark.unit


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(folder.stat().st_mode)}
    out.update({p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()})
    return out


def test_umask_is_read_without_changing_it():
    with _umask(0o027):
        assert current_umask() == 0o027
        assert published_modes() == (0o750, 0o640)
        assert current_umask() == 0o027


def test_private_temp_folder_and_files_get_mkdir_and_open_modes(tmp_path):
    with _umask(0o022):
        stage = Path(tempfile.mkdtemp(dir=tmp_path))
        fd, name = tempfile.mkstemp(dir=stage)
        os.close(fd)
        (stage / "sub").mkdir(mode=0o700)
        (stage / "sub" / "f").write_text("x")
        os.chmod(stage / "sub" / "f", 0o600)
        publish_modes(stage)
    assert _modes(stage) == {".": 0o755, Path(name).name: 0o644, "sub": 0o755}
    assert stat.S_IMODE((stage / "sub" / "f").stat().st_mode) == 0o644


def _pack(fixture_checkpoint, out: Path) -> Path:
    from packager.api import PackOptions, pack

    src = fixture_checkpoint("qwen3moe-tiny")
    pack(PackOptions(src=str(src), out_dir=out, quant="F16", reference=False, force=True))
    return out


@pytest.mark.engine
@pytest.mark.parametrize(("mask", "dir_mode", "file_mode"), [
    (0o022, 0o755, 0o644), (0o027, 0o750, 0o640), (0o002, 0o775, 0o664),
])
def test_packed_bundle_modes_follow_the_umask(mask, dir_mode, file_mode, fixture_checkpoint,
                                              tmp_path):
    with _umask(mask):
        bundle = _pack(fixture_checkpoint, tmp_path / "bundle")
    modes = _modes(bundle)
    assert modes.pop(".") == dir_mode
    assert "manifest.json" in modes and set(modes.values()) == {file_mode}, modes


@pytest.mark.engine
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_user_can_read_a_packed_bundle(fixture_checkpoint):
    """The bug itself: packed by root, read by `nobody` (a kiosk's service account). The
    reader is `cat`, since this user may not be able to run our Python."""
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        os.chmod(top, 0o755)  # TemporaryDirectory is private; the bundle's parent must not be
        with _umask(0o022):
            bundle = _pack(fixture_checkpoint, Path(top) / "bundle")
        names = sorted(p.name for p in bundle.iterdir())
        r = subprocess.run(
            ["sh", "-c", 'cd "$0" && ls >/dev/null && cat "$@" >/dev/null', str(bundle), *names],
            user=65534, group=65534, capture_output=True, text=True, timeout=60, cwd="/",
        )
        assert r.returncode == 0, r.stderr
