"""gpt-oss: its config namings, what its GGUF says, MXFP4 repacking and the variants refused.

Numpy-only checkpoints (tests/packager/synthetic.py): `gptoss` as transformers saves it,
`gptoss_mxfp4` as OpenAI publishes it (MXFP4 expert blocks and scales, the release's names).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for
from packager.families.gpt_oss import mxfp4
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.unit


def _cfg(name: str = "gptoss", **change) -> dict:
    return {**CONFIGS[name], **change}


def test_released_and_transformers_namings_read_the_same():
    """The release names the top-k `experts_per_token`, keeps rope_theta beside `rope_scaling`
    and leaves swiglu_alpha to transformers' default; transformers 5 writes rope_parameters."""
    a, b = family_for(_cfg()).config, family_for(_cfg("gptoss_mxfp4")).config
    for c in (a, b):
        assert (c.n_experts, c.top_k, c.expert_width) == (4, 2, 32)
        assert (c.rope.kind, c.rope.theta, c.rope.factor, c.rope.truncate) == \
            ("yarn", 150000.0, 32.0, False)
        assert (c.swiglu_alpha, c.swiglu_limit, c.sliding_window) == (1.702, 7.0, 4)
        assert c.sliding() == [True, False]
    assert (a.mxfp4, b.mxfp4, a.packed_weights, b.packed_weights) == \
        (False, True, None, "MXFP4")
    # transformers' defaults: theta 150000, layers alternate starting with a sliding one.
    bare = {k: v for k, v in _cfg().items() if k not in ("rope_parameters", "layer_types")}
    c = family_for(bare).config
    assert c.rope.theta == 150000.0 and c.sliding() == [True, False]


def test_pruning_rewrites_every_name_of_the_top_k():
    new = family_for(_cfg("gptoss_mxfp4", experts_per_token=4, num_local_experts=4)
                     ).config.with_experts(2)  # fmt: skip
    assert (new["num_local_experts"], new["experts_per_token"]) == (2, 2)


def test_gguf_hyper_parameters(tmp_path):
    import gguf

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("gptoss", tmp_path / "ck")
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path)
    field = {k.removeprefix("gpt-oss."): v.contents() for k, v in reader.fields.items()}
    assert field["general.architecture"] == "gpt-oss"
    assert (field["attention.sliding_window"], field["attention.sliding_window_pattern"]) == \
        (4, [True, False])
    assert (field["expert_feed_forward_length"], field["expert_count"],
            field["expert_used_count"]) == (32, 4, 2)  # fmt: skip
    assert field["rope.scaling.type"] == "yarn" and field["rope.scaling.factor"] == 32.0
    assert field["rope.scaling.original_context_length"] == 4096
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    # Biases stay F32 (ggml adds expert biases with add_id, F32 only); experts are F16 here.
    assert types["blk.0.ffn_gate_exps.bias"] == types["blk.0.attn_sinks.weight"] == "F32"
    assert types["blk.0.ffn_gate_inp.bias"] == types["blk.0.attn_q.bias"] == "F32"
    assert types["blk.1.ffn_down_exps.weight"] == "F16"
    assert "blk.0.post_attention_norm.weight" in types


def test_fused_experts_are_split_and_transposed(tmp_path):
    """gate_up_proj [E, in, out] with gate and up interleaved on `out` -> llama.cpp's
    ffn_gate_exps / ffn_up_exps [E, out, in]; its bias likewise."""
    import gguf
    from safetensors.numpy import load_file

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("gptoss", tmp_path / "ck")
    w = load_file(str(src / "model.safetensors"))
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F32").path)
    t = {x.name: np.asarray(x.data) for x in reader.tensors}
    gu, gub = w["model.layers.1.mlp.experts.gate_up_proj"], \
        w["model.layers.1.mlp.experts.gate_up_proj_bias"]
    np.testing.assert_array_equal(t["blk.1.ffn_gate_exps.weight"][2], gu[2, :, 0::2].T)
    np.testing.assert_array_equal(t["blk.1.ffn_up_exps.weight"][3], gu[3, :, 1::2].T)
    np.testing.assert_array_equal(t["blk.1.ffn_up_exps.bias"], gub[:, 1::2])
    np.testing.assert_array_equal(t["blk.0.ffn_down_exps.weight"],
                                  w["model.layers.0.mlp.experts.down_proj"].transpose(0, 2, 1))


def test_mxfp4_repacks_to_ggml_blocks_byte_for_byte():
    """Golden bytes from the two layouts' definitions: codes 0..31 of one block (weight j has
    code j % 16), scale byte 0x7f. The checkpoint packs weights (2j, 2j+1) into byte j; GGML
    puts the scale first, then weights j and j + 16 into byte j."""
    codes = np.arange(32) % 16
    hf = (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8).reshape(1, 16)
    out = mxfp4.to_ggml(hf, np.array([0x7F], dtype=np.uint8))
    want = [0x7F] + [int(codes[j]) | int(codes[j + 16]) << 4 for j in range(16)]
    assert out.tolist() == want


