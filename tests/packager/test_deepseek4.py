"""DeepSeek-V4: both config and tensor namings, the GGUF llama.cpp's deepseek4 reads, the
variants refused in one line, pruning and ONNX refused naming why, the compressor state."""

from __future__ import annotations

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.unit


def _v4(**change):
    return {**CONFIGS["deepseek4"], **change}


def _transformers_naming():
    """The synthetic (released) config as transformers' save_pretrained writes it."""
    gone = ("compress_ratios", "num_hash_layers", "qk_rope_head_dim", "rope_scaling",
            "compress_rope_theta", "rope_theta")
    cfg = {k: v for k, v in _v4().items() if k not in gone}
    return cfg | {
        "layer_types": ["sliding_attention", "compressed_sparse_attention",
                        "heavily_compressed_attention"],
        "compress_rates": {"compressed_sparse_attention": 4,
                           "heavily_compressed_attention": 128},
        "mlp_layer_types": ["hash_moe", "moe", "moe"], "partial_rotary_factor": 0.5,
        "rope_parameters": {
            "main": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
            "compress": {"rope_type": "yarn", "rope_theta": 160000.0, "factor": 4.0,
                         "original_max_position_embeddings": 128, "beta_fast": 32.0,
                         "beta_slow": 1.0, "attention_factor": 1.0,
                         "partial_rotary_factor": 0.5}},
    }  # fmt: skip


def test_released_and_transformers_namings_read_the_same():
    released, saved = family_for(_v4()).config, family_for(_transformers_naming()).config
    for c in (released, saved):
        assert c.compress_ratios == (0, 4, 128)
        assert c.hash_layers == (0,)
        assert c.rope_dim == 8
        assert (c.rope.kind, c.rope.theta) == ("default", 10000.0)
        r = c.compress_rope
        assert (r.kind, r.theta, r.factor, r.original_context) == ("yarn", 160000.0, 4.0, 128)
        assert r.attention_factor == 1.0  # transformers forces it; llama.cpp cancels the scale
    assert (released.compress_key, released.hash_key) == ("compress_ratios", "num_hash_layers")
    assert (saved.compress_key, saved.hash_key) == ("compress_rates", "mlp_layer_types")
    assert family_for(_v4()).experts.moe_layers == (0, 1, 2)


def test_three_tensor_namings_map_to_one_gguf_name():
    adapter = family_for(_v4()).gguf
    same = [
        ("layers.1.attn.kv_norm.weight", "model.layers.1.attn.norm.weight",
         "model.layers.1.self_attn.kv_norm.weight", "blk.1.attn_kv_a_norm.weight"),
        ("layers.1.attn.indexer.compressor.wkv.weight",
         "model.layers.1.attn.indexer.compressor.wkv.weight",
         "model.layers.1.self_attn.compressor.indexer.kv_proj.weight",
         "blk.1.indexer_compressor_kv.weight"),
        ("layers.1.attn.indexer.weights_proj.weight",
         "model.layers.1.attn.indexer.weights_proj.weight",
         "model.layers.1.self_attn.compressor.indexer.scorer.weights_proj.weight",
         "blk.1.indexer.proj.weight"),
        ("layers.2.hc_ffn_fn", "model.layers.2.hc_ffn_fn", "model.layers.2.ffn_hc.fn",
         "blk.2.hc_ffn_fn.weight"),
        ("layers.2.ffn.gate.bias", "model.layers.2.ffn.gate.bias",
         "model.layers.2.mlp.gate.e_score_correction_bias", "blk.2.exp_probs_b.bias"),
        ("layers.0.ffn.shared_experts.w3.weight", "model.layers.0.ffn.shared_experts.w3.weight",
         "model.layers.0.mlp.shared_experts.up_proj.weight", "blk.0.ffn_up_shexp.weight"),
        ("hc_head_fn", "model.hc_head.hc_fn", "model.hc_head.hc_fn", "output_hc_fn.weight"),
        ("embed.weight", "model.embed_tokens.weight", "model.embed_tokens.weight",
         "token_embd.weight"),
    ]  # fmt: skip
    for *names, expected in same:
        assert {adapter.gguf_name(n) for n in names} == {expected}
    # imatrix hooks name a loaded model's fused experts
    assert adapter.gguf_name("model.layers.1.mlp.experts.gate_proj.weight") == \
        "blk.1.ffn_gate_exps.weight"


