"""Qwen3-Next: config namings, the fused DeltaNet projections regrouped for llama.cpp, the
variants refused in one line, the ONNX state layout, the GGUF stock llama.cpp loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for
from tests.packager.synthetic import CONFIGS, tensor_shapes, write_checkpoint

pytestmark = pytest.mark.unit


def _q3n(**change):
    return {**CONFIGS["qwen3next"], **change}


def _released(**change):
    """Qwen3-Next's released config.json shape: no layer_types (every 4th layer attention),
    rope_theta and partial_rotary_factor at the top level, no MTP depth."""
    raw = {k: v for k, v in _q3n(num_hidden_layers=8).items()
           if k not in ("layer_types", "rope_parameters")}
    return raw | {"full_attention_interval": 4, "rope_theta": 10000000.0, "rope_scaling": None,
                  "partial_rotary_factor": 0.25} | change


def test_qwen3next_reads_released_and_transformers_namings():
    c = family_for(_released()).config
    assert (c.attention_layers, c.recurrent_layers) == ((3, 7), (0, 1, 2, 4, 5, 6))
    assert (c.rope.theta, c.rope_dim) == (10000000.0, 2)  # a quarter of 8
    # Neither naming given: Qwen3-Next's own default, a quarter of each head.
    no_factor = {k: v for k, v in _released().items() if k != "partial_rotary_factor"}
    assert family_for(no_factor).config.rope_dim == 2
    # transformers 5 nests it in rope_parameters, which wins over a top-level one.
    t = family_for(_q3n(partial_rotary_factor=0.25)).config
    assert (t.kinds, t.rope_dim) == (("linear_attention", "full_attention"), 4)
    assert family_for(_q3n()).experts.n_shared_experts == 1


def test_fused_qkvz_is_regrouped_into_q_k_v_and_z():
    from packager.families.qwen3next.gguf import split_qkvz

    # 2 key heads of width 2, 2 value heads of width 3 per key head, 1 input column: each row
    # holds its own label, so the order written is visible.
    head_k, v_per_key, heads = 2, 6, 2
    rows, labels = [], []
    for h in range(heads):
        for part, n in (("q", head_k), ("k", head_k), ("v", v_per_key), ("z", v_per_key)):
            labels += [(part, h, i) for i in range(n)]
    rows = np.arange(len(labels), dtype=np.float32).reshape(-1, 1)
    qkv, z = split_qkvz(rows, heads, head_k, v_per_key)
    got_qkv = [labels[int(r)] for r in qkv[:, 0]]
    want = [(p, h, i) for p, n in (("q", head_k), ("k", head_k), ("v", v_per_key))
            for h in range(heads) for i in range(n)]
    assert got_qkv == want
    assert [labels[int(r)] for r in z[:, 0]] == [("z", h, i) for h in range(heads)
                                                 for i in range(v_per_key)]


def test_qwen3next_keeps_value_heads_in_grouped_order():
    # Its graph repeat-interleaves key heads as transformers does (Qwen3.5's tiles instead).
    assert family_for(_q3n()).gguf.v_order(2).tolist() == list(range(8))
    planned = family_for(_q3n()).gguf.plan(tensor_shapes(_q3n()), lambda n: np.zeros(1))
    names = {t.name: t.shape for t in planned}
    assert names["blk.0.attn_qkv.weight"] == (64, 32)  # q 16 + k 16 + v 32 rows
    assert names["blk.0.attn_gate.weight"] == (32, 32)
    assert names["blk.0.ssm_ba.weight"] == (8, 32)
    assert not any("ssm_alpha" in n or "ssm_beta." in n for n in names)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"norm_topk_prob": False}, "'norm_topk_prob' is False"),
        ({"mlp_only_layers": [1]}, "mlp_only_layers"),
        ({"linear_num_value_heads": 3}, "'linear_num_value_heads' is 3"),
        ({"linear_value_head_dim": 16}, "'linear_value_head_dim' is 16"),
        ({"hidden_act": "gelu"}, "'hidden_act' is 'gelu'"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
         "rope_parameters.rope_type 'dynamic' is not supported"),
    ],
)
def test_qwen3next_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for(_q3n(**change)).gguf
    assert "\n" not in str(err.value)


def test_qwen3next_onnx_carries_conv_and_delta_rule_state_per_deltanet_layer(tmp_path):
    from packager.onnx_export.recurrent import StateSpec
    from packager.source import open_checkpoint

    family = family_for(_q3n())
    assert family.onnx_missing == ""  # exported (packager/families/qwen35moe/onnx.py)
    ckpt = open_checkpoint(write_checkpoint("qwen3next", tmp_path / "ck"))
    family.check(ckpt, ("gguf", "onnx"))
    states = family.onnx(ckpt).states()
    assert states == {0: (StateSpec("conv", (64, 3)), StateSpec("ssm", (4, 8, 8)))}
    assert sum(s.values for s in states[0]) == family.gguf.recurrent_state_values()


def test_qwen3next_plan_counts_its_deltanet_state():
    adapter = family_for(_q3n()).gguf
    assert adapter.kv_layers() == 1
    # One DeltaNet layer: conv (4 - 1) x (q 16 + k 16 + v 32), delta rule 8 x 32 (f32 each).
    assert adapter.recurrent_state_values() == 3 * 64 + 8 * 32


@pytest.mark.engine
def test_qwen3next_gguf_loads_in_llama_cpp_with_its_keys(tmp_path):
    import gguf
    import llama_cpp
    from llama_cpp import _internals as li

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("qwen3next", tmp_path / "ck")
    path = write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "qwen3next"
    field = {k.removeprefix("qwen3next."): v.contents() for k, v in reader.fields.items()}
    assert field["attention.recurrent_layers"] == [True, False]
    assert (field["ssm.state_size"], field["ssm.group_count"], field["ssm.time_step_rank"],
            field["ssm.inner_size"], field["rope.dimension_count"]) == (8, 2, 4, 32, 4)
    assert "rope.dimension_sections" not in field  # plain rotary, no M-RoPE
    names = {t.name: t for t in reader.tensors}
    # q of key head 1 follows q of key head 0 (rows 0..7 of head 0's qkvz block, then head 1's).
    qkvz = np.asarray(open_checkpoint(src).read("model.layers.0.linear_attn.in_proj_qkvz.weight"))
    qkv = np.asarray(names["blk.0.attn_qkv.weight"].data, dtype=np.float32)
    per_head = qkvz.shape[0] // 2
    np.testing.assert_allclose(qkv[8:16], qkvz[per_head:per_head + 8], rtol=1e-3, atol=1e-3)
    model = li.LlamaModel(path_model=str(path), params=llama_cpp.llama_model_default_params(),
                          verbose=False)
    try:
        assert llama_cpp.llama_model_is_hybrid(model.model)
    finally:
        model.close()


@pytest.mark.engine
def test_qwen3next_bad_variant_is_one_line_and_nothing_is_written(tmp_path):
    from tests.packager.test_bad_input import assert_clean_failure, run_pack

    src = write_checkpoint("qwen3next", tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg | {"mlp_only_layers": [0]}))
    proc = run_pack(src, tmp_path / "out", "--quant", "F16", "--format", "gguf")
    assert_clean_failure(proc, tmp_path / "out", "mlp_only_layers")
    assert not (tmp_path / "out").exists()


def test_qwen3next_mtp_weights_are_skipped_and_mtp_only_is_refused():
    # Released Qwen3-Next states no MTP depth; its mtp.* tensors are skipped all the same.
    adapter = family_for(_released(num_hidden_layers=2, full_attention_interval=2)).gguf
    mtp = {"mtp.fc.weight": (32, 64), "mtp.layers.0.input_layernorm.weight": (32,)}
    planned = adapter.plan(tensor_shapes(_q3n()) | mtp, lambda n: np.zeros(1))
    assert planned and not any("mtp" in t.name for t in planned)
    with pytest.raises(UnsupportedArchitectureError, match="only multi-token-prediction"):
        adapter.plan(mtp | {"model.embed_tokens.weight": (16, 32)}, lambda n: np.zeros(1))
