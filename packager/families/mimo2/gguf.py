"""MiMo-V2-Flash as llama.cpp's `mimo2` (src/models/mimo2.cpp).

llama.cpp runs sliding-window and full attention layers from one pattern
(`attention.sliding_window_pattern`), with per-layer KV heads (`attention.head_count_kv` as an
array), one Q/K width (`key_length`) and one V width (`value_length`), NeoX rotary over the first
`rope.dimension_count` dims at `rope.freq_base` (full) or `rope.freq_base_swa` (sliding), the
sinks tensor where a layer has one, and the attention output times `attention.value_scale`
(transformers scales V; the two are equal, attention being linear in V). Layers with a router
(`ffn_gate_inp`) are MoE, the others dense. The router is hard-wired: sigmoid scores, selection
bias `exp_probs_b`, the generic expert groups, weights always renormalised and never scaled.
The multi-token-prediction blocks (`model.mtp.*`) are not written.
"""

from __future__ import annotations

import re

import gguf

from packager.errors import UnsupportedArchitectureError
from packager.families.expert_groups import check_groups, refuse_field, write_groups
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader
from packager.families.mimo2.config import MiMoV2Config

VALUE_SCALE = "mimo2.attention.value_scale"  # LLM_KV_ATTENTION_VALUE_SCALE (not in gguf 0.19)
_BIAS = "e_score_correction_bias"
_SINK = re.compile(r"^model\.layers\.(\d+)\.self_attn\.(sinks|attention_sink|attention_sink_bias)"
                   r"(\.weight)?$")
_MTP = re.compile(r"^model\.mtp\.")


class MiMoV2GGUF(GGUFAdapter):
    config: MiMoV2Config
    gguf_arch = gguf.MODEL_ARCH.MIMO2

    def validate(self) -> None:
        c = self.config
        for key, got, want in (("swa_head_dim", c.swa_head_dim, c.head_dim),
                               ("swa_v_head_dim", c.swa_v_head_dim, c.v_head_dim),
                               ("swa_num_attention_heads", c.swa_heads, c.n_heads)):
            if got != want:
                raise refuse_field(c, key, got, f"{want}: llama.cpp's mimo2 has one width")
        if c.scoring_func != "sigmoid":
            raise refuse_field(c, "scoring_func", c.scoring_func, "sigmoid (llama.cpp's mimo2)")
        if c.topk_method != "noaux_tc":
            raise refuse_field(c, "topk_method", c.topk_method, "noaux_tc")
        if not c.norm_topk_prob:
            raise refuse_field(c, "norm_topk_prob", False, "true: llama.cpp renormalises")
        if c.routed_scaling_factor != 1.0:
            raise refuse_field(c, "routed_scaling_factor", c.routed_scaling_factor,
                               "1.0: llama.cpp's mimo2 does not scale the weights")
        if c.attention_bias:
            raise refuse_field(c, "attention_bias", True, "false")
        if c.rotary_factors[0] != c.rotary_factors[1]:
            raise refuse_field(c, "partial_rotary_factor", list(c.rotary_factors),
                               "the same for full and sliding layers (one rotary width)")
        for kind, name in zip(c.rope_kinds, ("full_attention", "sliding_attention"), strict=True):
            if kind != "default":
                raise refuse_field(c, f"rope_parameters.{name}.rope_type", kind, "default")
        if not 0 < c.rotary_dim <= c.head_dim or c.rotary_dim % 2:
            raise refuse_field(c, "partial_rotary_factor", c.rotary_factors[0],
                               f"an even rotary width of at most head_dim={c.head_dim}")
        if not c.sparse_layers:
            raise UnsupportedArchitectureError(f"{c.architecture}: no layer is sparse (MoE)")
        check_groups(c)

    def _check_rope(self) -> None:
        """Both kinds are plain rotary (validate names a scaled one)."""

    def n_head_kv(self) -> int:
        # The planner's one KV width: the sliding layers' (more heads; their cache is full size).
        return max(self.config.n_kv_heads, self.config.swa_kv_heads)

    def kv_dims(self) -> tuple[int, int, int]:
        c = self.config
        return self.n_head_kv(), c.head_dim, c.v_head_dim

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c, n = self.config, self.n_layers
        w.add_context_length(c.context_length)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(n)
        w.add_feed_forward_length(c.require(c.intermediate_size, "intermediate_size"))
        w.add_head_count(c.n_heads)
        sliding = set(c.sliding_layers)
        w.add_head_count_kv([c.swa_kv_heads if i in sliding else c.n_kv_heads for i in range(n)])
        w.add_key_length(c.head_dim)
        w.add_value_length(c.v_head_dim)
        w.add_rope_dimension_count(c.rotary_dim)
        w.add_rope_freq_base(c.full_theta)
        w.add_rope_freq_base_swa(c.swa_theta)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_sliding_window(c.require(c.sliding_window, "sliding_window"))
        w.add_sliding_window_pattern([i in sliding for i in range(n)])
        if c.value_scale != 1.0:
            w.add_float32(VALUE_SCALE, c.value_scale)
        w.add_expert_count(c.n_experts)
        w.add_expert_used_count(c.top_k)
        w.add_expert_feed_forward_length(c.require(c.moe_intermediate_size,
                                                   "moe_intermediate_size"))  # fmt: skip
        write_groups(w, c)

    def gguf_name(self, hf_name: str) -> str:
        if m := _SINK.match(hf_name):
            return f"blk.{m.group(1)}.attn_sinks.weight"
        if hf_name.endswith(_BIAS):  # gguf's map: `...gate.e_score_correction` + `.bias`
            hf_name = hf_name[: -len(_BIAS)] + "e_score_correction.bias"
        return super().gguf_name(hf_name)

    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        main = {n: s for n, s in shapes.items() if not _MTP.match(n)}
        if len(main) < len(shapes) and not any(n.startswith("model.layers.") for n in main):
            raise UnsupportedArchitectureError(
                f"{self.architecture}: the checkpoint holds only multi-token-prediction "
                f"weights (model.mtp.*), not the {self.n_layers} main layers edgemoe packs"
            )
        return super().plan(main, read)
