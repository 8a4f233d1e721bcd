"""The family registry, typed configs and GGUF tensor planning, on config + shapes alone."""

from __future__ import annotations

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for, supported_architectures

pytestmark = pytest.mark.unit


QWEN3 = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "norm_topk_prob": True,
    "vocab_size": 100,
}


def _shapes(n_layers=2, n_experts=4, proj=("gate_proj", "up_proj", "down_proj")):
    shapes = {
        "model.embed_tokens.weight": (100, 64),
        "lm_head.weight": (100, 64),
        "model.norm.weight": (64,),
    }
    for layer in range(n_layers):
        p = f"model.layers.{layer}"
        shapes[f"{p}.mlp.gate.weight"] = (n_experts, 64)
        shapes[f"{p}.input_layernorm.weight"] = (64,)
        for e in range(n_experts):
            for name in proj:
                shapes[f"{p}.mlp.experts.{e}.{name}.weight"] = (
                    (64, 32) if name == "down_proj" else (32, 64)
                )
    return shapes


def test_registry_lists_the_five_families():
    assert set(supported_architectures()) >= {
        "Qwen3MoeForCausalLM",
        "Qwen2MoeForCausalLM",
        "MixtralForCausalLM",
        "OlmoeForCausalLM",
        "DeepseekV2ForCausalLM",
    }


def test_unsupported_architecture_lists_supported_ones():
    cfg = {**QWEN3, "architectures": ["GrokForCausalLM"]}
    with pytest.raises(UnsupportedArchitectureError, match="not supported; supported: .*Qwen3Moe"):
        family_for(cfg)


