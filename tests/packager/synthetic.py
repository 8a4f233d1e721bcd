"""Checkpoints written with numpy alone (seeded), for golden-byte tests of the packager.

The fixtures in `edgemoe_fixtures` are trained by torch and tokenized from Python's own sources,
so their bytes differ between machines; these do not: a fixed config, a fixed byte-level
tokenizer and PCG64 weights give the same safetensors everywhere, hence the same bundle bytes
from the same packager code. The tensor names are written out here, independently of the
packager's family descriptions, so a test built on them notices when a family's mapping moves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, TOP_K, EXPERT_FF, DENSE_FF = 32, 4, 2, 8, 4, 2, 32, 64
LAYERS = 2
_MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"))
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS = 256 + len(_MERGES)
VOCAB = EOS + len(_SPECIALS)

_BASE: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "num_experts_per_tok": TOP_K,
    "intermediate_size": DENSE_FF,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "vocab_size": VOCAB,
    "eos_token_id": EOS,
    "bos_token_id": None,
}

CONFIGS: dict[str, dict[str, Any]] = {
    "qwen3moe": {**_BASE, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
                 "num_experts": EXPERTS, "moe_intermediate_size": EXPERT_FF,
                 "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []},
    "qwen2moe": {**_BASE, "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
                 "num_experts": EXPERTS, "moe_intermediate_size": EXPERT_FF,
                 "shared_expert_intermediate_size": 64, "norm_topk_prob": False,
                 "decoder_sparse_step": 1, "mlp_only_layers": []},
    "mixtral": {**_BASE, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "num_local_experts": EXPERTS, "intermediate_size": EXPERT_FF},
    "olmoe": {**_BASE, "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
              "num_key_value_heads": HEADS, "num_experts": EXPERTS,
              "intermediate_size": EXPERT_FF, "norm_topk_prob": False},
    "deepseek2": {**_BASE, "architectures": ["DeepseekV2ForCausalLM"],
                  "model_type": "deepseek_v2", "num_key_value_heads": HEADS, "q_lora_rank": 32,
                  "kv_lora_rank": 32, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
                  "v_head_dim": 8, "n_routed_experts": EXPERTS, "n_shared_experts": 1,
                  "first_k_dense_replace": 1, "moe_intermediate_size": EXPERT_FF,
                  "n_group": 1, "topk_group": 1, "topk_method": "greedy",
                  "routed_scaling_factor": 1.0, "norm_topk_prob": False},
}
# DeepSeek-V4 as the released checkpoints name it (config and tensors): compress_ratios,
# num_hash_layers, qk_rope_head_dim, rope_scaling + compress_rope_theta; `layers.N.attn.wq_a`.
CONFIGS["deepseek4"] = {
    **{k: v for k, v in _BASE.items() if k not in ("intermediate_size", "rope_parameters")},
    "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
    "num_hidden_layers": 3, "num_key_value_heads": 1, "head_dim": 16, "qk_rope_head_dim": 8,
    "q_lora_rank": 16, "n_routed_experts": EXPERTS, "n_shared_experts": 1,
    "moe_intermediate_size": EXPERT_FF, "scoring_func": "sqrtsoftplus", "norm_topk_prob": True,
    "routed_scaling_factor": 1.5, "swiglu_limit": 10.0, "compress_ratios": [0, 4, 128],
    "num_hash_layers": 1, "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
    "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                     "beta_fast": 32, "beta_slow": 1},
    "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "sliding_window": 16,
    "o_groups": 2, "o_lora_rank": 8, "index_n_heads": 2, "index_head_dim": 64,
    "index_topk": 4, "num_nextn_predict_layers": 0,
}  # fmt: skip


# MiMo-V2-Flash as the released checkpoint's config names it: hybrid_layer_pattern,
# swa_num_key_value_heads, swa_rope_theta, sliding_window_size, layernorm_epsilon.
CONFIGS["mimo2"] = {
    **{k: v for k, v in _BASE.items() if k not in ("rope_parameters", "rms_norm_eps")},
    "architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash",
    "num_hidden_layers": 3, "num_key_value_heads": 1, "swa_num_key_value_heads": 2,
    "head_dim": 12, "v_head_dim": 8, "swa_head_dim": 12, "swa_v_head_dim": 8,
    "swa_num_attention_heads": HEADS, "hybrid_layer_pattern": [0, 1, 1],
    "moe_layer_freq": [0, 1, 1], "sliding_window_size": 8, "rope_theta": 5000000.0,
    "swa_rope_theta": 10000.0, "partial_rotary_factor": 0.334, "layernorm_epsilon": 1e-5,
    "attention_value_scale": 0.707, "n_routed_experts": EXPERTS,
    "moe_intermediate_size": EXPERT_FF, "n_group": 2, "topk_group": 1, "norm_topk_prob": True,
    "routed_scaling_factor": None, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
}  # fmt: skip


CONFIGS["deepseek3"] = {  # V3 names no topk_method: its router is always noaux_tc
    **{k: v for k, v in CONFIGS["deepseek2"].items() if k != "topk_method"},
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3", "n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5,
    "norm_topk_prob": True, "rope_interleave": True, "num_nextn_predict_layers": 0,
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                        "original_max_position_embeddings": 128, "beta_fast": 32.0,
                        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
}
CONFIGS["glm4moe"] = {  # every router feature on: groups, selection bias, scaling, shared expert
    **_BASE, "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe",
    "n_routed_experts": EXPERTS, "n_shared_experts": 1, "first_k_dense_replace": 1,
    "moe_intermediate_size": EXPERT_FF, "n_group": 2, "topk_group": 1,
    "routed_scaling_factor": 2.5, "norm_topk_prob": True, "use_qk_norm": True,
    "attention_bias": True, "num_nextn_predict_layers": 0,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default",
                        "partial_rotary_factor": 0.5},
}

CONFIGS["qwen35moe"] = {  # one gated-DeltaNet layer, then one gated full-attention layer
    **{k: v for k, v in _BASE.items() if k != "intermediate_size"},
    "architectures": ["Qwen3_5MoeForCausalLM"], "model_type": "qwen3_5_moe_text",
    "layer_types": ["linear_attention", "full_attention"], "num_experts": EXPERTS,
    "moe_intermediate_size": EXPERT_FF, "shared_expert_intermediate_size": 64,
    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default",
                        "partial_rotary_factor": 0.5, "mrope_section": [1, 1, 0]},
}
CONFIGS["qwen3next"] = {  # as qwen35moe, with fused DeltaNet projections and plain rotary
    **{k: v for k, v in CONFIGS["qwen35moe"].items() if k != "rope_parameters"},
    "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next",
    "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default",
                        "partial_rotary_factor": 0.5},
}
CONFIGS["granitehybrid"] = {  # released naming: "mamba" / "attention", no rotary, tied output
    **{k: v for k, v in _BASE.items() if k not in ("head_dim", "intermediate_size")},
    "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid",
    "layer_types": ["mamba", "attention"], "num_local_experts": EXPERTS,
    "intermediate_size": EXPERT_FF, "shared_intermediate_size": 64,
    "embedding_multiplier": 12.0, "attention_multiplier": 0.125, "residual_multiplier": 0.22,
    "logits_scaling": 6.0, "position_embedding_type": "nope", "mamba_n_heads": 4,
    "mamba_n_groups": 2, "mamba_d_state": 8, "mamba_d_head": 16, "mamba_d_conv": 4,
    "mamba_expand": 2, "mamba_conv_bias": True, "mamba_proj_bias": False,
    "tie_word_embeddings": True,
}
CONFIGS["lfm2moe"] = {  # conv (dense), attention (MoE), conv (MoE); tied output, selection bias
    **{k: v for k, v in _BASE.items() if k not in ("rms_norm_eps", "head_dim")},
    "architectures": ["Lfm2MoeForCausalLM"], "model_type": "lfm2_moe", "num_hidden_layers": 3,
    "layer_types": ["conv", "full_attention", "conv"], "num_dense_layers": 1,
    "num_experts": EXPERTS, "moe_intermediate_size": EXPERT_FF, "conv_L_cache": 3,
    "conv_bias": False, "norm_eps": 1e-5, "use_expert_bias": True, "routed_scaling_factor": 1.0,
    "norm_topk_prob": True, "tie_word_embeddings": True,
}


CONFIGS["gptoss"] = {  # sinks, a sliding and a full layer, biased router, expert biases, YaRN
    **_BASE, "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
    "num_local_experts": EXPERTS, "intermediate_size": EXPERT_FF, "sliding_window": 4,
    "layer_types": ["sliding_attention", "full_attention"], "attention_bias": True,
    "swiglu_limit": 7.0, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
        "beta_slow": 1.0, "original_max_position_embeddings": 4096, "truncate": False},
}  # fmt: skip
# As OpenAI publishes gpt-oss: MXFP4 expert blocks and scales, the release's field names.
CONFIGS["gptoss_mxfp4"] = {
    **{k: v for k, v in CONFIGS["gptoss"].items()
       if k not in ("rope_parameters", "num_experts_per_tok")},
    "experts_per_token": TOP_K, "rope_theta": 150000.0,
    "rope_scaling": {k: v for k, v in CONFIGS["gptoss"]["rope_parameters"].items()
                     if k != "rope_theta"},
    "quantization_config": {"quant_method": "mxfp4"},
}  # fmt: skip


def _gptoss_layer(cfg: dict[str, Any], i: int) -> dict[str, tuple[int, ...]]:
    """One gpt-oss layer as transformers saves it (fused experts [E, in, out], gate and up
    interleaved) or, with quantization_config mxfp4, as OpenAI publishes it (blocks and scales
    of 32 weights along the input, uint8)."""
    p, h, f = f"model.layers.{i}", HIDDEN, EXPERT_FF
    a, m = f"{p}.self_attn", f"{p}.mlp"
    kv = cfg["num_key_value_heads"] * HEAD_DIM
    out = {f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
           f"{a}.q_proj.weight": (HEADS * HEAD_DIM, h), f"{a}.q_proj.bias": (HEADS * HEAD_DIM,),
           f"{a}.k_proj.weight": (kv, h), f"{a}.k_proj.bias": (kv,),
           f"{a}.v_proj.weight": (kv, h), f"{a}.v_proj.bias": (kv,),
           f"{a}.o_proj.weight": (h, HEADS * HEAD_DIM), f"{a}.o_proj.bias": (h,),
           f"{a}.sinks": (HEADS,), f"{m}.router.weight": (EXPERTS, h),
           f"{m}.router.bias": (EXPERTS,), f"{m}.experts.gate_up_proj_bias": (EXPERTS, 2 * f),
           f"{m}.experts.down_proj_bias": (EXPERTS, h)}  # fmt: skip
    if "quantization_config" in cfg:
        return out | {f"{m}.experts.gate_up_proj_blocks": (EXPERTS, 2 * f, h // 32, 16),
                      f"{m}.experts.gate_up_proj_scales": (EXPERTS, 2 * f, h // 32),
                      f"{m}.experts.down_proj_blocks": (EXPERTS, h, f // 32, 16),
                      f"{m}.experts.down_proj_scales": (EXPERTS, h, f // 32)}  # fmt: skip
    return out | {f"{m}.experts.gate_up_proj": (EXPERTS, h, 2 * f),
                  f"{m}.experts.down_proj": (EXPERTS, f, h)}


def _linear_attention(cfg: dict[str, Any], p: str) -> dict[str, tuple[int, ...]]:
    """A gated-DeltaNet layer as transformers' Qwen3.5 saves it."""
    kd = cfg["linear_key_head_dim"] * cfg["linear_num_key_heads"]
    nv = cfg["linear_num_value_heads"]
    vd = cfg["linear_value_head_dim"] * nv
    conv = 2 * kd + vd
    return {f"{p}.in_proj_qkv.weight": (conv, HIDDEN), f"{p}.in_proj_z.weight": (vd, HIDDEN),
            f"{p}.in_proj_a.weight": (nv, HIDDEN), f"{p}.in_proj_b.weight": (nv, HIDDEN),
            f"{p}.conv1d.weight": (conv, 1, cfg["linear_conv_kernel_dim"]),
            f"{p}.A_log": (nv,), f"{p}.dt_bias": (nv,),
            f"{p}.norm.weight": (cfg["linear_value_head_dim"],),
            f"{p}.out_proj.weight": (HIDDEN, vd)}  # fmt: skip

