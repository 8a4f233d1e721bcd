"""A model's planner shape from its config.json alone: no weights, no family adapter.

`edgemoe plan` answers "does this model fit that device?" before anything is downloaded, so
the shape is estimated from the config's fields under the names families use for them (any
MoE config.json, supported for packing or not). Routed experts, which decide the answer, are
exact: every family's expert is a gated FFN of three hidden x expert-width matrices. The dense
rest (embeddings, attention, dense and shared FFNs) is counted from the fields too, or taken
as the published total minus the experts when a model card's total is known (attention
variants such as MLA or grouped output projections are then counted right without knowing
them). The KV cache counts attention layers only (recurrent layers keep a small fixed state,
not counted here) with a full-size cache on sliding-window layers, as llama.cpp allocates it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packager.plan.errors import PlanError
from packager.plan.shape import ModelShape

EXPERT_COUNT = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K = ("num_experts_per_tok", "moe_k", "num_experts_per_token", "experts_per_token")
ATTENTION_KINDS = ("full_attention", "sliding_attention", "attention", "global", "local")


@dataclass(frozen=True)
class ConfigEstimate:
    """The planner shape of a config, with what it was built from (for the rationale)."""

    shape: ModelShape
    total_params: int
    active_params: int
    notes: tuple[str, ...]


def _get(c: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        v = c.get(k)
        if v is not None:
            return v
    return default


def _int(c: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    v = _get(c, *keys, default=default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
        raise PlanError(f"config.json: field '{keys[0]}' must be an integer, got {v!r}")
    return int(v)


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """A composite (vision + text) config's text part; the config itself otherwise."""
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) else config


def moe_layers(c: Mapping[str, Any], n: int) -> tuple[int, ...]:
    """Which layers route, under every naming the families use (transformers' defaults)."""
    if isinstance(c.get("mlp_layer_types"), list):
        return tuple(i for i, t in enumerate(c["mlp_layer_types"][:n])
                     if t in ("sparse", "moe", "hash_moe"))  # fmt: skip
    if isinstance(c.get("moe_layer_freq"), list):
        return tuple(i for i, x in enumerate(c["moe_layer_freq"][:n]) if x)
    skip = set(c.get("mlp_only_layers") or ())
    first = int(_get(c, "first_k_dense_replace", "num_dense_layers", "moe_layer_start_index",
                     default=0))  # fmt: skip
    step = int(_get(c, "decoder_sparse_step", "interleave_moe_layer_step", default=1) or 1)
    return tuple(i for i in range(first, n) if i not in skip and (i + 1) % step == 0)