def test_mxfp4_dequantizes_as_gguf_py_reads_the_repacked_blocks():
    import gguf

    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (3, 5, 2, 16), dtype=np.uint8)
    scales = rng.integers(100, 140, (3, 5, 2), dtype=np.uint8)
    ggml = gguf.quants.dequantize(mxfp4.to_ggml(blocks, scales), gguf.GGMLQuantizationType.MXFP4)
    np.testing.assert_array_equal(mxfp4.dequantize(blocks, scales), ggml)


def test_mxfp4_experts_keep_their_bytes_in_the_gguf(tmp_path):
    import gguf
    from safetensors.numpy import load_file

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("gptoss_mxfp4", tmp_path / "ck")
    w = load_file(str(src / "model.safetensors"))
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path)
    t = {x.name: x for x in reader.tensors}
    pre = "model.layers.0.mlp.experts"
    for name, blocks, scales, rows in (
        ("blk.0.ffn_gate_exps.weight", "gate_up_proj", "gate_up_proj", slice(0, None, 2)),
        ("blk.0.ffn_up_exps.weight", "gate_up_proj", "gate_up_proj", slice(1, None, 2)),
        ("blk.0.ffn_down_exps.weight", "down_proj", "down_proj", slice(None)),
    ):
        assert t[name].tensor_type == gguf.GGMLQuantizationType.MXFP4
        got = gguf.quants.dequantize(np.asarray(t[name].data), gguf.GGMLQuantizationType.MXFP4)
        want = mxfp4.dequantize(w[f"{pre}.{blocks}_blocks"][:, rows],
                                w[f"{pre}.{scales}_scales"][:, rows])
        np.testing.assert_array_equal(got.reshape(want.shape), want)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"swiglu_limit": 5.0}, "'swiglu_limit' is 5.0"),
        ({"swiglu_alpha": 1.0}, "'swiglu_alpha' is 1.0"),
        ({"attention_bias": False}, "'attention_bias' is false"),
        ({"layer_types": ["sliding_attention"]}, "'layer_types' must list"),
        ({"layer_types": ["sliding_attention", "chunked_attention"]}, "'layer_types' must list"),
        ({"sliding_window": None}, "missing 'sliding_window'"),
        ({"quantization_config": {"quant_method": "fp8"}}, "quant_method 'fp8'"),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0}},
         "rope_type 'longrope' is not supported"),
    ],
)
def test_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for(_cfg(**change)).gguf
    assert "\n" not in str(err.value)


def _rewrite(src: Path, **tensors: np.ndarray) -> None:
    from safetensors.numpy import load_file, save_file

    w = load_file(str(src / "model.safetensors"))
    save_file({**w, **tensors}, str(src / "model.safetensors"), metadata={"format": "pt"})


def _plan(src: Path):
    from packager.source import open_checkpoint

    ck = open_checkpoint(src)
    family_for(ck.config).check(ck, ["gguf"])


def test_an_mxfp4_block_count_that_does_not_divide_names_the_tensor(tmp_path):
    src = write_checkpoint("gptoss_mxfp4", tmp_path / "ck")
    # 40-wide experts: 40 weights are not whole 32-weight blocks.
    (src / "config.json").write_text(json.dumps(_cfg("gptoss_mxfp4", intermediate_size=40)))
    _rewrite(src, **{f"model.layers.{i}.mlp.experts.gate_up_proj_bias":
                     np.zeros((4, 80), np.float32) for i in range(2)})  # fmt: skip
    _rewrite(src, **{f"model.layers.{i}.mlp.experts.gate_up_proj_blocks":
                     np.zeros((4, 80, 1, 16), np.uint8) for i in range(2)})  # fmt: skip
    _rewrite(src, **{f"model.layers.{i}.mlp.experts.gate_up_proj_scales":
                     np.zeros((4, 80, 1), np.uint8) for i in range(2)})  # fmt: skip
    with pytest.raises(UnsupportedArchitectureError) as err:
        _plan(src)
    assert str(err.value) == ("model.layers.0.mlp.experts.down_proj_blocks: MXFP4 blocks hold 32 "
                              "weights, which do not divide the input width 40")


def test_mxfp4_blocks_and_scales_that_disagree_name_the_tensor(tmp_path):
    src = write_checkpoint("gptoss_mxfp4", tmp_path / "ck")
    _rewrite(src, **{"model.layers.1.mlp.experts.down_proj_scales":
                     np.zeros((4, 32, 2), np.uint8)})  # fmt: skip
    with pytest.raises(UnsupportedArchitectureError,
                       match=r"^model\.layers\.1\.mlp\.experts\.down_proj_blocks: MXFP4 blocks "
                             r"\[4, 32, 1, 16\] / scales \[4, 32, 2\] do not hold"):  # fmt: skip
        _plan(src)