CONFIGS["ernie45moe"] = {  # ERNIE's own names: moe_num_experts, moe_k, moe_layer_*
    **{k: v for k, v in _BASE.items() if k != "num_experts_per_tok"},
    "architectures": ["Ernie4_5_MoeForCausalLM"], "model_type": "ernie4_5_moe",
    "moe_num_experts": EXPERTS, "moe_k": TOP_K, "moe_num_shared_experts": 2,
    "moe_intermediate_size": EXPERT_FF, "moe_layer_start_index": 1, "moe_layer_end_index": 1,
    "moe_layer_interval": 1, "use_bias": False, "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
}

def _qwen3next_linear(cfg: dict[str, Any], p: str) -> dict[str, tuple[int, ...]]:
    """A gated-DeltaNet layer as transformers' Qwen3-Next saves it: q, k, v and z fused per key
    head in `in_proj_qkvz`, b and a in `in_proj_ba`."""
    out = _linear_attention(cfg, p)
    qkv, _ = out.pop(f"{p}.in_proj_qkv.weight")
    z, _ = out.pop(f"{p}.in_proj_z.weight")
    a, _ = out.pop(f"{p}.in_proj_a.weight")
    b, _ = out.pop(f"{p}.in_proj_b.weight")
    return out | {f"{p}.in_proj_qkvz.weight": (qkv + z, HIDDEN),
                  f"{p}.in_proj_ba.weight": (a + b, HIDDEN)}  # fmt: skip


