"""DeepSeek-V2: multi-head latent attention (MLA), leading dense layers, shared experts.

The KV cache holds what transformers' own cache holds for MLA: per token the normalised
compressed latent (`past_key_values.i.key`, [1, 1, past, kv_lora_rank]) and the rotated shared
rope key (`past_key_values.i.value`, [1, 1, past, qk_rope_head_dim]). K and V for every head are
re-expanded through kv_b_proj each step, exactly as transformers does, so numerics match; the
cache is (kv_lora_rank + rope) floats per token instead of heads * (qk_head + v_head).
"""

from __future__ import annotations

import math

from packager.families.deepseek2.config import DeepseekV2Config
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import Context, RopeSpec, apply_rope, attend, dense_mlp, heads
from packager.onnx_export.graph import Scope
from packager.onnx_export.moe import group_limited, topk

# transformers builds q_a_layernorm / kv_a_layernorm without passing rms_norm_eps.
_LORA_NORM_EPS = 1e-6


class DeepseekV2Onnx(OnnxAdapter):
    config: DeepseekV2Config
    genai_type = "deepseek_v2"

    def validate(self) -> None:
        super().validate()
        c = self.config
        self.q_lora = c.q_lora_rank
        self.kv_lora = c.kv_lora_rank
        self.nope = c.qk_nope_head_dim
        self.rope_d = c.qk_rope_head_dim
        self.v_dim = c.v_head_dim
        self.method = c.topk_method
        if c.moe_layer_freq != 1:
            self.refuse("moe_layer_freq != 1")
        self.validate_router()

    def validate_router(self) -> None:
        """What transformers' DeepSeek-V2 router computes (V3 replaces this)."""
        c = self.config
        if self.method not in ("greedy", "group_limited_greedy"):
            self.refuse(f"topk_method '{self.method}' (exported: greedy, group_limited_greedy)")
        if c.scoring_func != "softmax":
            self.refuse(f"scoring_func '{c.scoring_func}' (transformers' V2 is softmax)")
        if c.norm_topk_prob:
            # transformers' DeepseekV2 router never renormalises; the original remote code did.
            self.refuse("norm_topk_prob=true: transformers' DeepSeek-V2 router ignores it")
        if self.method == "group_limited_greedy" and self.n_experts % c.require(
            c.n_group, "n_group"
        ):
            self.refuse("n_routed_experts is not a multiple of n_group")

    def kv_layout(self) -> tuple[int, int, int]:
        return 1, self.kv_lora, self.rope_d

    def rope_dim(self) -> int:
        return self.rope_d

    def rope(self) -> RopeSpec:
        spec = super().rope()
        return RopeSpec(spec.inv_freq, spec.attention_scaling, interleaved=True)

    def _scale(self) -> float:
        # transformers' yarn_apply_mscale: YaRN checkpoints also sharpen the softmax.
        scale = (self.nope + self.rope_d) ** -0.5
        p = self.config.rope
        factor = float(p.factor or 1.0)
        if p.kind != "default" and p.mscale_all_dim and factor > 1:
            m = 0.1 * p.mscale_all_dim * math.log(factor) + 1.0
            scale *= m * m
        return scale

    def attention(self, ctx: Context, s: Scope, i: int, x: str, past: tuple[str, str]):
        w, pre = ctx.weights, f"model.layers.{i}.self_attn"
        qk_dim = self.nope + self.rope_d
        if self.q_lora is None:
            q = w.linear(s.child("q_proj"), x, f"{pre}.q_proj.weight")
        else:
            qa = w.linear(s.child("q_a_proj"), x, f"{pre}.q_a_proj.weight")
            qa = s.rms_norm(qa, w.vector(f"{pre}.q_a_layernorm.weight"), _LORA_NORM_EPS,
                            "q_a_layernorm")  # fmt: skip
            q = w.linear(s.child("q_b_proj"), qa, f"{pre}.q_b_proj.weight")
        q = heads(s, q, self.n_heads, qk_dim, "q_heads")
        q_nope, q_pe = s.split(q, [self.nope, self.rope_d], -1, "q_split")
        kv = w.linear(s.child("kv_a_proj_with_mqa"), x, f"{pre}.kv_a_proj_with_mqa.weight")
        latent, k_pe = s.split(kv, [self.kv_lora, self.rope_d], -1, "kv_split")
        latent = s.rms_norm(latent, w.vector(f"{pre}.kv_a_layernorm.weight"), _LORA_NORM_EPS,
                            "kv_a_layernorm")  # fmt: skip
        latent = s.unsqueeze(latent, [1], "latent_head")
        k_pe = s.unsqueeze(k_pe, [1], "k_pe_head")
        q_pe = apply_rope(s.child("q_rope"), q_pe, ctx.rope, self.rope_d)
        k_pe = apply_rope(s.child("k_rope"), k_pe, ctx.rope, self.rope_d)
        latent_all = s.op("Concat", [past[0], latent], "latent/ConcatPast", axis=2)
        k_pe_all = s.op("Concat", [past[1], k_pe], "k_pe/ConcatPast", axis=2)
        # Expand the latents of every cached token: [1,1,T,kv_lora] -> [1,H,T,nope+v].
        kv_b = w.linear(s.child("kv_b_proj"), latent_all, f"{pre}.kv_b_proj.weight")
        kv_b = s.reshape(kv_b, [0, -1, self.n_heads, self.nope + self.v_dim], "kv_b/Reshape")
        kv_b = s.transpose(kv_b, [0, 2, 1, 3], "kv_b/Transpose")
        k_nope, v = s.split(kv_b, [self.nope, self.v_dim], -1, "kv_b/Split")
        shape = s.op("Shape", [k_nope], "k_nope/Shape")
        rope_shape = s.op("Concat", [s.slice(shape, 0, 3, 0, "k_shape/Slice"),
                                     s.const([self.rope_d])], "k_pe/Shape", axis=0)  # fmt: skip
        k_pe_heads = s.op("Expand", [k_pe_all, rope_shape], "k_pe/Expand")
        k = s.op("Concat", [k_nope, k_pe_heads], "key", axis=-1)
        q = s.op("Concat", [q_nope, q_pe], "query", axis=-1)
        out = attend(s.child("sdpa"), ctx, q, k, v, self.n_heads, self.n_heads,
                     (qk_dim, self.v_dim), self._scale())  # fmt: skip
        y = w.linear(s.child("o_proj"), out, f"{pre}.o_proj.weight")
        return y, latent_all, k_pe_all

    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        probs = self.router_probs(s, logits)
        if self.method == "group_limited_greedy":
            c = self.config
            probs = group_limited(s, probs, self.n_experts, c.require(c.n_group, "n_group"),
                                  c.require(c.topk_group, "topk_group"))  # fmt: skip
        values, ids = topk(s, probs, self.top_k)
        factor = float(self.config.routed_scaling_factor or 1.0)
        if factor != 1.0:
            values = s.op("Mul", [values, s.f32(factor)], "RoutedScaling")
        return values, ids

    def shared(self, ctx: Context, s: Scope, i: int, x2d: str) -> str | None:
        pre = f"model.layers.{i}.mlp.shared_experts"
        if not ctx.weights.has(f"{pre}.gate_proj.weight"):
            return None
        return dense_mlp(ctx, s.child("shared_experts"), x2d, pre, self.proj)
