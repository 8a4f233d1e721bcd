"""`pack` as stages: user options apart from derived inputs, typed hand-offs, one timer each."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from packager.api import PackInputs, PackOptions, PackPlan, pack, verify
from packager.default_texts import DEFAULT_TEXT_NAME

FIXTURE = "qwen3moe-tiny"  # 8 experts per MoE layer
STAGES = ("open", "prepare", "plan", "convert", "quantize", "write")


@pytest.mark.unit
def test_options_hold_only_what_the_user_asked():
    names = {f.name for f in dataclasses.fields(PackOptions)}
    assert not names & {"hot_experts", "plan", "imatrix", "tensor_types"}
    assert "default_calibration_text" in (PackOptions.__doc__ or "")
    for record in (PackOptions, PackPlan, PackInputs):
        assert record.__dataclass_params__.frozen, record


@pytest.mark.engine
def test_prune_without_text_uses_the_default_and_times_each_stage(fixture_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    t0 = time.perf_counter()
    result = pack(
        PackOptions(src=str(fixture_checkpoint(FIXTURE)), out_dir=out, quant="Q8_0",
                    prune=0.25, reference=False)
    )
    wall = time.perf_counter() - t0
    assert tuple(result.seconds) == STAGES
    assert all(s >= 0 for s in result.seconds.values())
    # Timers that overlapped (open used to include prepare and plan) would add up past the wall.
    assert sum(result.seconds.values()) <= wall
    report = json.loads((out / "report.json").read_text())
    assert report["calibration_text"] == DEFAULT_TEXT_NAME
    assert result.report is not None and report == result.report.to_json()
    assert result.report.fidelity is None  # reference=False: nothing measured
    experts = report["pruning"]["experts"]
    assert (experts["n_experts_before"], experts["n_experts_after"]) == (8, 6)
    assert result.manifest.shape.n_experts == 6
    assert result.manifest.report_file == "report.json"
    # The pruned checkpoint and the F32 intermediate stay in the work folder, which is gone.
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert {p.name for p in out.iterdir()} == {
        "README.md", "generation_config.json", "manifest.json", "model.gguf", "report.json",
        "tokenizer.json", "tokenizer_config.json", "usage.json",
    }
    assert verify(out).ok


@pytest.mark.engine
def test_prepare_hands_on_the_pruned_checkpoint_and_one_f32(fixture_checkpoint, tmp_path):
    """llama.cpp calibrates the pruned model from an F32 GGUF that conversion then reuses."""
    from packager.gguf_build import write_gguf
    from packager.prepare import F32_NAME, prepare
    from packager.prune import PACK_FOLDER
    from packager.source import open_checkpoint

    ckpt = open_checkpoint(fixture_checkpoint(FIXTURE))
    prepared = prepare(ckpt, tmp_path, prune=0.25, measure=False, engine="llama.cpp")
    assert prepared.calibration_text == DEFAULT_TEXT_NAME
    assert prepared.checkpoint.path == prepared.pruned.out_dir
    assert prepared.checkpoint.source == ckpt.source  # the bundle names the user's model
    assert prepared.usage.n_experts == prepared.pruned.n_experts_after == 6
    assert prepared.report["pruning"]["experts"] == prepared.pruned.to_dict()
    assert prepared.f32 == tmp_path / F32_NAME
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([F32_NAME, PACK_FOLDER])
    fresh = write_gguf(prepared.checkpoint, tmp_path / "fresh.gguf", "F32").path
    assert Path(prepared.f32).read_bytes() == fresh.read_bytes()
