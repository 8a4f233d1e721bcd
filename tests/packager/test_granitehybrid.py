"""Granite-4.0-H: released and transformers namings, the Granite multipliers and Mamba2 shape
written as llama.cpp reads them, the variants its graph computes differently refused in one line,
the GGUF stock llama.cpp loads, the position-embedding switch agreeing with transformers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.unit


def _granite(**change):
    return {**CONFIGS["granitehybrid"], **change}


def test_granite_reads_released_and_transformers_namings():
    released = _granite()  # "mamba" / "attention", no time_step_limit, d_head given
    saved = _granite(layer_types=["linear_attention", "full_attention"], mamba_d_head="auto",
                     time_step_limit=[0.0, {"__float__": "Infinity"}])
    older = {k: v for k, v in _granite().items() if k != "layer_types"} | {
        "layers_block_type": ["mamba", "attention"], "time_step_limit": [0.0, "Infinity"]}
    for raw in (released, saved, older):
        c = family_for(raw).config
        assert (c.mamba_layers, c.attention_layers) == ((0,), (1,))
        assert (c.mamba_head_dim, c.d_inner, c.time_step_limit) == (16, 64, (0.0, math.inf))
        assert c.moe_intermediate_size == c.intermediate_size == 32
    family = family_for(released)
    assert family.experts.n_shared_experts == 1 and family.experts.moe_layers == (0, 1)
    assert family.onnx_missing == ""  # exported (packager/families/granitehybrid/onnx.py)


def test_granite_state_and_kv_are_llama_cpps():
    adapter = family_for(_granite()).gguf
    assert adapter.kv_layers() == 1 and adapter.n_head_kv() == [0, 2]
    # One Mamba2 layer: conv (4 - 1) x (x 64 + B, C 2 x 2 groups x 8), SSM 8 x 64 (f32 each).
    assert adapter.recurrent_state_values() == 3 * (64 + 2 * 2 * 8) + 8 * 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mamba_expand": 1}, "'mamba_expand' is 1.0"),
        ({"mamba_proj_bias": True}, "'mamba_proj_bias' is True"),
        ({"time_step_limit": [0.001, 100.0]}, "'time_step_limit' is [0.001, 100.0]"),
        ({"attention_bias": True}, "'attention_bias' is True"),
        ({"position_embedding_type": "alibi"}, "'position_embedding_type' is 'alibi'"),
        ({"num_local_experts": 0}, "'num_local_experts' is 0"),
        ({"mamba_d_head": 8}, "'mamba_d_head' is 8"),
        ({"mamba_n_groups": 3}, "'mamba_n_groups' is 3"),
        ({"layer_types": ["mamba", "sliding_attention"]}, "'layer_types' must list"),
        ({"time_step_limit": "wide"}, "'time_step_limit' must be two numbers"),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0}},
         "rope_parameters.rope_type 'longrope' is not supported"),
    ],
)
def test_granite_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message.replace("[", r"\[")) as err:
        _ = family_for(_granite(**change)).gguf
    assert "\n" not in str(err.value)


@pytest.mark.engine
@pytest.mark.parametrize("conv_bias", [True, False])
def test_granite_gguf_loads_in_llama_cpp_with_its_keys(conv_bias, tmp_path):
    import gguf
    import llama_cpp
    from llama_cpp import _internals as li
    from safetensors.numpy import load_file, save_file

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("granitehybrid", tmp_path / "ck", mamba_conv_bias=conv_bias)
    if not conv_bias:
        weights = load_file(str(src / "model.safetensors"))
        save_file({k: v for k, v in weights.items() if not k.endswith("conv1d.bias")},
                  str(src / "model.safetensors"), metadata={"format": "pt"})
    path = write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path
    reader = gguf.GGUFReader(path)
    field = {k.removeprefix("granitehybrid."): v.contents() for k, v in reader.fields.items()}
    assert field["attention.head_count_kv"] == [0, 2]  # the Mamba2 layer keeps no KV
    assert field["rope.scaling.finetuned"] is False  # "nope": no rotary in llama.cpp either
    assert (field["embedding_scale"], field["attention.scale"], field["residual_scale"],
            field["logit_scale"]) == pytest.approx((12.0, 0.125, 0.22, 6.0))
    assert (field["ssm.conv_kernel"], field["ssm.state_size"], field["ssm.group_count"],
            field["ssm.inner_size"], field["ssm.time_step_rank"]) == (4, 8, 2, 64, 4)
    names = {t.name: t for t in reader.tensors}
    assert tuple(names["blk.0.ssm_norm.weight"].shape) == (32, 2)  # ggml order: [d/g, groups]
    assert tuple(names["blk.0.ssm_a"].shape) == (1, 4)
    fused = np.asarray(
        open_checkpoint(src).read("model.layers.1.block_sparse_moe.input_linear.weight"))
    up = np.asarray(names["blk.1.ffn_up_exps.weight"].data, dtype=np.float32)
    np.testing.assert_allclose(up, fused[:, 32:, :], rtol=1e-3, atol=1e-3)  # up: second half
    bias = np.asarray(names["blk.0.ssm_conv1d.bias"].data)
    assert bias.shape == (96,) and (bias.any() if conv_bias else not bias.any())
    model = li.LlamaModel(path_model=str(path), params=llama_cpp.llama_model_default_params(),
                          verbose=False)
    try:
        assert llama_cpp.llama_model_is_hybrid(model.model)
    finally:
        model.close()


@pytest.mark.engine
@pytest.mark.reference
def test_granite_without_rotary_matches_transformers(fixture_checkpoint, tmp_path):
    """The fixture has rotary (its fidelity is in test_pack_fidelity); released Granite-4.0-H
    has none. The same weights without it: llama.cpp must not rotate either (with rotary the
    reference moves by KL 1.3e-5 here; without, the GGUF agrees to 1e-7)."""
    import shutil

    from edgemoe_fixtures.corpus import heldout_text
    from packager.fidelity import gguf_logits, measure, reference_logits, token_chunks
    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    ck = tmp_path / "nope"
    shutil.copytree(fixture_checkpoint("granitehybrid-tiny"), ck)
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps(cfg | {"position_embedding_type": "nope"}))
    path = write_gguf(open_checkpoint(ck), tmp_path / "m.gguf", "F32").path
    chunks = token_chunks(ck, heldout_text(), n_tokens=256, chunk=128)
    d = measure(reference_logits(ck, chunks), gguf_logits(path, chunks), chunks)
    assert d.top1_agreement >= 0.995 and d.mean_kl <= 1e-6, d


@pytest.mark.engine
def test_granite_bad_variant_is_one_line_and_nothing_is_written(tmp_path):
    from tests.packager.test_bad_input import assert_clean_failure, run_pack

    src = write_checkpoint("granitehybrid", tmp_path / "src", mamba_expand=1)
    proc = run_pack(src, tmp_path / "out", "--quant", "F16", "--format", "gguf")
    assert_clean_failure(proc, tmp_path / "out", "'mamba_expand' is 1.0")
    assert not (tmp_path / "out").exists()


def test_granite_onnx_carries_conv_and_ssm_state_per_mamba2_layer(tmp_path):
    from packager.onnx_export.recurrent import StateSpec
    from packager.source import open_checkpoint

    family = family_for(_granite())
    ckpt = open_checkpoint(write_checkpoint("granitehybrid", tmp_path / "ck"))
    family.check(ckpt, ("gguf", "onnx"))
    states = family.onnx(ckpt).states()
    # Layer 0 only: conv over x 64 + B, C 2 x 2 groups x 8, (4 - 1) taps; 4 heads of 16 x 8.
    assert states == {0: (StateSpec("conv", (96, 3)), StateSpec("ssm", (4, 16, 8)))}
    assert sum(s.values for s in states[0]) == family.gguf.recurrent_state_values()


def test_granite_zero_width_shared_mlp_writes_none():
    from tests.packager.synthetic import tensor_shapes

    cfg = _granite(shared_intermediate_size=0)
    shapes = {n: ((0, 32) if "shared_mlp.input" in n else (32, 0) if "shared_mlp.output" in n
                  else s) for n, s in tensor_shapes(_granite()).items()}
    planned = family_for(cfg).gguf.plan(shapes, lambda n: np.zeros(1))
    assert not any("shexp" in t.name for t in planned)
    assert family_for(cfg).experts.n_shared_experts == 0