def test_dense_model_is_refused_as_dense():
    cfg = {"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 2}
    with pytest.raises(UnsupportedArchitectureError, match="dense \\(non-MoE\\)"):
        family_for(cfg)


def test_config_llama_cpp_cannot_reproduce_is_refused():
    with pytest.raises(UnsupportedArchitectureError, match="norm_topk_prob"):
        _ = family_for({**QWEN3, "norm_topk_prob": False}).gguf


def test_experts_are_stacked_per_layer_in_ggml_order():
    adapter = family_for(QWEN3).gguf
    reads: list[str] = []

    def read(name: str) -> np.ndarray:
        reads.append(name)
        return np.zeros(_shapes()[name], dtype=np.float32)

    plan = {t.name: t for t in adapter.plan(_shapes(), read)}
    assert not reads, "planning must not read tensor data"
    assert plan["blk.1.ffn_gate_exps.weight"].shape == (4, 32, 64)
    assert plan["blk.1.ffn_down_exps.weight"].shape == (4, 64, 32)
    assert plan["blk.1.ffn_gate_exps.weight"].is_expert
    assert plan["blk.0.ffn_gate_inp.weight"].shape == (4, 64)
    assert {"token_embd.weight", "output.weight", "output_norm.weight"} <= set(plan)
    assert plan["blk.0.ffn_up_exps.weight"].build().shape == (4, 32, 64)


def test_missing_expert_is_reported():
    shapes = _shapes()
    del shapes["model.layers.1.mlp.experts.3.up_proj.weight"]
    with pytest.raises(UnsupportedArchitectureError, match="layer 1 up_proj"):
        family_for(QWEN3).gguf.plan(shapes, lambda n: np.zeros(1))


def test_router_and_norms_stay_f32():
    adapter = family_for(QWEN3).gguf
    assert adapter.keep_f32("blk.0.ffn_gate_inp.weight")
    assert adapter.keep_f32("blk.0.attn_norm.weight")
    assert not adapter.keep_f32("blk.0.ffn_gate_exps.weight")


def test_mixtral_interleaves_rope_halves():
    from packager.families.mixtral.gguf import interleave_heads

    w = np.arange(8, dtype=np.float32).reshape(8, 1)  # one head of 8 rows: halves [0..3],[4..7]
    out = interleave_heads(w, 1).ravel().tolist()
    assert out == [0, 4, 1, 5, 2, 6, 3, 7]


def test_ernie_expert_count_is_recognised_as_moe():
    """ERNIE-4.5 names its expert count moe_num_experts (and top-k moe_k): an MoE, not "dense";
    an architecture that is not registered is still refused as an MoE."""
    from packager.families import is_moe_config

    cfg = {"architectures": ["Ernie4_5_VLMoeForConditionalGeneration"], "moe_num_experts": 64}
    assert is_moe_config(cfg)
    with pytest.raises(UnsupportedArchitectureError, match="Ernie4_5_VLMoe.* is not supported"):
        family_for(cfg)


def test_config_is_read_once_into_a_typed_shape():
    family = family_for(QWEN3)
    c = family.config
    assert (c.n_layers, c.hidden_size, c.n_kv_heads, c.head_dim) == (2, 64, 2, 16)
    assert family.experts.n_experts == 4 and family.experts.moe_layers == (0, 1)
    assert c.rope.theta == 10000.0 and c.rope.kind == "default"
    with pytest.raises(AttributeError):
        c.n_layers = 3  # frozen


def test_both_namings_of_a_field_are_read():
    renamed = {k: v for k, v in QWEN3.items() if k != "num_experts"} | {"num_local_experts": 4}
    assert family_for(renamed).experts.n_experts == 4
    legacy = {**QWEN3, "rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 5e5}
    rope = family_for(legacy).config.rope
    assert (rope.kind, rope.factor, rope.theta, rope.field_name) == (
        "linear", 2.0, 5e5, "rope_scaling")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": "64"}, "field 'hidden_size' must be an integer, got '64'"),
        ({"num_experts_per_tok": None}, "missing 'num_experts_per_tok'"),
        ({"mlp_only_layers": "0"}, "field 'mlp_only_layers' must be a list of integers"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
         "rope_parameters.rope_type 'dynamic' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
         "missing 'rope_parameters.original_max_position_embeddings'"),
    ],
)
def test_bad_config_fields_are_named_in_one_line(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for({**QWEN3, **change}).gguf
    assert "\n" not in str(err.value)


# ----- DeepSeek-V3: the worked example of a family (tests/packager/synthetic.py's config) -------
def _v3(**change):
    from tests.packager.synthetic import CONFIGS

    return {**CONFIGS["deepseek3"], **change}


def test_deepseek3_reads_released_and_transformers_namings():
    gone = ("n_routed_experts", "rope_parameters", "num_nextn_predict_layers")
    released = {k: v for k, v in _v3().items() if k not in gone}
    released |= {"num_local_experts": 4, "num_mtp_layers": 1, "rope_theta": 5e4,
                 "rope_scaling": {"type": "yarn", "factor": 4.0,
                                  "original_max_position_embeddings": 128,
                                  "mscale_all_dim": 0.7}}  # fmt: skip
    c = family_for(released).config
    assert (c.n_experts, c.mtp_layers, c.mtp_key) == (4, 1, "num_mtp_layers")
    assert (c.rope.kind, c.rope.theta, c.rope.mscale_all_dim) == ("yarn", 5e4, 0.7)
    assert (c.scoring_func, c.topk_method, c.router_scoring) == ("sigmoid", "noaux_tc", "sigmoid")
    assert family_for(_v3()).experts.moe_layers == (1,)  # first_k_dense_replace=1


def test_deepseek3_gguf_carries_the_v3_router(tmp_path):
    import gguf

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint
    from tests.packager.synthetic import write_checkpoint

    src = write_checkpoint("deepseek3", tmp_path / "ck", mtp="with")
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path)
    field = {k.removeprefix("deepseek2."): v.contents() for k, v in reader.fields.items()}
    assert field["expert_gating_func"] == gguf.ExpertGatingFuncType.SIGMOID
    assert (field["expert_group_count"], field["expert_group_used_count"]) == (2, 1)
    assert field["expert_weights_norm"] is True
    assert field["expert_weights_scale"] == pytest.approx(2.5)
    assert field["rope.scaling.yarn_log_multiplier"] == pytest.approx(0.1)
    names = {t.name for t in reader.tensors}
    assert "blk.1.exp_probs_b.bias" in names
    assert not any(n.startswith("blk.2.") for n in names)  # the MTP block is not written
    assert field["block_count"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scoring_func": "softmax"}, "'scoring_func' is 'softmax'"),
        ({"topk_method": "greedy"}, "'topk_method' is 'greedy'"),
        ({"rope_interleave": False}, "'rope_interleave' is False"),
        ({"attention_bias": True}, "'attention_bias' is True"),
        ({"n_group": 3}, "n_group=3 must split the 4 experts"),
        ({"topk_group": 3}, "'topk_group' is 3"),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0}},
         "rope_parameters.rope_type 'longrope' is not supported"),
    ],
)
def test_deepseek3_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for(_v3(**change)).gguf
    assert "\n" not in str(err.value)