def _granite_layer(cfg: dict[str, Any], i: int) -> dict[str, tuple[int, ...]]:
    """One Granite-4.0-H layer as saved: Mamba2 or attention, then fused routed experts and the
    shared MLP (gate and up rows stacked in each input_linear)."""
    p, h = f"model.layers.{i}", HIDDEN
    out = {f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,)}
    if cfg["layer_types"][i] == "mamba":
        m, heads = f"{p}.mamba", cfg["mamba_n_heads"]
        inner = cfg["mamba_expand"] * h
        conv = inner + 2 * cfg["mamba_n_groups"] * cfg["mamba_d_state"]
        out |= {f"{m}.in_proj.weight": (inner + conv + heads, h),
                f"{m}.conv1d.weight": (conv, 1, cfg["mamba_d_conv"]), f"{m}.conv1d.bias": (conv,),
                f"{m}.dt_bias": (heads,), f"{m}.A_log": (heads,), f"{m}.D": (heads,),
                f"{m}.norm.weight": (inner,), f"{m}.out_proj.weight": (h, inner)}  # fmt: skip
    else:
        out |= _attention(cfg, f"{p}.self_attn")
    moe, shared = f"{p}.block_sparse_moe", cfg["shared_intermediate_size"]
    return out | {f"{moe}.router.layer.weight": (EXPERTS, h),
                  f"{moe}.input_linear.weight": (EXPERTS, 2 * EXPERT_FF, h),
                  f"{moe}.output_linear.weight": (EXPERTS, h, EXPERT_FF),
                  f"{p}.shared_mlp.input_linear.weight": (2 * shared, h),
                  f"{p}.shared_mlp.output_linear.weight": (h, shared)}  # fmt: skip


