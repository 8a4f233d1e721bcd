"""MiMo-V2-Flash: both config namings, the GGUF llama.cpp's mimo2 reads, the variants refused in
one line, the ONNX adapter's per-layer caches and refusals, MTP blocks skipped."""

from __future__ import annotations

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.unit


def _m(**change):
    return {**CONFIGS["mimo2"], **change}


def _transformers_naming():
    """The synthetic (released) config as transformers' MiMoV2FlashConfig saves it."""
    gone = ("hybrid_layer_pattern", "swa_num_key_value_heads", "swa_head_dim", "swa_v_head_dim",
            "swa_num_attention_heads", "moe_layer_freq", "sliding_window_size", "rope_theta",
            "swa_rope_theta", "partial_rotary_factor", "layernorm_epsilon")
    cfg = {k: v for k, v in _m().items() if k not in gone}
    return cfg | {
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
        "mlp_layer_types": ["dense", "sparse", "sparse"], "sliding_window": 9,
        "rms_norm_eps": 1e-5, "routed_scaling_factor": 1.0,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 5000000.0,
                               "partial_rotary_factor": 0.334},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0,
                                  "partial_rotary_factor": 0.334}},
    }  # fmt: skip


def test_released_and_transformers_namings_read_the_same():
    released, saved = family_for(_m()).config, family_for(_transformers_naming()).config
    for c in (released, saved):
        assert c.sliding_layers == (1, 2) and c.sparse_layers == (1, 2)
        assert (c.n_kv_heads, c.swa_kv_heads) == (1, 2)
        assert c.sliding_window == 9  # 8 previous tokens and the query
        assert (c.full_theta, c.swa_theta, c.rotary_dim) == (5000000.0, 10000.0, 4)
        assert (c.rms_norm_eps, c.value_scale, c.routed_scaling_factor) == (1e-5, 0.707, 1.0)
    assert family_for(_m()).experts.moe_layers == (1, 2)
    # transformers' defaults: sliding except the first layer and every 6th, first layer dense
    bare = {k: v for k, v in _transformers_naming().items()
            if k not in ("layer_types", "mlp_layer_types")} | {"num_hidden_layers": 8}
    c = family_for(bare).config
    assert c.sliding_layers == (1, 2, 3, 4, 6, 7) and c.sparse_layers == tuple(range(1, 8))
    assert family_for(_m(attention_value_scale=None)).config.value_scale == 1.0


def test_gguf_carries_llama_cpp_mimo2_keys_and_tensors(tmp_path):
    import gguf

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("mimo2", tmp_path / "ck")
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path)
    field = {k.removeprefix("mimo2."): v.contents() for k, v in reader.fields.items()}
    assert field["attention.head_count_kv"] == [1, 2, 2]
    assert field["attention.sliding_window_pattern"] == [False, True, True]
    assert field["attention.sliding_window"] == 9
    assert (field["attention.key_length"], field["attention.value_length"]) == (12, 8)
    assert (field["rope.dimension_count"], field["rope.freq_base"],
            field["rope.freq_base_swa"]) == (4, 5000000.0, 10000.0)
    assert field["attention.value_scale"] == pytest.approx(0.707)
    assert (field["expert_group_count"], field["expert_group_used_count"]) == (2, 1)
    names = {t.name for t in reader.tensors}
    assert {"blk.1.attn_sinks.weight", "blk.1.exp_probs_b.bias", "blk.0.ffn_gate.weight"} <= names
    assert "blk.0.attn_sinks.weight" not in names and "blk.0.ffn_gate_inp.weight" not in names


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"swa_head_dim": 16}, "'swa_head_dim' is 16"),
        ({"swa_v_head_dim": 12}, "'swa_v_head_dim' is 12"),
        ({"routed_scaling_factor": 2.5}, "'routed_scaling_factor' is 2.5"),
        ({"norm_topk_prob": False}, "'norm_topk_prob' is False"),
        ({"topk_method": "greedy"}, "'topk_method' is 'greedy'"),
        ({"scoring_func": "softmax"}, "'scoring_func' is 'softmax'"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}},
         "'rope_parameters.full_attention.rope_type' is 'yarn'"),
        ({"n_group": 3}, "n_group=3 must split the 4 experts"),
        ({"hybrid_layer_pattern": [0, 1]}, "'hybrid_layer_pattern' must list 3 layers"),
        ({"attention_bias": True}, "'attention_bias' is True"),
    ],
)
def test_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for(_m(**change)).gguf
    assert "\n" not in str(err.value)


def test_mtp_blocks_are_skipped_and_mtp_only_is_refused():
    from tests.packager.synthetic import tensor_shapes

    adapter = family_for(_m()).gguf
    mtp = {"model.mtp.layers.0.self_attn.q_proj.weight": (48, 32),
           "model.mtp.layers.0.enorm.weight": (32,)}
    planned = adapter.plan(tensor_shapes(_m()) | mtp, lambda n: np.zeros(1))
    assert not any("mtp" in t.name or t.name.startswith("blk.3.") for t in planned)
    with pytest.raises(UnsupportedArchitectureError, match="only multi-token-prediction"):
        adapter.plan(mtp | {"model.embed_tokens.weight": (16, 32)}, lambda n: np.zeros(1))


def test_onnx_caches_each_layer_kind_at_its_width_and_refuses_other_widths(tmp_path):
    from packager.source import open_checkpoint

    ckpt = open_checkpoint(write_checkpoint("mimo2", tmp_path / "ck"))
    family = family_for(_m())
    family.check(ckpt, ("gguf", "onnx"))
    # The full layer caches 1 KV head, the sliding ones 2; Q/K 12 wide, V 8.
    assert family.onnx(ckpt).kv_layouts() == ((1, 12, 8), (2, 12, 8), (2, 12, 8))
    for change, message in (({"swa_head_dim": 16}, "swa_head_dim=16 differs from 12"),
                            ({"scoring_func": "softmax"}, "scoring_func 'softmax'")):
        with pytest.raises(UnsupportedArchitectureError, match=message) as err:
            family_for(_m(**change)).onnx(ckpt)
        assert "(ONNX export)" in str(err.value) and "\n" not in str(err.value)


def test_pruning_keeps_two_experts_in_every_group():
    from packager.prune import pruned_config

    with pytest.raises(Exception, match="leaves 1 per group of n_group=2"):
        pruned_config(family_for(_m()).config, 2)
    assert pruned_config(family_for(_m()).config, 4)["n_routed_experts"] == 4


@pytest.mark.engine
def test_bad_variant_pack_is_one_line_and_nothing_is_written(tmp_path):
    from tests.packager.test_bad_input import assert_clean_failure, run_pack

    src = write_checkpoint("mimo2", tmp_path / "src", swa_v_head_dim=12)
    proc = run_pack(src, tmp_path / "out", "--quant", "F16")
    assert_clean_failure(proc, tmp_path / "out", "'swa_v_head_dim' is 12")
    assert not (tmp_path / "out").exists()