def test_deepseek3_mtp_layers_are_skipped_and_mtp_only_is_refused():
    from tests.packager.synthetic import mtp_shapes, tensor_shapes

    adapter = family_for(_v3(num_nextn_predict_layers=1)).gguf
    shapes = tensor_shapes(_v3()) | mtp_shapes(_v3())
    planned = adapter.plan(shapes, lambda n: np.zeros(1))
    assert {t.name.split(".")[1] for t in planned if t.name.startswith("blk.")} == {"0", "1"}
    with pytest.raises(UnsupportedArchitectureError, match="num_nextn_predict_layers=1"):
        adapter.plan(mtp_shapes(_v3()), lambda n: np.zeros(1))
    undeclared = family_for(_v3()).gguf  # num_nextn_predict_layers=0
    with pytest.raises(UnsupportedArchitectureError, match="has layer 2 but config.json"):
        undeclared.plan(shapes, lambda n: np.zeros(1))


# ----- DeepSeek-V2's group-limited router ----------------------------------------------------
def _v2(**change):
    from tests.packager.synthetic import CONFIGS

    return {**CONFIGS["deepseek2"], **change}


def _group_fields(cfg, tmp_path) -> dict:
    import gguf

    w = gguf.GGUFWriter(tmp_path / "kv.gguf", "deepseek2")
    family_for(cfg).gguf.write_hparams(w)
    return {k.removeprefix("deepseek2."): v.value for k, v in w.kv_data[0].items()
            if "group" in k}  # fmt: skip


def test_deepseek2_group_limited_greedy_is_refused_naming_the_field():
    # transformers' V2 ranks groups by their best score, llama.cpp by their best two's sum.
    cfg = _v2(topk_method="group_limited_greedy", n_group=2, topk_group=1)
    with pytest.raises(UnsupportedArchitectureError, match="'topk_method' is 'group_limited_greedy'"
                       r" \(n_group=2, topk_group=1\).*two best") as err:  # fmt: skip
        _ = family_for(cfg).gguf
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "cfg",
    [
        _v2(topk_method="group_limited_greedy", n_group=2, topk_group=2),  # every group kept
        _v2(topk_method="greedy", n_group=2, topk_group=1),  # transformers ignores the groups
        _v3(n_group=2, topk_group=2),  # llama.cpp aborts unless fewer groups are used than exist
    ],
)
def test_expert_groups_are_written_only_where_llama_cpp_should_mask_them(cfg, tmp_path):
    assert _group_fields(cfg, tmp_path) == {}


def test_expert_groups_are_written_for_v3_and_as_read_when_single(tmp_path):
    assert _group_fields(_v3(), tmp_path) == {
        "expert_group_count": 2, "expert_group_used_count": 1}  # fmt: skip
    assert _group_fields(_v2(), tmp_path) == {  # n_group=1: nothing is grouped
        "expert_group_count": 1, "expert_group_used_count": 1}  # fmt: skip