def _lfm2_layer(cfg: dict[str, Any], i: int) -> dict[str, tuple[int, ...]]:
    """One LFM2-MoE layer as transformers saves it: a gated short convolution or attention with
    q/k norms, then a dense feed-forward (leading layers) or routed experts."""
    p, h = f"model.layers.{i}", HIDDEN
    out = {f"{p}.operator_norm.weight": (h,), f"{p}.ffn_norm.weight": (h,)}
    if cfg["layer_types"][i] == "conv":
        out |= {f"{p}.conv.in_proj.weight": (3 * h, h), f"{p}.conv.out_proj.weight": (h, h),
                f"{p}.conv.conv.weight": (h, 1, cfg["conv_L_cache"])}  # fmt: skip
    else:
        kv = cfg["num_key_value_heads"] * HEAD_DIM
        a = f"{p}.self_attn"
        out |= {f"{a}.q_proj.weight": (HEADS * HEAD_DIM, h), f"{a}.k_proj.weight": (kv, h),
                f"{a}.v_proj.weight": (kv, h), f"{a}.out_proj.weight": (h, HEADS * HEAD_DIM),
                f"{a}.q_layernorm.weight": (HEAD_DIM,), f"{a}.k_layernorm.weight": (HEAD_DIM,)}
    f = f"{p}.feed_forward"
    if i < cfg["num_dense_layers"]:
        return out | _mlp(f, DENSE_FF, ("w1", "w3", "w2"))
    out |= {f"{f}.gate.weight": (EXPERTS, h), f"{f}.expert_bias": (EXPERTS,)}
    for e in range(EXPERTS):
        out |= _mlp(f"{f}.experts.{e}", EXPERT_FF, ("w1", "w3", "w2"))
    return out

