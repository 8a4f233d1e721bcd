"""Fast weight checksums: the manifest's record (validated, round-tripped), the range hash
(pread, a short file is an error), and `verify --fast` naming the tensor and expert that
differ in real GGUF and ONNX packs."""

from __future__ import annotations

import json
import os

import pytest
import xxhash

from contract.checksums import RangeReadError, check_file, check_fit, hash_range
from contract.errors import BundleError
from contract.manifest import FileChecksums, ManifestError, RangeChecksum, manifest_from_dict
from contract.verify import verify_bundle
from tests.contract.test_manifest import _manifest

pytestmark = pytest.mark.unit

SUMS = FileChecksums(
    "xxh3-64-v1",
    {"(header)": RangeChecksum(0, 4096, "0123456789abcdef")},
    {"blk.1.ffn_down_exps.weight": ("00" * 8,) * 8},
)


def test_checksums_round_trip_and_are_written_only_when_known():
    m = _manifest(checksums={"model.gguf": SUMS})
    d = json.loads(m.to_json())
    assert d["checksums"]["model.gguf"]["experts"]["blk.1.ffn_down_exps.weight"][0] == "0" * 16
    assert manifest_from_dict(d) == m
    assert "checksums" not in json.loads(_manifest().to_json())


@pytest.mark.parametrize("experts, message", [
    ({"blk.1.ffn_down_exps.weight": ["0" * 16] * 7},
     r"^manifest.json: field 'checksums.model.gguf.experts.blk.1.ffn_down_exps.weight' must "
     r"list 8 digests, one per expert, got 7$"),
    ({"blk.9.ffn_up_exps.weight": ["0" * 16] * 8},
     r"field 'checksums.model.gguf.experts.blk.9.ffn_up_exps.weight': not an expert tensor of "
     r"'model.gguf'$"),
])
def test_checksums_that_do_not_fit_the_build_are_refused(experts, message):
    d = json.loads(_manifest(checksums={"model.gguf": SUMS}).to_json())
    d["checksums"]["model.gguf"]["experts"] = experts
    with pytest.raises(BundleError, match=message):
        check_fit(manifest_from_dict(d))


def test_checksums_of_an_unlisted_file_are_refused():
    d = json.loads(_manifest(checksums={"model.gguf": SUMS}).to_json())
    d["checksums"]["other.bin"] = d["checksums"].pop("model.gguf")
    with pytest.raises(ManifestError, match=r"'other.bin' is not listed in 'files'"):
        manifest_from_dict(d)


def test_a_digest_that_is_not_16_hex_digits_is_refused():
    d = json.loads(_manifest(checksums={"model.gguf": SUMS}).to_json())
    d["checksums"]["model.gguf"]["dense"]["(header)"]["xxh3"] = "xyz"
    where = r"checksums\['model.gguf'\].dense\['\(header\)'\].xxh3"
    with pytest.raises(ManifestError, match=where):
        manifest_from_dict(d)


def test_hash_range_is_xxh3_of_the_bytes_and_a_short_file_is_an_error(tmp_path):
    data = os.urandom(10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert hash_range(fd, 100, 9_000) == xxhash.xxh3_64_intdigest(data[100:9_000])
        assert hash_range(fd, 100, 9_000, bytearray(333)) == xxhash.xxh3_64_intdigest(
            data[100:9_000])
        with pytest.raises(RangeReadError, match="the file ends at byte 10000, before byte 12000"):
            hash_range(fd, 5_000, 12_000)
    finally:
        os.close(fd)


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.engine
@pytest.mark.parametrize("fmt, quant", [("gguf", "F16"), ("onnx", "fp32")])
def test_verify_fast_names_the_damaged_tensor_and_expert(bundle_factory, tmp_path, fmt, quant):
    import shutil

    src = bundle_factory("qwen3moe-tiny", quant, format=fmt)
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    m = manifest_from_dict(json.loads((bundle / "manifest.json").read_text()))
    build = m.build(fmt)
    assert verify_bundle(bundle, fast=True).ok
    tensor = build.expert_layers[-1].tensors[0]
    _flip(bundle / build.expert_file, tensor.offset + 5 * tensor.stride + tensor.stride // 2)
    report = verify_bundle(bundle, fast=True)
    assert report.problems == [
        f"{build.expert_file}: {tensor.name} expert 5 [{tensor.offset + 5 * tensor.stride}, "
        f"{tensor.offset + 6 * tensor.stride}): checksum mismatch"
    ]
    assert check_file(bundle / build.expert_file, m) == report.problems
    assert not verify_bundle(bundle).ok  # the sha256 check agrees


@pytest.mark.engine
def test_verify_fast_falls_back_to_sha256_without_checksums(bundle_factory, tmp_path):
    import shutil

    bundle = tmp_path / "old"
    shutil.copytree(bundle_factory("qwen3moe-tiny", "F16"), bundle)
    d = json.loads((bundle / "manifest.json").read_text())
    del d["checksums"]
    (bundle / "manifest.json").write_text(json.dumps(d))
    report = verify_bundle(bundle, fast=True)
    assert report.ok and "no checksums" in report.notes[0]


@pytest.mark.engine
def test_cli_verify_fast_exits_1_naming_the_tensor(bundle_factory, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    bundle = tmp_path / "b"
    shutil.copytree(bundle_factory("qwen3moe-tiny", "F16"), bundle)
    m = manifest_from_dict(json.loads((bundle / "manifest.json").read_text()))
    tensor = m.build().expert_layers[0].tensors[1]
    _flip(bundle / "model.gguf", tensor.offset + 2 * tensor.stride + 7)
    r = subprocess.run([sys.executable, "-m", "apps.cli.main", "verify", "--fast", str(bundle)],
                       capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 1
    assert f"FAILED   model.gguf: {tensor.name} expert 2 [" in r.stderr
