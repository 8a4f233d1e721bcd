"""Adapter registry and tensor planning, checked on config + shapes alone (no weights)."""

from __future__ import annotations

import numpy as np
import pytest

from packager.archs import adapter_for, supported_architectures
from packager.errors import UnsupportedArchitectureError

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
        adapter_for(cfg)


def test_dense_model_is_refused_as_dense():
    cfg = {"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 2}
    with pytest.raises(UnsupportedArchitectureError, match="dense \\(non-MoE\\)"):
        adapter_for(cfg)


def test_config_llama_cpp_cannot_reproduce_is_refused():
    with pytest.raises(UnsupportedArchitectureError, match="norm_topk_prob"):
        adapter_for({**QWEN3, "norm_topk_prob": False})


def test_experts_are_stacked_per_layer_in_ggml_order():
    adapter = adapter_for(QWEN3)
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
        adapter_for(QWEN3).plan(shapes, lambda n: np.zeros(1))


def test_router_and_norms_stay_f32():
    adapter = adapter_for(QWEN3)
    assert adapter.keep_f32("blk.0.ffn_gate_inp.weight")
    assert adapter.keep_f32("blk.0.attn_norm.weight")
    assert not adapter.keep_f32("blk.0.ffn_gate_exps.weight")


def test_mixtral_interleaves_rope_halves():
    from packager.archs.mixtral import _interleave_heads

    w = np.arange(8, dtype=np.float32).reshape(8, 1)  # one head of 8 rows: halves [0..3],[4..7]
    out = _interleave_heads(w, 1).ravel().tolist()
    assert out == [0, 4, 1, 5, 2, 6, 3, 7]