CONFIGS["phimoe"] = {  # ONNX only: sparsemixer, LayerNorm, biases everywhere, LongRoPE
    **_BASE, "architectures": ["PhimoeForCausalLM"], "model_type": "phimoe",
    "num_local_experts": EXPERTS, "intermediate_size": EXPERT_FF, "router_jitter_noise": 0.01,
    "attention_bias": True, "lm_head_bias": True,
    "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0,
                        "original_max_position_embeddings": 64,
                        "short_factor": [1.0, 1.1, 1.3, 1.6], "long_factor": [1.0, 2.0, 4.0, 8.0],
                        "short_mscale": 1.05, "long_mscale": 1.2},
}
CONFIGS["llama4"] = {  # Llama 4's text model: MoE on layers 1 and 3, layer 3 without rope
    **_BASE, "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text",
    "num_hidden_layers": 4, "num_local_experts": EXPERTS, "num_experts_per_tok": 1,
    "intermediate_size": EXPERT_FF, "intermediate_size_mlp": DENSE_FF,
    "interleave_moe_layer_step": 2, "use_qk_norm": True, "no_rope_layer_interval": 4,
    "attention_chunk_size": 8192, "attn_temperature_tuning": True, "floor_scale": 8192,
    "attn_scale": 0.1,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64},
}


def _llama4_ffn(cfg: dict[str, Any], i: int, p: str) -> dict[str, tuple[int, ...]]:
    """Llama 4's feed-forward: dense, or fused input-major experts with router and shared."""
    if (i + 1) % cfg["interleave_moe_layer_step"]:
        return _mlp(p, cfg["intermediate_size_mlp"], ("gate_proj", "up_proj", "down_proj"))
    return {f"{p}.router.weight": (EXPERTS, HIDDEN),
            f"{p}.experts.gate_up_proj": (EXPERTS, HIDDEN, 2 * EXPERT_FF),
            f"{p}.experts.down_proj": (EXPERTS, EXPERT_FF, HIDDEN),
            **_mlp(f"{p}.shared_expert", EXPERT_FF, ("gate_proj", "up_proj", "down_proj"))}

def _attention(cfg: dict[str, Any], p: str) -> dict[str, tuple[int, ...]]:
    h = HIDDEN
    if "kv_lora_rank" in cfg:  # multi-head latent attention
        q_lora, kv_lora = cfg["q_lora_rank"], cfg["kv_lora_rank"]
        nope, rope, v = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        return {
            f"{p}.q_a_proj.weight": (q_lora, h), f"{p}.q_a_layernorm.weight": (q_lora,),
            f"{p}.q_b_proj.weight": (HEADS * (nope + rope), q_lora),
            f"{p}.kv_a_proj_with_mqa.weight": (kv_lora + rope, h),
            f"{p}.kv_a_layernorm.weight": (kv_lora,),
            f"{p}.kv_b_proj.weight": (HEADS * (nope + v), kv_lora),
            f"{p}.o_proj.weight": (h, HEADS * v),
        }  # fmt: skip
    kv = cfg["num_key_value_heads"]
    out = {f"{p}.q_proj.weight": (HEADS * HEAD_DIM, h), f"{p}.k_proj.weight": (kv * HEAD_DIM, h),
           f"{p}.v_proj.weight": (kv * HEAD_DIM, h), f"{p}.o_proj.weight": (h, HEADS * HEAD_DIM)}
    kind = cfg["model_type"]
    if kind in ("qwen3_5_moe_text", "qwen3_next"):  # q carries each head's output gate
        out[f"{p}.q_proj.weight"] = (2 * HEADS * HEAD_DIM, h)
    if kind in ("qwen2_moe", "glm4_moe", "phimoe"):
        widths = (("q", HEADS), ("k", kv), ("v", kv))
        out |= {f"{p}.{x}_proj.bias": (n * HEAD_DIM,) for x, n in widths}
    if kind == "phimoe":
        out[f"{p}.o_proj.bias"] = (h,)
    if kind in ("qwen3_moe", "qwen3_5_moe_text", "qwen3_next") or (
            kind == "glm4_moe" and cfg["use_qk_norm"]):
        out |= {f"{p}.q_norm.weight": (HEAD_DIM,), f"{p}.k_norm.weight": (HEAD_DIM,)}
    if kind == "olmoe":
        out |= {f"{p}.q_norm.weight": (HEADS * HEAD_DIM,), f"{p}.k_norm.weight": (kv * HEAD_DIM,)}
    return out