def _kv(c: Mapping[str, Any], n: int, hidden: int) -> tuple[int, int, int, int | None]:
    """(KV heads, key width, value width, attention layers or None for all)."""
    heads = _int(c, "num_attention_heads", "n_heads", default=1)
    types = c.get("layer_types")
    layers = None
    if isinstance(types, list) and types and isinstance(types[0], str):
        layers = sum(1 for t in types[:n] if t in ATTENTION_KINDS) or None
    if c.get("kv_lora_rank") is not None:  # MLA: one compressed latent plus the rope key
        lora, rope = _int(c, "kv_lora_rank"), _int(c, "qk_rope_head_dim", default=64)
        return 1, lora + rope, lora, layers
    head = _int(c, "head_dim", default=hidden // max(heads, 1))
    kv = _int(c, "num_key_value_heads", "num_kv_heads", default=heads)
    if c.get("model_type") == "deepseek_v4":  # one KV head whose key is its value
        return 1, head, 0, layers
    swa_kv = c.get("swa_num_key_value_heads")
    return max(kv, int(swa_kv or 0)), head, _int(c, "v_head_dim", default=head), layers


def _dense_from_fields(c: Mapping[str, Any], n: int, hidden: int, vocab: int, moe: int,
                       expert_ff: int, n_experts: int) -> int:
    """Embeddings, attention, dense FFN layers, shared experts and norms from the fields."""
    heads = _int(c, "num_attention_heads", default=1)
    head = _int(c, "head_dim", default=hidden // max(heads, 1))
    kv_heads, _, _, _ = _kv(c, n, hidden)
    v_head = _int(c, "v_head_dim", default=head)
    if c.get("kv_lora_rank") is not None:
        q_lora = c.get("q_lora_rank")
        qk = _int(c, "qk_nope_head_dim", default=128) + _int(c, "qk_rope_head_dim", default=64)
        lora = _int(c, "kv_lora_rank")
        q = hidden * heads * qk if q_lora is None else q_lora * (hidden + heads * qk)
        attn = q + hidden * (lora + qk - _int(c, "qk_nope_head_dim", default=128)) \
            + lora * heads * (qk - _int(c, "qk_rope_head_dim", default=64) + v_head) \
            + heads * v_head * hidden
    else:
        attn = hidden * heads * head + 2 * hidden * kv_heads * head + heads * v_head * hidden
    tied = bool(c.get("tie_word_embeddings", False))
    dense_ff = _int(c, "intermediate_size", default=4 * hidden)
    shared_ff = int(_get(c, "shared_expert_intermediate_size", default=0) or 0) or (
        int(_get(c, "n_shared_experts", "moe_num_shared_experts", "num_shared_experts",
                 default=0) or 0) * expert_ff)  # fmt: skip
    if c.get("model_type") == "llama4_text":  # one shared expert per MoE layer, no field for it
        shared_ff = expert_ff
    ffn_dense = (n - moe) * 3 * hidden * dense_ff
    shared = moe * (3 * hidden * shared_ff + hidden * n_experts)  # and each router
    return vocab * hidden * (1 if tied else 2) + n * (attn + 2 * hidden) + ffn_dense + shared


def estimate(config: Mapping[str, Any], total_params: int | None = None) -> ConfigEstimate:
    """The planner shape of `config`; `total_params` (a model card's) fixes the dense part."""
    c = text_config(config)
    n = _int(c, "num_hidden_layers", "n_layers", "num_layers")
    hidden = _int(c, "hidden_size", "d_model")
    vocab = _int(c, "vocab_size")
    n_experts = _int(c, *EXPERT_COUNT, default=0)
    if n_experts < 2:
        raise PlanError(f"config.json: no expert count ({', '.join(EXPERT_COUNT)}); "
                        "the planner sizes Mixture-of-Experts models")
    top_k = _int(c, *TOP_K)
    expert_ff = _int(c, "moe_intermediate_size", "expert_intermediate_size", "intermediate_size")
    layers = moe_layers(c, n)
    if not layers:
        raise PlanError("config.json: no layer routes to experts")
    per_expert = 3 * hidden * expert_ff
    experts = n_experts * len(layers) * per_expert
    notes = [f"experts: {n_experts} x {len(layers)} MoE layers x 3 x {hidden} x {expert_ff}"]
    if total_params is not None:
        dense = int(total_params) - experts
        notes.append(f"dense part: the published total {total_params / 1e9:.1f}B minus experts")
        if dense <= 0:
            raise PlanError(f"total_params {total_params} is not above the experts' {experts}")
    else:
        dense = _dense_from_fields(c, n, hidden, vocab, len(layers), expert_ff, n_experts)
        notes.append("dense part estimated from the config's fields")
    kv_heads, head_k, head_v, kv_layers = _kv(c, n, hidden)
    quant = c.get("quantization_config")
    storage = "MXFP4" if isinstance(quant, Mapping) and quant.get("quant_method") == "mxfp4" \
        else None
    if storage:
        notes.append("experts stay MXFP4, as the checkpoint stores them, whatever the quant")
    shape = ModelShape(n, layers, n_experts, top_k, hidden, vocab, kv_heads, head_k,
                       max(head_v, 1), dense, dict.fromkeys(layers, per_expert), expert_ff,
                       kv_layers, 0, storage)
    shape.validate()
    return ConfigEstimate(shape, dense + experts, shape.active_params, tuple(notes))