# ----- GLM-4.5 MoE ------------------------------------------------------------------------------
def _glm(**change):
    from tests.packager.synthetic import CONFIGS

    return {**CONFIGS["glm4moe"], **change}


def test_glm4moe_reads_released_and_transformers_namings():
    """Released configs keep partial_rotary_factor and rope_theta at the top level (0.5 when
    absent) and may call the expert count num_local_experts; transformers 5 nests the rotary
    fields in rope_parameters."""
    gone = ("rope_parameters", "n_routed_experts", "num_nextn_predict_layers")
    released = {k: v for k, v in _glm().items() if k not in gone}
    released |= {"num_local_experts": 4, "rope_theta": 1e6, "num_mtp_layers": 1}
    c = family_for(released).config
    assert (c.n_experts, c.partial_rotary_factor, c.rotary_dim, c.rope.theta) == (4, 0.5, 4, 1e6)
    assert (c.mtp_layers, c.mtp_key) == (1, "num_mtp_layers")
    quarter = family_for({**released, "partial_rotary_factor": 0.25}).config
    assert quarter.rotary_dim == 2
    c = family_for(_glm()).config
    assert (c.router_scoring, c.n_shared_experts, c.experts.moe_layers) == ("sigmoid", 1, (1,))


def test_glm4moe_gguf_carries_its_router_and_skips_the_nextn_layer(tmp_path):
    import gguf

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint
    from tests.packager.synthetic import write_checkpoint

    src = write_checkpoint("glm4moe", tmp_path / "ck", mtp="with")
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path)
    field = {k.removeprefix("glm4moe."): v.contents() for k, v in reader.fields.items()}
    assert field["expert_gating_func"] == gguf.ExpertGatingFuncType.SIGMOID
    assert (field["expert_group_count"], field["expert_group_used_count"]) == (2, 1)
    assert field["expert_weights_norm"] is True
    assert field["expert_weights_scale"] == pytest.approx(2.5)
    assert (field["rope.dimension_count"], field["attention.key_length"]) == (4, 8)
    assert (field["leading_dense_block_count"], field["expert_shared_count"]) == (1, 1)
    assert field["block_count"] == 2 and "nextn_predict_layers" not in field
    names = {t.name for t in reader.tensors}
    assert {"blk.1.exp_probs_b.bias", "blk.1.post_attention_norm.weight",
            "blk.1.ffn_gate_shexp.weight", "blk.0.attn_q.bias", "blk.0.attn_k_norm.weight",
            "blk.0.ffn_gate.weight"} <= names  # fmt: skip
    assert not any(n.startswith("blk.2.") for n in names)  # the NextN block is not written


def test_glm4moe_keeping_every_group_writes_no_group_keys(tmp_path):
    """topk_group == n_group keeps every group (no-op in transformers); llama.cpp asserts fewer
    used groups than groups, so no group keys are written."""
    import gguf

    from packager.families.expert_groups import limits_groups

    assert limits_groups(family_for(_glm()).config)
    assert not limits_groups(family_for(_glm(topk_group=2)).config)
    assert not limits_groups(family_for(_glm(n_group=1)).config)
    w = gguf.GGUFWriter(tmp_path / "x.gguf", "glm4moe")
    family_for(_glm(topk_group=2)).gguf.write_hparams(w)
    assert not any("group" in k for k in w.kv_data[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_shared_experts": 0}, "'n_shared_experts' is 0"),
        ({"n_group": 3}, "n_group=3 must split the 4 experts"),
        ({"topk_group": 3}, "'topk_group' is 3"),
        ({"first_k_dense_replace": 2}, "'first_k_dense_replace' is 2"),
        ({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.1}},
         "partial_rotary_factor=0.1 gives 0 rotary dims"),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0}},
         "rope_parameters.rope_type 'longrope' is not supported"),
    ],
)
def test_glm4moe_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for(_glm(**change)).gguf
    assert "\n" not in str(err.value)


