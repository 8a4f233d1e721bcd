"""Damaged bundles are refused at open with one line naming the field, never a crash.

Every case edits a real packed bundle the way a bad download, a hand edit or a mix-up would, and
checks both the Python API (a BundleError) and the CLI (exit 1, one `error:` line, no traceback).
The CLI runs in a subprocess, so a crash would be observed (negative return code), not suffered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.errors import BundleError, EdgemoeError
from runtime.bundles.open import open_bundle

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[3]


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


def _edit_manifest(bundle: Path, change: Callable[[dict], None]) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _sync_size(bundle: Path) -> None:
    """Make the manifest's recorded size match a damaged model file (so only deeper checks
    can notice)."""

    def fix(d: dict) -> None:
        d["files"][d["model_file"]]["bytes"] = (bundle / d["model_file"]).stat().st_size

    _edit_manifest(bundle, fix)


def _first_tensor(d: dict) -> dict:
    return d["expert_layers"][0]["tensors"][0]


MANIFEST_DAMAGE: dict[str, tuple[Callable[[dict], None], str]] = {
    "offset past end of file": (
        lambda d: _first_tensor(d).update(offset=10**12),
        "offset",
    ),
    "offset zero (the header)": (lambda d: _first_tensor(d).update(offset=0), "offset"),
    "negative offset": (lambda d: _first_tensor(d).update(offset=-4096), "offset"),
    "misaligned offset": (
        lambda d: _first_tensor(d).update(offset=_first_tensor(d)["offset"] + 3),
        "offset",
    ),
    "huge stride": (lambda d: _first_tensor(d).update(stride=2**60), "stride"),
    "zero stride": (lambda d: _first_tensor(d).update(stride=0), "stride"),
    "absurd expert count": (lambda d: d["shape"].update(n_experts=10**30), "n_experts"),
    "unknown tensor name": (
        lambda d: _first_tensor(d).update(name="blk.0.ffn_nonsense_exps.weight"),
        "tensors",
    ),
    "unknown ggml type": (lambda d: _first_tensor(d).update(ggml_type="Q9_Z"), "ggml_type"),
    "duplicated layer": (
        lambda d: d["expert_layers"].append(d["expert_layers"][0]),
        "expert_layers",
    ),
    "dense bytes off": (lambda d: d.update(dense_bytes=d["dense_bytes"] + 1), "dense_bytes"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_DAMAGE))
def test_manifest_numbers_are_checked_against_the_gguf(case, tiny_bundle, tmp_path):
    change, field = MANIFEST_DAMAGE[case]
    bundle = _copy(tiny_bundle, tmp_path)
    _edit_manifest(bundle, change)
    with pytest.raises(EdgemoeError) as e:
        open_bundle(bundle)
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def _flip_magic(bundle: Path) -> None:
    with open(bundle / "model.gguf", "r+b") as f:
        f.write(b"XXXX")


def _truncate(bundle: Path) -> None:
    model = bundle / "model.gguf"
    with open(model, "r+b") as f:
        f.truncate(model.stat().st_size // 2)
    _sync_size(bundle)


def _truncate_header(bundle: Path) -> None:
    model = bundle / "model.gguf"
    with open(model, "r+b") as f:
        f.truncate(100)
    _sync_size(bundle)


FILE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped magic": _flip_magic,
    "truncated data, size updated": _truncate,
    "truncated header, size updated": _truncate_header,
}


@pytest.mark.parametrize("case", sorted(FILE_DAMAGE))
def test_damaged_model_file_is_one_clear_error(case, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    FILE_DAMAGE[case](bundle)
    with pytest.raises(BundleError) as e:
        open_bundle(bundle)
    assert "model.gguf" in str(e.value)


@pytest.mark.parametrize(
    "case", ["offset past end of file", "absurd expert count", "duplicated layer"]
)
def test_cli_run_on_a_damaged_bundle_exits_1_with_one_line(case, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    _edit_manifest(bundle, MANIFEST_DAMAGE[case][0])
    r = subprocess.run(
        [sys.executable, "-m", "apps.cli.main", "run", str(bundle), "--prompt", "hi",
         "--max-tokens", "2", "--budget", "25%"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


def test_cli_run_on_a_flipped_header_exits_1(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    _flip_magic(bundle)
    _sync_size(bundle)
    r = subprocess.run(
        [sys.executable, "-m", "apps.cli.main", "run", str(bundle), "--prompt", "hi",
         "--max-tokens", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "not a readable GGUF" in r.stderr
