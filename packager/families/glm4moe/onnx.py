"""GLM-4.5 MoE in ONNX: GQA attention with q/k/v biases, optional per-head q/k RMSNorm, rotary
on the leading `partial_rotary_factor` of each head (rotate-half pairs, the rest passes through),
DeepSeek-V3's noaux_tc router and one shared expert added to the routed output."""

from __future__ import annotations

from typing import ClassVar

from packager.families.deepseek3.onnx import sigmoid_group_route
from packager.families.glm4moe.config import Glm4MoeConfig
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import Context, dense_mlp
from packager.onnx_export.graph import Scope


class Glm4MoeOnnx(OnnxAdapter):
    config: Glm4MoeConfig
    genai_type = "chatglm"  # genai has no GLM-4.5 MoE type; its generic decoder runs it
    partial_rotary: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        c = self.config
        if not 0 < c.rotary_dim <= c.head_dim or c.rotary_dim % 2:
            self.refuse(f"partial_rotary_factor={c.partial_rotary_factor} leaves an odd or "
                        "empty rotary width")  # fmt: skip
        if c.n_experts % (c.n_group or 1):
            self.refuse(f"n_group={c.n_group} does not split {c.n_experts} experts")

    def rope_dim(self) -> int:
        return self.config.rotary_dim

    def per_head_norm(self, ctx: Context, s: Scope, pre: str, q: str, k: str):
        if not self.config.use_qk_norm:
            return q, k
        return self.rms_head_norms(ctx, s, pre, q, k)

    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        bias = ctx.weights.vector(f"{self.moe_prefix(i)}.gate.e_score_correction_bias")
        c = self.config
        return sigmoid_group_route(s, logits, bias, c, self.top_k, c.routed_scaling_factor)

    def shared(self, ctx: Context, s: Scope, i: int, x2d: str) -> str | None:
        pre = f"model.layers.{i}.mlp.shared_experts"
        return dense_mlp(ctx, s.child("shared_experts"), x2d, pre, self.proj)