def _mlp(p: str, ff: int, names: tuple[str, str, str]) -> dict[str, tuple[int, ...]]:
    gate, up, down = names
    return {f"{p}.{gate}.weight": (ff, HIDDEN), f"{p}.{up}.weight": (ff, HIDDEN),
            f"{p}.{down}.weight": (HIDDEN, ff)}


def mtp_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """A multi-token-prediction block as DeepSeek-V3's and GLM-4.5's released checkpoints store
    it: one more decoder layer (numbered after the main ones) plus its embedding projection and
    head; ERNIE-4.5 stores it as `model.mtp_block.0` with its own norms and projection."""
    layer = dict(cfg, num_hidden_layers=LAYERS + 1, first_k_dense_replace=0,
                 moe_layer_start_index=0)  # fmt: skip
    p = f"model.layers.{LAYERS}"
    out = {n: s for n, s in tensor_shapes(layer).items() if n.startswith(f"{p}.")}
    if cfg["model_type"] == "ernie4_5_moe":
        block = {n.replace(p, "model.mtp_block.0"): s for n, s in out.items()}
        return block | {"model.mtp_emb_norm.0.weight": (HIDDEN,),
                        "model.mtp_hidden_norm.0.weight": (HIDDEN,),
                        "model.mtp_linear_proj.0.weight": (HIDDEN, 2 * HIDDEN)}  # fmt: skip
    return out | {f"{p}.enorm.weight": (HIDDEN,), f"{p}.hnorm.weight": (HIDDEN,),
                  f"{p}.eh_proj.weight": (HIDDEN, 2 * HIDDEN),
                  f"{p}.shared_head.norm.weight": (HIDDEN,),
                  f"{p}.shared_head.head.weight": (VOCAB, HIDDEN)}  # fmt: skip