def test_config_and_tensors_must_agree_on_mxfp4(tmp_path):
    src = write_checkpoint("gptoss_mxfp4", tmp_path / "ck")
    cfg = {k: v for k, v in _cfg("gptoss_mxfp4").items() if k != "quantization_config"}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="stores MXFP4 blocks but config.json "
                       "declares no quantization_config"):  # fmt: skip
        _plan(src)


@pytest.mark.engine
def test_pack_of_a_bad_mxfp4_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    from tests.packager.test_bad_input import assert_clean_failure, run_pack

    src = write_checkpoint("gptoss_mxfp4", tmp_path / "ck")
    _rewrite(src, **{"model.layers.0.mlp.experts.gate_up_proj_blocks":
                     np.zeros((4, 64, 1, 12), np.uint8)})  # fmt: skip
    proc = run_pack(src, tmp_path / "out", "--quant", "Q8_0", "--format", "gguf,onnx")
    assert_clean_failure(proc, tmp_path / "out", "gate_up_proj_blocks", "MXFP4 blocks")
    assert not (tmp_path / "out").exists()


def _loud_experts(src: Path, scale: float) -> None:
    """Experts `scale` times louder, so the SwiGLU's gate and up pass its clamp at 7."""
    from safetensors.numpy import load_file

    w = load_file(str(src / "model.safetensors"))
    _rewrite(src, **{n: (t * scale).astype(np.float32) for n, t in w.items()
                     if n.endswith(("gate_up_proj", "gate_up_proj_bias"))})  # fmt: skip


@pytest.mark.engine
@pytest.mark.reference
def test_both_engines_clamp_the_swiglu_as_transformers_does(tmp_path):
    """With loud experts (gate and up far past ±7), llama.cpp (ggml_swiglu_oai) and fp32 ONNX
    (standard ops) follow transformers, and int8's QMoE node (its bias inputs and
    swiglu_limit) follows the gathered int8 graph built from the same codes."""
    import torch
    from transformers import AutoModelForCausalLM

    from packager.fidelity import gguf_logits
    from packager.gguf_build import write_gguf
    from packager.onnx_export import export_onnx
    from packager.source import open_checkpoint
    from tests.packager.test_onnx_export import OnnxModel

    src = write_checkpoint("gptoss", tmp_path / "ck")
    _loud_experts(src, 60.0)
    ids = [5, 70, 200, 13, 99, 140, 31, 7, 255, 64]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    experts = model.model.layers[0].mlp.experts
    seen = []
    handle = experts.register_forward_pre_hook(lambda m, args: seen.append(
        args[0] @ m.gate_up_proj + m.gate_up_proj_bias[:, None, :]))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    handle.remove()
    gate_up = seen[0]
    assert (gate_up[..., 0::2] > 7).float().mean() > 0.1  # gates clamped from above
    assert (gate_up[..., 1::2].abs() > 7).float().mean() > 0.1  # ups from both sides
    gguf = write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F32").path
    # llama.cpp keeps its KV cache in F16: ~1e-3 apart; an unclamped SwiGLU would be units.
    got = gguf_logits(gguf, [[*ids, 0]])[0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-2)
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    fp32 = OnnxModel(export_onnx(src, tmp_path / "fp32", "fp32"))
    got = fp32.step(ids, fp32.empty_past())["logits"][0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    fused = OnnxModel(export_onnx(src, tmp_path / "q8", "int8"))
    gathered = OnnxModel(export_onnx(src, tmp_path / "q8u", "int8", expert_mode="unique"))
    assert fused.x.expert_mode == "fused" and gathered.x.expert_mode == "unique"
    a = fused.step(ids, fused.empty_past())
    b = gathered.step(ids, gathered.empty_past())
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-3, atol=1e-3)
    for layer in range(2):
        np.testing.assert_array_equal(a[f"routing.{layer}"], b[f"routing.{layer}"])


def test_the_planner_counts_mxfp4_experts_at_their_size(tmp_path):
    """A published checkpoint's experts stay MXFP4 at every quant: 17 bytes per 32 weights,
    from its tensors or from its config.json alone."""
    from packager.planning import plan_for
    from tests.packager.synthetic import EXPERT_FF, EXPERTS, HIDDEN, LAYERS

    src = write_checkpoint("gptoss_mxfp4", tmp_path / "ck")
    mxfp4_bytes = LAYERS * EXPERTS * 3 * HIDDEN * EXPERT_FF // 32 * 17
    for quant in ("Q8_0", "Q4_K_M", "F16"):
        plan = plan_for(str(src), "laptop-16gb", quant=quant)
        assert plan.expert_bytes_total == mxfp4_bytes, quant
        assert any("experts stay MXFP4" in line for line in plan.rationale)
    assert plan_for(str(src / "config.json"), "laptop-16gb", quant="Q8_0"
                    ).expert_bytes_total == mxfp4_bytes  # fmt: skip
    float_src = write_checkpoint("gptoss", tmp_path / "f")
    assert plan_for(str(float_src), "laptop-16gb", quant="Q8_0").expert_bytes_total == \
        LAYERS * EXPERTS * 3 * HIDDEN * EXPERT_FF // 32 * 34
