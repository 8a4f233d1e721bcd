"""The hybrid recurrent families (Qwen3.5-MoE): config namings, the GGUF llama.cpp reads, the
variants refused in one line, the ONNX state layout, the planner's state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.unit


def _q35(**change):
    return {**CONFIGS["qwen35moe"], **change}


def test_qwen35moe_reads_layer_kinds_from_the_list_or_the_interval():
    c = family_for(_q35()).config
    assert (c.recurrent_layers, c.attention_layers) == ((0,), (1,))
    no_list = {k: v for k, v in _q35(num_hidden_layers=8).items() if k != "layer_types"}
    c = family_for(no_list | {"full_attention_interval": 4}).config
    assert c.attention_layers == (3, 7)
    assert family_for(_q35()).experts.n_shared_experts == 1


def test_qwen35moe_v_heads_go_from_grouped_to_tiled_order():
    # 2 key heads, 2 value heads each: transformers' heads (k0v0, k0v1, k1v0, k1v1) are read by
    # ggml's broadcast as (k0, k1, k0, k1), so the order written is k0v0, k1v0, k0v1, k1v1.
    adapter = family_for(_q35()).gguf
    assert adapter.v_order(1).tolist() == [0, 2, 1, 3]
    assert adapter.v_order(2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"linear_value_head_dim": 16}, "'linear_value_head_dim' is 16"),
        ({"linear_num_value_heads": 3}, "'linear_num_value_heads' is 3"),
        ({"norm_topk_prob": False}, "'norm_topk_prob' is False"),
        ({"layer_types": ["linear_attention", "sliding_attention"]}, "'layer_types' must list"),
        ({"mlp_only_layers": [0]}, "mlp_only_layers"),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0}},
         "rope_parameters.rope_type 'longrope' is not supported"),
        ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5,
                              "mrope_section": [11, 11, 10]}}, "mrope_section"),
        ({"linear_conv_kernel_dim": None}, "missing 'linear_conv_kernel_dim'"),
    ],
)
def test_qwen35moe_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for(_q35(**change)).gguf
    assert "\n" not in str(err.value)


def test_qwen35moe_onnx_carries_conv_and_delta_rule_state_per_deltanet_layer(tmp_path):
    from packager.onnx_export.recurrent import StateSpec
    from packager.source import open_checkpoint

    family = family_for(_q35())
    assert family.onnx_missing == ""  # exported (packager/families/qwen35moe/onnx.py)
    ckpt = open_checkpoint(write_checkpoint("qwen35moe", tmp_path / "ck"))
    family.check(ckpt, ("gguf", "onnx"))
    states = family.onnx(ckpt).states()
    # Layer 0 only: conv over q 16 + k 16 + v 32 channels, (4 - 1) taps; 4 value heads of 8 x 8.
    assert states == {0: (StateSpec("conv", (64, 3)), StateSpec("ssm", (4, 8, 8)))}
    assert sum(s.values for s in states[0]) == family.gguf.recurrent_state_values()


def test_qwen35moe_mtp_weights_are_skipped_and_mtp_only_is_refused():
    from tests.packager.synthetic import tensor_shapes

    adapter = family_for(_q35(mtp_num_hidden_layers=1)).gguf
    mtp = {"mtp.fc.weight": (32, 64), "mtp.layers.0.input_layernorm.weight": (32,)}
    planned = adapter.plan(tensor_shapes(_q35()) | mtp, lambda n: np.zeros(1))
    assert not any("mtp" in t.name or t.name.startswith("blk.2.") for t in planned)
    with pytest.raises(UnsupportedArchitectureError, match="only multi-token-prediction"):
        adapter.plan(mtp | {"model.embed_tokens.weight": (16, 32)}, lambda n: np.zeros(1))


def test_qwen35moe_plan_counts_recurrent_state_and_attention_kv_only(tmp_path):
    from packager.plan.sizes import kv_cache_bytes
    from packager.planning import model_shape
    from packager.source import open_checkpoint

    shape = model_shape(open_checkpoint(write_checkpoint("qwen35moe", tmp_path / "ck")))
    assert (shape.n_layers, shape.kv_layers) == (2, 1)
    # One DeltaNet layer: conv (4 - 1) x (q 16 + k 16 + v 32) values, state 8 x 32 values.
    assert shape.recurrent_state_values == 3 * 64 + 8 * 32
    # f16 KV for 1 layer x 2 heads x (8 + 8) per token, plus the f32 state whatever the context.
    assert kv_cache_bytes(shape, 100, "f16") == 100 * 2 * 16 * 2 + 4 * (3 * 64 + 8 * 32)


@pytest.mark.engine
def test_qwen35moe_gguf_loads_in_llama_cpp_with_its_keys(tmp_path):
    import gguf
    import llama_cpp
    from llama_cpp import _internals as li

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("qwen35moe", tmp_path / "ck")
    path = write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path
    reader = gguf.GGUFReader(path)
    field = {k.removeprefix("qwen35moe."): v.contents() for k, v in reader.fields.items()}
    assert field["attention.recurrent_layers"] == [True, False]
    assert (field["ssm.conv_kernel"], field["ssm.state_size"], field["ssm.group_count"],
            field["ssm.time_step_rank"], field["ssm.inner_size"]) == (4, 8, 2, 4, 32)
    assert field["rope.dimension_count"] == 4
    assert field["rope.dimension_sections"] == [1, 1, 0, 0]
    names = {t.name: t for t in reader.tensors}
    assert {"blk.0.ssm_a", "blk.0.ssm_dt.bias", "blk.0.attn_qkv.weight",
            "blk.1.attn_gate.weight"} - set(names) == {"blk.1.attn_gate.weight"}
    a_log = np.asarray(open_checkpoint(src).read("model.layers.0.linear_attn.A_log"))
    got = np.asarray(names["blk.0.ssm_a"].data)
    assert np.allclose(got, -np.exp(a_log[[0, 2, 1, 3]]))  # A = -exp(A_log), tiled heads
    params = llama_cpp.llama_model_default_params()
    model = li.LlamaModel(path_model=str(path), params=params, verbose=False)
    try:
        assert llama_cpp.llama_model_is_hybrid(model.model)
    finally:
        model.close()


@pytest.mark.engine
@pytest.mark.parametrize(
    ("variant", "needle"),
    [
        ("mtp-only", "only multi-token-prediction weights"),
        ("dt-split", "'linear_value_head_dim' is 16"),
    ],
)
def test_qwen35moe_bad_variant_is_one_line_and_nothing_is_written(variant, needle, tmp_path):
    from safetensors.numpy import load_file, save_file

    from tests.packager.test_bad_input import assert_clean_failure, run_pack

    src = tmp_path / "src"
    if variant == "mtp-only":
        write_checkpoint("qwen35moe", src, mtp_num_hidden_layers=1)
        weights = load_file(str(src / "model.safetensors"))
        keep = {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
        only = {("mtp." + k.removeprefix("model.") if k.startswith("model.layers.") else k): v
                for k, v in weights.items() if k.startswith("model.layers.0.") or k in keep}
        save_file(only, str(src / "model.safetensors"), metadata={"format": "pt"})
    else:
        write_checkpoint("qwen35moe", src)
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps(cfg | {"linear_value_head_dim": 16}))
    proc = run_pack(src, tmp_path / "out", "--quant", "F16", "--format", "gguf")
    assert_clean_failure(proc, tmp_path / "out", needle)
    assert not (tmp_path / "out").exists()


# ----- LFM2-MoE ---------------------------------------------------------------------------------
_LFM2 = CONFIGS["lfm2moe"]


def test_lfm2moe_reads_released_and_transformers_namings():
    released = {k: v for k, v in _LFM2.items() if k != "layer_types"} | {"full_attn_idxs": [1]}
    for raw in (_LFM2, released):
        family = family_for(raw)
        c = family.config
        assert (c.conv_layers, c.moe_layers, c.rms_norm_eps) == ((0, 2), (1, 2), 1e-5)
        assert c.router_scoring == "sigmoid"
        assert family.gguf.kv_layers() == 1
        assert family.gguf.recurrent_state_values() == 2 * 32 * 2  # 2 conv layers x (L - 1) x H
    assert family_for(_LFM2).onnx_missing == ""  # exported (packager/families/lfm2moe/onnx.py)


@pytest.mark.engine
def test_lfm2moe_gguf_loads_in_llama_cpp_with_its_keys(tmp_path):
    import gguf
    import llama_cpp
    from llama_cpp import _internals as li

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("lfm2moe", tmp_path / "ck")
    path = write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path
    reader = gguf.GGUFReader(path)
    field = {k.removeprefix("lfm2moe."): v.contents() for k, v in reader.fields.items()}
    assert field["attention.head_count_kv"] == [0, 2, 0]  # conv layers keep no KV
    assert (field["shortconv.l_cache"], field["leading_dense_block_count"]) == (3, 1)
    names = {t.name for t in reader.tensors}
    assert {"blk.1.exp_probs_b.bias", "blk.0.shortconv.conv.weight", "token_embd_norm.weight",
            "blk.0.ffn_gate.weight", "blk.2.ffn_gate_exps.weight"} <= names
    assert "output.weight" not in names  # tied: llama.cpp reads the embedding
    model = li.LlamaModel(path_model=str(path), params=llama_cpp.llama_model_default_params(),
                          verbose=False)
    try:
        assert llama_cpp.llama_model_is_hybrid(model.model)
    finally:
        model.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"routed_scaling_factor": 2.5}, "'routed_scaling_factor' is 2.5"),
        ({"conv_bias": True}, "'conv_bias' is True"),
        ({"use_expert_bias": False}, "'use_expert_bias' is False"),
        ({"norm_topk_prob": False}, "'norm_topk_prob' is False"),
        ({"layer_types": ["conv", "sliding_attention", "conv"]}, "'layer_types'"),
        ({"num_dense_layers": 3}, "'num_dense_layers' is 3"),
    ],
)
def test_lfm2moe_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for({**_LFM2, **change}).gguf
    assert "\n" not in str(err.value)


def test_qwen35moe_importance_follows_the_reordered_ssm_out_columns():
    # ssm_out's input columns are the value heads, written in ggml's tiled order: the
    # importance matrix (collected in transformers' grouped order) is taken the same way.
    adapter = family_for(_q35()).gguf
    order = adapter.input_order("blk.0.ssm_out.weight")
    assert order.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23,
                              8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31]
    assert adapter.input_order("blk.0.attn_qkv.weight") is None
    assert family_for(CONFIGS["qwen3next"]).gguf.input_order("blk.0.ssm_out.weight") is None