def test_gguf_carries_llama_cpp_deepseek4_keys_and_tensors(tmp_path):
    import gguf

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("deepseek4", tmp_path / "ck")
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path)
    field = {k.removeprefix("deepseek4."): v.contents() for k, v in reader.fields.items()}
    assert field["general.architecture"] == "deepseek4"
    assert field["attention.compress_ratios"] == [0, 4, 128]
    assert field["hash_layer_count"] == 1
    assert field["expert_gating_func"] == 4  # sqrt-softplus
    assert field["expert_weights_norm"] is True
    assert field["expert_weights_scale"] == pytest.approx(1.5)
    assert field["swiglu_clamp_exp"] == field["swiglu_clamp_shexp"] == [10.0] * 3
    assert (field["hyper_connection.count"], field["hyper_connection.sinkhorn_iterations"]) == \
        (4, 20)
    assert (field["attention.indexer.head_count"], field["attention.indexer.key_length"],
            field["attention.indexer.top_k"]) == (2, 64, 4)
    assert (field["attention.output_group_count"], field["attention.output_lora_rank"]) == (2, 8)
    assert field["attention.compress_rope_freq_base"] == pytest.approx(160000.0)
    assert (field["rope.freq_base"], field["rope.dimension_count"]) == (10000.0, 8)
    assert field["rope.scaling.factor"] == 4.0 and field["embedding_length_out"] == 4 * 32
    tensors = {t.name: t for t in reader.tensors}
    table = tensors["blk.0.ffn_gate_tid2eid.weight"]
    assert table.tensor_type == gguf.GGMLQuantizationType.I32
    got = np.asarray(table.data).reshape(-1, 2)
    assert np.array_equal(got, np.asarray(open_checkpoint(src).read("layers.0.ffn.gate.tid2eid")))
    assert "blk.0.exp_probs_b.bias" not in tensors and "blk.1.exp_probs_b.bias" in tensors
    assert "blk.0.attn_compressor_kv.weight" not in tensors  # layer 0 is sliding only
    assert "blk.1.indexer_compressor_ape.weight" in tensors
    assert "blk.2.indexer.proj.weight" not in tensors  # heavily compressed: no indexer
    assert tensors["blk.1.hc_attn_fn.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hc_mult": 2}, "'hc_mult' is 2"),
        ({"scoring_func": "sigmoid"}, "'scoring_func' is 'sigmoid'"),
        ({"compress_ratios": [0, 8, 128]}, "'compress_ratios' is 8"),
        ({"num_key_value_heads": 2}, "'num_key_value_heads' is 2"),
        ({"o_groups": 3}, "'o_groups' is 3"),
        ({"index_head_dim": 32}, "'index_head_dim' is 32.*64-wide Hadamard"),
        ({"attention_bias": True}, "'attention_bias' is True"),
        ({"rope_scaling": {"type": "longrope", "factor": 2.0}},
         "'rope_parameters.compress.rope_type' is 'longrope'"),
        ({"compress_ratios": [0, 4]}, "'compress_ratios' must list 3 layers"),
        ({"num_hash_layers": None, "mlp_layer_types": ["moe", "hash_moe", "moe"]},
         "'mlp_layer_types' is \\[1\\].*expected the first layers only"),
        ({"layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
         "field 'layer_types' must name 3 layers"),
    ],
)
def test_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for(_v4(**change)).gguf
    assert "\n" not in str(err.value)


