"""Sampled block hashes: which blocks, what they catch at open (and what only the full check
catches), bundles without them, and the manifest field's validation."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.errors import BundleError, ManifestError
from contract.integrity import (
    BLOCK_BYTES,
    MAX_BLOCKS,
    SCHEME,
    SPREAD_BLOCKS,
    check_file,
    choose_blocks,
    gguf_regions,
    sample_file,
)
from contract.manifest import SampledHashes, manifest_from_dict, read_manifest
from tests.contract.test_manifest import _dict

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
B = BLOCK_BYTES


# --- which blocks ----------------------------------------------------------------------------
def test_small_file_is_covered_whole():
    size = 100 * B + 17
    assert choose_blocks(size) == tuple(range(0, 101 * B, B))


def test_large_file_first_last_and_evenly_spread():
    n = 10_000
    blocks = choose_blocks(n * B)
    assert len(blocks) == SPREAD_BLOCKS + 1  # the spread includes block 0; the last is extra
    assert blocks[0] == 0 and blocks[-1] == (n - 1) * B
    gaps = {b - a for a, b in zip(blocks, blocks[1:-1], strict=False)}
    assert max(gaps) - min(gaps) <= B  # even to within one block
    assert choose_blocks(n * B) == blocks  # deterministic


def test_each_region_contributes_its_first_and_last_block():
    size = 10_000 * B
    regions = [(0, 3 * B + 5), (5000 * B + 32, 5100 * B), (7777 * B, 7777 * B + 1)]
    blocks = set(choose_blocks(size, regions))
    for start, end in regions:
        assert start // B * B in blocks and (end - 1) // B * B in blocks
    # Regions outside the file, or empty, add nothing.
    assert choose_blocks(size, [(size + B, size + 2 * B), (B, B)]) == choose_blocks(size)


def test_block_count_is_capped_keeping_an_even_subset_of_region_ends():
    size = 1_000_000 * B
    regions = [(i * 97 * B + 64, i * 97 * B + 50 * B) for i in range(5000)]
    blocks = choose_blocks(size, regions)
    assert len(blocks) == MAX_BLOCKS
    assert blocks[0] == 0 and blocks[-1] == size - B
    assert blocks == tuple(sorted(set(blocks)))


def test_empty_file_has_no_blocks():
    assert choose_blocks(0) == ()


# --- what a check catches --------------------------------------------------------------------
@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(random.Random(7).randbytes(2000 * B + 123))
    return path


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_untouched_file_passes_reading_only_the_blocks(data_file):
    sampled = sample_file(data_file, [(B * 10 + 3, B * 900)])
    assert sampled.scheme == SCHEME and sampled.block_bytes == B
    read = check_file(data_file, sampled)
    assert read == sum(min(B, data_file.stat().st_size - o) for o in sampled.blocks)
    assert read < data_file.stat().st_size / 5


def test_damage_in_a_sampled_block_is_one_line_naming_file_and_offset(data_file):
    sampled = sample_file(data_file)
    victim = sorted(sampled.blocks)[7]
    _poke(data_file, victim + 100, b"\xff\x00\xff")
    with pytest.raises(BundleError) as e:
        check_file(data_file, sampled)
    msg = str(e.value)
    assert "\n" not in msg and str(data_file) in msg
    assert f"1 of {len(sampled.blocks)} sampled blocks" in msg and f"[{victim}, " in msg


def test_a_zeroed_run_longer_than_the_spread_spacing_is_caught(data_file):
    sampled = sample_file(data_file)
    spacing = data_file.stat().st_size // SPREAD_BLOCKS + B
    _poke(data_file, 1234 * B + 77, bytes(spacing))  # e.g. a page range never written
    with pytest.raises(BundleError, match="sampled blocks do not match"):
        check_file(data_file, sampled)


def test_a_flip_outside_the_samples_needs_the_full_check(data_file):
    """The limit, stated as a test: sampling does not see every byte."""
    sampled = sample_file(data_file)
    unsampled = next(k * B for k in range(2000) if k * B not in sampled.blocks)
    _poke(data_file, unsampled + 5, b"\x01")
    check_file(data_file, sampled)  # passes; `edgemoe verify` is the full check


def test_unknown_scheme_is_skipped_not_refused(data_file):
    sampled = dataclasses.replace(sample_file(data_file), scheme="sha512-blocks-v9")
    _poke(data_file, 0, b"garbage")
    assert check_file(data_file, sampled) == 0


def test_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(BundleError, match="cannot be read"):
        check_file(tmp_path / "gone.bin", SampledHashes(SCHEME, B, {0: "0" * 64}))


# --- the manifest field ----------------------------------------------------------------------
def _with_integrity(blocks: dict, name: str = "model.gguf", **extra) -> dict:
    d = _dict()
    d["integrity"] = {name: {"scheme": SCHEME, "block_bytes": B, "blocks": blocks, **extra}}
    return d


def test_field_round_trips_with_offsets_as_json_keys():
    m = manifest_from_dict(_with_integrity({"0": "a" * 64, "4096": "b" * 64}))
    assert m.integrity["model.gguf"].blocks == {0: "a" * 64, 4096: "b" * 64}
    assert manifest_from_dict(json.loads(m.to_json())) == m


def test_manifest_without_the_field_reads_as_nothing_to_check():
    d = _dict()
    del d["integrity"]
    assert manifest_from_dict(d).integrity == {}


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (_with_integrity({"0": "A" * 64}), "must be a string matching"),
        (_with_integrity({"-4096": "a" * 64}), "at least 0"),
        (_with_integrity({"0": "a" * 64}, name="other.gguf"), "not listed in 'files'"),
        (_with_integrity({}, block_bytes=1 << 40), "block_bytes"),
    ],
)
def test_bad_integrity_entries_name_the_field(d, expected):
    with pytest.raises(ManifestError, match=expected) as e:
        manifest_from_dict(d)
    assert "integrity" in str(e.value)


# --- real bundles ----------------------------------------------------------------------------
def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


@pytest.mark.engine
def test_packed_gguf_samples_header_and_every_tensor_ends(tiny_bundle):
    m = read_manifest(tiny_bundle)
    sampled = m.integrity["model.gguf"]
    assert set(m.integrity) == {"model.gguf"} and sampled.scheme == SCHEME
    blocks = set(sampled.blocks)
    regions = gguf_regions(tiny_bundle / "model.gguf")
    assert regions[0][0] == 0 and len(regions) > 10
    for start, end in regions:
        assert start // B * B in blocks and (end - 1) // B * B in blocks


def _corrupt_sampled_expert_block(bundle: Path) -> int:
    """Overwrite, in place and at the same size, a sampled block inside an expert tensor."""
    m = read_manifest(bundle)
    t = m.expert_layers[0].tensors[0]
    sampled = sorted(o for o in m.integrity["model.gguf"].blocks if o >= t.offset)
    _poke(bundle / "model.gguf", sampled[1], b"\x5a" * 512)
    return sampled[1]


@pytest.mark.engine
def test_data_damage_that_keeps_the_size_is_refused_at_open(tiny_bundle, tmp_path):
    from runtime.bundles.open import open_bundle

    bundle = _copy(tiny_bundle, tmp_path)
    offset = _corrupt_sampled_expert_block(bundle)
    with pytest.raises(BundleError) as e:
        open_bundle(bundle)
    msg = str(e.value)
    assert "model.gguf" in msg and f"[{offset}, " in msg and "\n" not in msg
    with pytest.raises(BundleError, match="sha256 mismatch"):
        open_bundle(bundle, verify=True)  # the full check says the same, its own way


@pytest.mark.engine
def test_cli_run_on_data_damage_is_one_error_line(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    _corrupt_sampled_expert_block(bundle)
    r = subprocess.run(
        [sys.executable, "-m", "apps.cli.main", "run", str(bundle), "--prompt", "hi",
         "--max-tokens", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "sampled blocks" in lines[0]


@pytest.mark.engine
def test_bundle_from_before_the_field_still_loads(tiny_bundle, tmp_path):
    import runtime

    bundle = _copy(tiny_bundle, tmp_path)
    d = json.loads((bundle / "manifest.json").read_text())
    del d["integrity"]
    (bundle / "manifest.json").write_text(json.dumps(d, indent=2))
    with runtime.load(bundle, budget="50%") as model:
        assert len(model.generate("def f():", max_tokens=2).tokens) == 2


@pytest.mark.engine
def test_onnx_build_samples_graph_and_data(bundle_factory, tmp_path):
    from runtime.bundles.open import open_bundle

    src = bundle_factory("qwen3moe-tiny", "fp32", format="onnx")
    m = read_manifest(src)
    assert set(m.integrity) == {"model.onnx", "model.onnx.data"}
    bundle = _copy(src, tmp_path)
    t = m.expert_layers[0].tensors[0]
    last = (t.offset + t.stride * m.shape.n_experts - 1) // B * B
    assert last in m.integrity["model.onnx.data"].blocks  # the tensor's last page
    _poke(bundle / "model.onnx.data", last, bytes(B))
    with pytest.raises(BundleError, match="model.onnx.data: 1 of"):
        open_bundle(bundle)


@pytest.mark.engine
def test_open_reads_exactly_the_sampled_blocks(tiny_bundle):
    """What the check costs: one read per recorded block, nothing else. The tiny GGUF is
    under 1 MiB (256 blocks), so it is checked whole; larger files are sampled (see the unit
    tests above, and the README for the medium fixture)."""
    from contract.integrity import check_build

    m = read_manifest(tiny_bundle)
    size = os.path.getsize(tiny_bundle / "model.gguf")
    blocks = m.integrity["model.gguf"].blocks
    assert check_build(tiny_bundle, m, m.build()) == sum(min(B, size - o) for o in blocks)
    assert size <= SPREAD_BLOCKS * B and len(blocks) == -(-size // B)
