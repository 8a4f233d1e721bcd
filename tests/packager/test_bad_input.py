"""Bad input to `edgemoe pack`: one clear line, non-zero exit, no traceback, no bundle left."""

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

from packager.api import verify

pytestmark = pytest.mark.engine

EDGEMOE = [sys.executable, "-m", "apps.cli.main"]


def run_pack(src: str | Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*EDGEMOE, "pack", str(src), "-o", str(out), "--quiet", "--no-reference", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_clean_failure(proc: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (out / "manifest.json").exists()
    leftovers = [p.name for p in out.parent.iterdir() if ".partial-" in p.name]
    assert not leftovers, leftovers


@pytest.fixture
def ckpt_copy(tmp_path, fixture_checkpoint):
    def copy(name: str) -> Path:
        dst = tmp_path / f"src-{name}"
        shutil.copytree(fixture_checkpoint(name), dst)
        return dst

    return copy


def test_missing_safetensors(ckpt_copy, tmp_path):
    src = ckpt_copy("qwen3moe-tiny")
    (src / "model.safetensors").unlink()
    proc = run_pack(src, tmp_path / "out")
    assert_clean_failure(proc, tmp_path / "out", "no model.safetensors")


def test_corrupt_safetensors(ckpt_copy, tmp_path):
    src = ckpt_copy("qwen3moe-tiny")
    (src / "model.safetensors").write_bytes(b"\xff" * 64)
    assert_clean_failure(
        run_pack(src, tmp_path / "out"),
        tmp_path / "out",
        "model.safetensors",
        "corrupt or truncated",
    )


def test_truncated_shard(ckpt_copy, tmp_path):
    src = ckpt_copy("mixtral-tiny")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = src / sorted(set(index["weight_map"].values()))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert_clean_failure(
        run_pack(src, tmp_path / "out"), tmp_path / "out", shard.name, "corrupt or truncated"
    )


def test_index_names_missing_shard(ckpt_copy, tmp_path):
    src = ckpt_copy("mixtral-tiny")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (src / shard).unlink()
    assert_clean_failure(run_pack(src, tmp_path / "out"), tmp_path / "out", shard, "does not exist")


def test_unsupported_architecture_lists_supported(ckpt_copy, tmp_path):
    src = ckpt_copy("qwen3moe-tiny")
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["JambaForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    assert_clean_failure(
        run_pack(src, tmp_path / "out"),
        tmp_path / "out",
        "JambaForCausalLM is not supported",
        "Qwen3MoeForCausalLM",
    )


def test_dense_checkpoint(fixture_checkpoint, tmp_path):
    proc = run_pack(fixture_checkpoint("dense-tiny"), tmp_path / "out")
    assert_clean_failure(proc, tmp_path / "out", "dense (non-MoE)")


def test_malformed_config(ckpt_copy, tmp_path):
    src = ckpt_copy("qwen3moe-tiny")
    (src / "config.json").write_text("{ not json")
    assert_clean_failure(
        run_pack(src, tmp_path / "out"), tmp_path / "out", "config.json", "malformed JSON"
    )


def test_unknown_profile(fixture_checkpoint, tmp_path):
    proc = run_pack(fixture_checkpoint("qwen3moe-tiny"), tmp_path / "out", "--profile", "toaster")
    assert_clean_failure(proc, tmp_path / "out", "toaster")
    assert "laptop-16gb" in proc.stderr  # lists what exists


def test_existing_out_dir_needs_force(fixture_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_pack(fixture_checkpoint("qwen3moe-tiny"), out)
    assert proc.returncode != 0 and "--force" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"
    ok = run_pack(fixture_checkpoint("qwen3moe-tiny"), out, "--force", "--quant", "Q8_0")
    assert ok.returncode == 0, ok.stderr
    assert verify(out).ok and not (out / "keep.txt").exists()


def test_no_disk_space(fixture_checkpoint, tmp_path):
    """A real ENOSPC: a 1 MiB tmpfs is far too small for any bundle."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        proc = run_pack(fixture_checkpoint("qwen3moe-tiny"), mnt / "out")
        assert_clean_failure(proc, mnt / "out", "MB free")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_killed_pack_leaves_nothing_that_verifies(fixture_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            *EDGEMOE,
            "pack",
            str(fixture_checkpoint("qwen3moe-medium")),
            "-o",
            str(out),
            "--quiet",
            "--no-reference",
            "--quant",
            "Q4_K_M",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(".partial-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists() or not verify(out).ok
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    ("variant", "needles"),
    [
        ({"mtp": "only"}, ("num_nextn_predict_layers=1", "only multi-token-prediction")),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
         ("rope_parameters.rope_type 'dynamic'",)),
    ],
)
def test_deepseek3_variant_is_one_line_and_nothing_is_written(variant, needles, tmp_path):
    """A known family with an unsupported variant (MTP weights alone, an unknown rope scaling)."""
    from tests.packager.synthetic import write_checkpoint

    src = write_checkpoint("deepseek3", tmp_path / "src", **variant)
    proc = run_pack(src, tmp_path / "out", "--quant", "F16", "--format", "gguf,onnx")
    assert_clean_failure(proc, tmp_path / "out", *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("variant", "needles"),
    [
        ({"mtp": "only"}, ("num_nextn_predict_layers=1", "only multi-token-prediction")),
        ({"n_shared_experts": 0}, ("'n_shared_experts' is 0",)),
    ],
)
def test_glm4moe_variant_is_one_line_and_nothing_is_written(variant, needles, tmp_path):
    """GLM-4.5 NextN weights alone, or no shared expert (llama.cpp's glm4moe always adds one)."""
    from tests.packager.synthetic import write_checkpoint

    src = write_checkpoint("glm4moe", tmp_path / "src", **variant)
    proc = run_pack(src, tmp_path / "out", "--quant", "F16", "--format", "gguf,onnx")
    assert_clean_failure(proc, tmp_path / "out", *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("variant", "needles"),
    [
        ({"mtp": "only"}, ("only multi-token-prediction", "model.mtp_")),
        ({"moe_layer_interval": 2}, ("'moe_layer_interval' is 2",)),
    ],
)
def test_ernie45moe_variant_is_one_line_and_nothing_is_written(variant, needles, tmp_path):
    """ERNIE-4.5 MTP weights alone, or MoE layers every other layer (llama.cpp's loader makes
    every layer after the dense lead an MoE layer)."""
    from tests.packager.synthetic import write_checkpoint

    src = write_checkpoint("ernie45moe", tmp_path / "src", **variant)
    proc = run_pack(src, tmp_path / "out", "--quant", "F16", "--format", "gguf,onnx")
    assert_clean_failure(proc, tmp_path / "out", *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("variant", "needles"),
    [
        ({"attention_chunk_size": 4096}, ("'attention_chunk_size' is 4096",)),
        ({"no_rope_layers": [1, 0, 1, 1]}, ("'no_rope_layers' is [1, 0, 1, 1]",)),
    ],
)
def test_llama4_variant_is_one_line_and_nothing_is_written(variant, needles, tmp_path):
    """Llama 4 with a chunk size or no-rope layers llama.cpp's llama4 graph does not compute."""
    from tests.packager.synthetic import write_checkpoint

    src = write_checkpoint("llama4", tmp_path / "src", **variant)
    proc = run_pack(src, tmp_path / "out", "--quant", "F16")
    assert_clean_failure(proc, tmp_path / "out", *needles)
    assert not (tmp_path / "out").exists()