def test_mtp_and_quantized_released_weights():
    from tests.packager.synthetic import tensor_shapes

    adapter = family_for(_v4(num_nextn_predict_layers=1)).gguf
    shapes = tensor_shapes(_v4())
    mtp = {"mtp.0.enorm.weight": (32,), "mtp.0.attn.wq_a.weight": (16, 32)}
    planned = adapter.plan(shapes | mtp, lambda n: np.zeros(1))
    assert not any("mtp" in t.name or t.name.startswith("blk.3.") for t in planned)
    with pytest.raises(UnsupportedArchitectureError, match="only multi-token-prediction"):
        adapter.plan(mtp, lambda n: np.zeros(1))
    fp8 = shapes | {"layers.1.ffn.experts.0.w1.scale": (1, 1)}
    with pytest.raises(UnsupportedArchitectureError, match="w1.scale' is a quantization scale"):
        adapter.plan(fp8, lambda n: np.zeros(1))
    no_table = {n: s for n, s in shapes.items() if "tid2eid" not in n}
    with pytest.raises(UnsupportedArchitectureError, match="layer 0 is hash-routed"):
        adapter.plan(no_table, lambda n: np.zeros(1))


def test_pruning_is_refused_because_hash_layers_fix_the_experts():
    from packager.prune import pruned_config

    with pytest.raises(Exception, match="hash-routed layers \\(num_hash_layers: layers \\[0\\]\\)"):
        pruned_config(family_for(_v4()).config, 3)
    assert pruned_config(family_for(_v4(num_hash_layers=0)).config, 3)["n_routed_experts"] == 3


def test_onnx_is_refused_naming_compressed_attention(tmp_path):
    from packager.source import open_checkpoint

    family = family_for(_v4())
    ckpt = open_checkpoint(write_checkpoint("deepseek4", tmp_path / "ck"))
    with pytest.raises(UnsupportedArchitectureError, match="compressed sparse attention") as err:
        family.check(ckpt, ("gguf", "onnx"))
    assert "\n" not in str(err.value)
    family.check(ckpt, ("gguf",))


def test_plan_and_runtime_count_the_compressor_windows(tmp_path):
    from packager.gguf_build import write_gguf
    from packager.planning import model_shape
    from packager.source import open_checkpoint
    from runtime.recurrent import recurrent_shape

    ckpt = open_checkpoint(write_checkpoint("deepseek4", tmp_path / "ck"))
    # one ratio-4 layer: 8 rows x 2 x (head 16 + indexer 64); one ratio-128 layer: 128 x 16;
    # each as keys and gate scores
    values = 2 * (8 * 2 * (16 + 64) + 128 * 16)
    assert model_shape(ckpt).recurrent_state_values == values
    shape = recurrent_shape(write_gguf(ckpt, tmp_path / "m.gguf", "F16").path)
    assert shape is not None and shape.rollback and shape.layers == (1, 2)
    assert shape.state_bytes() == 4 * values and shape.state_bytes(2) == 12 * values


@pytest.mark.engine
def test_bad_variant_pack_is_one_line_and_nothing_is_written(tmp_path):
    from tests.packager.test_bad_input import assert_clean_failure, run_pack

    src = write_checkpoint("deepseek4", tmp_path / "src", hc_mult=2)
    proc = run_pack(src, tmp_path / "out", "--quant", "F16")
    assert_clean_failure(proc, tmp_path / "out", "'hc_mult' is 2")
    assert not (tmp_path / "out").exists()


@pytest.mark.engine
@pytest.mark.reference
def test_heavily_compressed_entries_match_transformers_on_long_chunks(fixture_checkpoint, tmp_path):
    """The family table's 128-token chunks barely reach a ratio-128 entry; 260-token chunks
    attend two of them (and, per query, 4 of up to 65 ratio-4 entries the indexer ranks)."""
    from edgemoe_fixtures.corpus import calibration_text
    from packager.fidelity import gguf_logits, measure, reference_logits, token_chunks
    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    ck = fixture_checkpoint("deepseek4-tiny")
    path = write_gguf(open_checkpoint(ck), tmp_path / "f16.gguf", "F16").path
    chunks = token_chunks(ck, calibration_text(), 520, 260)
    d = measure(reference_logits(ck, chunks), gguf_logits(path, chunks), chunks)
    assert d.n_tokens == 520 and d.top1_agreement >= 0.995 and d.mean_kl <= 1e-3, d