def test_glm4moe_nextn_only_checkpoint_is_refused():
    from tests.packager.synthetic import mtp_shapes

    adapter = family_for(_glm(num_nextn_predict_layers=1)).gguf
    with pytest.raises(UnsupportedArchitectureError, match="only multi-token-prediction"):
        adapter.plan(mtp_shapes(_glm()), lambda n: np.zeros(1))


# ----- ERNIE-4.5-MoE ----------------------------------------------------------------------------
def _ernie(**change):
    from tests.packager.synthetic import CONFIGS

    return {**CONFIGS["ernie45moe"], **change}


def test_ernie45moe_reads_its_own_names():
    c = family_for(_ernie()).config
    assert (c.n_experts, c.top_k, c.n_shared_experts, c.shared_intermediate_size) == (4, 2, 2, 64)
    assert c.experts.moe_layers == (1,) and c.rope.theta == 500000.0
    renamed = {k: v for k, v in _ernie().items() if k not in ("moe_num_experts", "moe_k")}
    renamed |= {"num_experts": 4, "num_experts_per_tok": 2}
    assert family_for(renamed).experts.n_experts == 4
    # transformers' defaults for what a config leaves out: theta 500000, end -1 (the last layer)
    bare = {k: v for k, v in _ernie().items()
            if k not in ("rope_parameters", "moe_layer_end_index")}  # fmt: skip
    assert family_for(bare).config.rope.theta == 500000.0
    assert family_for(bare).experts.moe_layers == (1,)
    pruned = family_for(_ernie()).config.with_experts(1)
    assert (pruned["moe_num_experts"], pruned["moe_k"]) == (1, 1)
    assert "num_experts_per_tok" not in pruned


def test_ernie45moe_gguf_carries_its_layout(tmp_path):
    import gguf

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint
    from tests.packager.synthetic import write_checkpoint

    src = write_checkpoint("ernie45moe", tmp_path / "ck", mtp="with")
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path)
    field = {k.removeprefix("ernie4_5-moe."): v.contents() for k, v in reader.fields.items()}
    assert (field["expert_count"], field["expert_used_count"]) == (4, 2)
    assert (field["leading_dense_block_count"], field["interleave_moe_layer_step"]) == (1, 1)
    assert (field["expert_shared_count"], field["expert_shared_feed_forward_length"]) == (2, 64)
    assert field["expert_gating_func"] == gguf.ExpertGatingFuncType.SOFTMAX
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors["blk.1.exp_probs_b.bias"].shape) == [4]  # [1, E] written as [E]
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert not any("mtp" in n or n.startswith("blk.2.") for n in tensors)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"moe_layer_interval": 2}, "'moe_layer_interval' is 2"),
        ({"moe_layer_end_index": 0}, "'moe_layer_end_index' is 0"),
        ({"moe_layer_start_index": 2}, "'moe_layer_start_index' is 2"),
        ({"use_bias": True}, "'use_bias' is True"),
        ({"moe_k": "two"}, "field 'moe_k' must be an integer"),
    ],
)
def test_ernie45moe_variants_llama_cpp_cannot_run_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError, match=message) as err:
        _ = family_for(_ernie(**change)).gguf
    assert "\n" not in str(err.value)


def test_ernie45moe_mtp_only_and_multimodal_routers_are_refused():
    from tests.packager.synthetic import mtp_shapes, tensor_shapes

    adapter = family_for(_ernie(num_nextn_predict_layers=1)).gguf
    with pytest.raises(UnsupportedArchitectureError, match="only multi-token-prediction"):
        adapter.plan(mtp_shapes(_ernie()), lambda n: np.zeros(1))
    two_rows = {**tensor_shapes(_ernie()),
                "model.layers.1.mlp.moe_statics.e_score_correction_bias": (2, 4)}  # fmt: skip
    with pytest.raises(UnsupportedArchitectureError, match="2 rows .one per modality"):
        adapter.plan(two_rows, lambda n: np.zeros(1))