def _deepseek4_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """DeepSeek-V4's tensors in the released naming (no `model.` prefix)."""
    h, hc, head = HIDDEN, cfg["hc_mult"], cfg["head_dim"]
    mix, q, idx = (2 + hc) * hc, cfg["q_lora_rank"], cfg["index_head_dim"]
    groups, rank = cfg["o_groups"], cfg["o_lora_rank"]
    shapes: dict[str, tuple[int, ...]] = {
        "embed.weight": (VOCAB, h), "head.weight": (VOCAB, h), "norm.weight": (h,),
        "hc_head_fn": (hc, hc * h), "hc_head_base": (hc,), "hc_head_scale": (1,)}
    for i, ratio in enumerate(cfg["compress_ratios"]):
        p = f"layers.{i}"
        shapes |= {f"{p}.attn_norm.weight": (h,), f"{p}.ffn_norm.weight": (h,),
                   f"{p}.attn.attn_sink": (HEADS,), f"{p}.attn.wq_a.weight": (q, h),
                   f"{p}.attn.q_norm.weight": (q,), f"{p}.attn.wq_b.weight": (HEADS * head, q),
                   f"{p}.attn.wkv.weight": (head, h), f"{p}.attn.kv_norm.weight": (head,),
                   f"{p}.attn.wo_a.weight": (groups * rank, HEADS * head // groups),
                   f"{p}.attn.wo_b.weight": (h, groups * rank)}
        for part, n in (("attn", 3), ("ffn", 3)):
            shapes |= {f"{p}.hc_{part}_fn": (mix, hc * h), f"{p}.hc_{part}_base": (mix,),
                       f"{p}.hc_{part}_scale": (n,)}
        if ratio:
            c = f"{p}.attn.compressor"
            width = (2 if ratio == 4 else 1) * head
            shapes |= {f"{c}.wkv.weight": (width, h), f"{c}.wgate.weight": (width, h),
                       f"{c}.ape": (ratio, width), f"{c}.norm.weight": (head,)}
        if ratio == 4:
            x = f"{p}.attn.indexer"
            shapes |= {f"{x}.wq_b.weight": (cfg["index_n_heads"] * idx, q),
                       f"{x}.weights_proj.weight": (cfg["index_n_heads"], h),
                       f"{x}.compressor.wkv.weight": (2 * idx, h),
                       f"{x}.compressor.wgate.weight": (2 * idx, h),
                       f"{x}.compressor.ape": (ratio, 2 * idx),
                       f"{x}.compressor.norm.weight": (idx,)}
        m = f"{p}.ffn"
        shapes[f"{m}.gate.weight"] = (EXPERTS, h)
        if i < cfg["num_hash_layers"]:
            shapes[f"{m}.gate.tid2eid"] = (VOCAB, TOP_K)
        else:
            shapes[f"{m}.gate.bias"] = (EXPERTS,)
        for e in range(EXPERTS):
            shapes |= _mlp(f"{m}.experts.{e}", EXPERT_FF, ("w1", "w3", "w2"))
        shapes |= _mlp(f"{m}.shared_experts", EXPERT_FF, ("w1", "w3", "w2"))
    return shapes  # fmt: skip


def _mimo2_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """MiMo-V2-Flash: sliding layers with twice the KV heads and sinks, V narrower than Q/K."""
    h, head, v = HIDDEN, cfg["head_dim"], cfg["v_head_dim"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (VOCAB, h), "lm_head.weight": (VOCAB, h),
        "model.norm.weight": (h,)}
    for i, slides in enumerate(cfg["hybrid_layer_pattern"]):
        p = f"model.layers.{i}"
        kv = cfg["swa_num_key_value_heads"] if slides else cfg["num_key_value_heads"]
        shapes |= {f"{p}.input_layernorm.weight": (h,),
                   f"{p}.post_attention_layernorm.weight": (h,),
                   f"{p}.self_attn.q_proj.weight": (HEADS * head, h),
                   f"{p}.self_attn.k_proj.weight": (kv * head, h),
                   f"{p}.self_attn.v_proj.weight": (kv * v, h),
                   f"{p}.self_attn.o_proj.weight": (h, HEADS * v)}
        if slides:
            shapes[f"{p}.self_attn.attention_sink_bias"] = (HEADS,)
        if not cfg["moe_layer_freq"][i]:
            shapes |= _mlp(f"{p}.mlp", DENSE_FF, ("gate_proj", "up_proj", "down_proj"))
            continue
        shapes |= {f"{p}.mlp.gate.weight": (EXPERTS, h),
                   f"{p}.mlp.gate.e_score_correction_bias": (EXPERTS,)}
        for e in range(EXPERTS):
            shapes |= _mlp(f"{p}.mlp.experts.{e}", EXPERT_FF, ("gate_proj", "up_proj",
                                                               "down_proj"))
    return shapes  # fmt: skip


def tensor_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a transformers checkpoint of `cfg` saves, with its shape."""
    kind = cfg["model_type"]
    if kind == "mimo_v2_flash":
        return _mimo2_shapes(cfg)
    if kind == "deepseek_v4":
        return _deepseek4_shapes(cfg)
    if kind == "lfm2_moe":  # its final norm is `embedding_norm`; the output is tied
        shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN),
                  "model.embedding_norm.weight": (HIDDEN,)}  # fmt: skip
        for i in range(cfg["num_hidden_layers"]):
            shapes |= _lfm2_layer(cfg, i)
        return shapes
    if kind == "granitemoehybrid":  # tied output
        shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
        for i in range(cfg["num_hidden_layers"]):
            shapes |= _granite_layer(cfg, i)
        return shapes
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN), "lm_head.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
    }  # fmt: skip
    if kind == "gpt_oss":
        for i in range(cfg["num_hidden_layers"]):
            shapes |= _gptoss_layer(cfg, i)
        return shapes
    mixtral_like = kind in ("mixtral", "phimoe")
    proj = ("w1", "w3", "w2") if mixtral_like else ("gate_proj", "up_proj", "down_proj")
    module = "block_sparse_moe" if mixtral_like else "mlp"
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes |= {f"{p}.input_layernorm.weight": (HIDDEN,),
                   f"{p}.post_attention_layernorm.weight": (HIDDEN,)}  # fmt: skip
        if (cfg.get("layer_types") or {}) and cfg["layer_types"][i] == "linear_attention":
            linear = _qwen3next_linear if kind == "qwen3_next" else _linear_attention
            shapes |= linear(cfg, f"{p}.linear_attn")
        else:
            shapes |= _attention(cfg, f"{p}.self_attn")
        if kind == "llama4_text":
            shapes |= _llama4_ffn(cfg, i, f"{p}.feed_forward")
            continue
        if i < int(cfg.get("first_k_dense_replace", cfg.get("moe_layer_start_index", 0))):
            shapes |= _mlp(f"{p}.mlp", DENSE_FF, proj)
            continue
        m = f"{p}.{module}"
        shapes[f"{m}.gate.weight"] = (EXPERTS, HIDDEN)
        if kind in ("deepseek_v3", "glm4_moe"):
            shapes[f"{m}.gate.e_score_correction_bias"] = (EXPERTS,)
        if kind == "ernie4_5_moe":  # one row per modality; text-only checkpoints have one
            shapes[f"{m}.moe_statics.e_score_correction_bias"] = (1, EXPERTS)
        for e in range(EXPERTS):
            shapes |= _mlp(f"{m}.experts.{e}", EXPERT_FF, proj)
        if kind in ("qwen2_moe", "qwen3_5_moe_text", "qwen3_next"):
            shapes |= _mlp(f"{m}.shared_expert", cfg["shared_expert_intermediate_size"], proj)
            shapes[f"{m}.shared_expert_gate.weight"] = (1, HIDDEN)
        if shared := cfg.get("n_shared_experts") or cfg.get("moe_num_shared_experts"):
            shapes |= _mlp(f"{m}.shared_experts", EXPERT_FF * shared, proj)
    if cfg.get("tie_word_embeddings"):
        del shapes["lm_head.weight"]
    if kind == "phimoe":  # LayerNorms with biases, and a biased LM head
        norms = [n for n in shapes if n.endswith(("layernorm.weight", "model.norm.weight"))]
        shapes |= {n.replace(".weight", ".bias"): (HIDDEN,) for n in norms}
        shapes["lm_head.bias"] = (VOCAB,)
    return shapes


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte (what a byte-level BPE vocabulary holds)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


# Qwen2's pre-tokenizer split (one that llama.cpp knows by name).
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _tokenizer() -> dict[str, Any]:
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": EOS + i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i, t in enumerate(_SPECIALS)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {c: i for i, c in enumerate([*_byte_chars(), *map("".join, _MERGES)])},
                  "merges": [list(m) for m in _MERGES]},
    }  # fmt: skip


def write_checkpoint(family: str, folder: Path, seed: int = 0, *, mtp: str = "none",
                     **config: Any) -> Path:
    """A complete checkpoint folder (config, safetensors, tokenizer) for one of `CONFIGS`;
    `config` overrides fields; `mtp` adds one MTP block ("with") or keeps only it ("only")."""
    from safetensors.numpy import save_file

    cfg = {**CONFIGS[family], **config}
    shapes = {} if mtp == "only" else tensor_shapes(cfg)
    if mtp != "none":
        shapes |= mtp_shapes(cfg)
        cfg["num_nextn_predict_layers"] = 1
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("_blocks"):  # MXFP4 codes, two a byte
            tensors[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif name.endswith("_scales"):  # E8M0: 2^-7 .. 2^-3
            tensors[name] = rng.integers(120, 125, shape, dtype=np.uint8)
        elif name.endswith(("norm.weight", "layernorm.weight")):
            tensors[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("tid2eid"):  # a hash router's token -> expert table
            tensors[name] = np.stack([rng.permutation(EXPERTS)[: shape[1]]
                                      for _ in range(shape[0])]).astype(np.int64)
        else:
            tensors[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (folder / "tokenizer.json").write_text(json.dumps(_tokenizer()) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "eos_token": _SPECIALS[0], "pad_token": _SPECIALS[0],
        "bos_token": None, "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                         "{{ m['content'] }}<|im_end|>\n{% endfor %}",
    }, indent=2) + "\n")  # fmt: skip
    return folder
