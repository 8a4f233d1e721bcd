"""Storage faults on edgemoe's own reads never kill the process.

A file cut short under a mapping, and a FUSE disk answering EIO for one expert's pages: bringing
the expert in (pread on its first read, MADV_POPULATE_READ after) is ModelCorruptError for the
request that needs it, where touching the pages raises SIGBUS. Each case runs in a child process
so a SIGBUS (the "before" case: checks off) is an exit status here, not our death.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract.manifest import read_manifest
from tests.runtime.integrity.damage import BUDGET, pick_expert, unsampled

REPO = Path(__file__).resolve().parents[3]
TOKENS = 12

pytestmark = pytest.mark.unit

TRUNCATED = r"""
import ctypes, json, mmap, os, sys
import numpy as np, xxhash
from contract.manifest import ExpertTensor, LayerExperts
from runtime.errors import ModelCorruptError
from runtime.experts.residency import MadviseResidency
from runtime.integrity import ExpertReader, IntegrityState

path, stride, n = sys.argv[1], 65536, 16
data = os.urandom(stride * n)
open(path, "wb").write(data)
digests = {"t": tuple(xxhash.xxh3_64_hexdigest(data[e * stride:(e + 1) * stride])
                      for e in range(n))}
layers = {0: LayerExperts(0, (ExpertTensor("t", "F32", 0, stride),))}
fd = os.open(path, os.O_RDONLY)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
base = libc.mmap(None, len(data), mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
res = MadviseResidency(path, base, lambda layer, e: layers[layer].ranges(e))
state = IntegrityState(True)
reader = ExpertReader(path, layers, digests, n, state, res.populate)
for e in (2, 12):
    reader.bring_in(0, e)
os.truncate(path, 8 * stride)          # experts 8..15 now lie past the end of the file
out = {}
reader.bring_in(0, 2)                   # verified, inside the file: mapped again
out["inside"] = "ok"
plain = ExpertReader(path, layers, digests, n, IntegrityState(True), None)  # no page-in: pread
for name, r, e in (("12", reader, 12), ("10", reader, 10), ("10 pread", plain, 10)):
    try:                                # 12: verified before; 10: a first read
        r.bring_in(0, e)
        out[name] = "ok"
    except ModelCorruptError as err:
        out[name] = str(err)
if "--touch" in sys.argv:               # what the engine would do without the reader
    ctypes.string_at(base + 12 * stride, 1)
print(json.dumps(out))
"""


def _child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_truncated_file_is_an_error_not_sigbus(tmp_path):
    r = _child(TRUNCATED, str(tmp_path / "experts.bin"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["inside"] == "ok"
    assert "t expert 12 (layer 0, bytes [786432, 851968)) could not be read: Bad address " \
           "while paging in" in out["12"]
    assert "t expert 10 (layer 0, bytes [655360, 720896)) could not be read: Bad address " \
           "while paging in" in out["10"]
    assert "t expert 10 (layer 0, bytes [655360, 720896)) could not be read: the file ends at " \
           "byte 524288, before byte 720896" in out["10 pread"]


def test_touching_a_truncated_page_is_sigbus_without_the_reader(tmp_path):
    """The failure the reader prevents, shown on the same file."""
    r = _child(TRUNCATED, str(tmp_path / "experts.bin"), "--touch")
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stderr)


# --- a disk that answers EIO ------------------------------------------------------------------
ENGINE_CHILD = r"""
import json, sys
import runtime
from runtime.errors import ModelCorruptError
bundle, first, later, tokens, checks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \
    sys.argv[5] == "on"
out = {}
with runtime.load(bundle, budget="BUDGET", threads=1, n_ctx=256, check_reads=checks) as m:
    for name, prompt in (("first", first), ("later", later)):
        try:
            m.generate(prompt, max_tokens=tokens, temperature=0.0)
            out[name] = "ok"
        except ModelCorruptError as e:
            out[name] = str(e)
print(json.dumps(out), flush=True)
""".replace("BUDGET", BUDGET)


def _fuse_ready() -> str | None:
    """Why FUSE cannot be used here, or None. Under CI it must be usable (.ci/run installs it)."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: libfuse itself is missing
        return f"mfusepy/libfuse unavailable ({e})"
    return None


@pytest.fixture
def eio_disk(tmp_path):
    """(mount a bundle copy behind EIO ranges) -> mounted path; unmounted afterwards."""
    why = _fuse_ready()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"FUSE is required under CI: {why}")
        pytest.skip(why)
    mounts: list[tuple[subprocess.Popen, Path]] = []

    def mount(src: Path, ranges: list[tuple[str, int, int]]) -> Path:
        table = tmp_path / "ranges.json"
        table.write_text(json.dumps(ranges))
        mnt = tmp_path / f"mnt{len(mounts)}"
        mnt.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "tests.runtime.integrity.eio_fs",
                                 str(src), str(mnt), str(table)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        mounts.append((proc, mnt))
        for _ in range(200):
            if os.path.ismount(mnt) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert os.path.ismount(mnt), proc.stderr.read().decode() if proc.poll() else "no mount"
        return mnt

    yield mount
    for proc, mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _bad_pages(bundle: Path, layer: int, expert: int) -> list[tuple[str, int, int]]:
    """The pages of one expert's slices, minus the blocks the open-time sampled check reads."""
    m = read_manifest(bundle)
    build = m.build()
    sampled = set(m.integrity[build.expert_file].blocks)
    out = []
    for t in next(x for x in build.expert_layers if x.layer == layer).tensors:
        start = t.offset + expert * t.stride
        page = unsampled(m, build.expert_file, start, start + t.stride) // 4096 * 4096
        for at in range(page, start + t.stride - 4096, 4096):
            if at not in sampled:
                out.append((build.expert_file, at, at + 4096))
    return out


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.parametrize("case", ["checks", "no checksums", "checks off"])
def test_eio_while_paging_in_fails_the_request_not_the_process(case, bundle_factory, eio_disk,
                                                                tmp_path):
    src = bundle_factory("qwen3moe-trained", "Q8_0")
    first, later, (layer, expert), _ = pick_expert(src, TOKENS)
    bundle = tmp_path / "bundle"
    shutil.copytree(src, bundle)
    if case == "no checksums":  # an older bundle: the pages come in by populate alone
        d = json.loads((bundle / "manifest.json").read_text())
        del d["checksums"]
        (bundle / "manifest.json").write_text(json.dumps(d))
    mnt = eio_disk(bundle, _bad_pages(bundle, layer, expert))
    r = _child(ENGINE_CHILD, str(mnt), first, later, str(TOKENS),
               "off" if case == "checks off" else "on", timeout=300)
    if case == "checks off":  # before: the engine touches the bad pages and dies of SIGBUS
        assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr[-2000:])
        return
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["first"] == "ok"
    assert f"expert {expert} (layer {layer}, bytes [" in out["later"]
    assert "Input/output error" in out["later"] or "Bad address" in out["later"], out["later"]
