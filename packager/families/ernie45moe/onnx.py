"""ERNIE-4.5-MoE in ONNX: GQA attention with rotary over adjacent pairs, a softmax router whose
selection bias (moe_statics) only picks the experts, the chosen probabilities renormalised (sum
clamped below at moe_norm_min, as transformers does), and the shared experts as one MLP."""

from __future__ import annotations

from packager.families.ernie45moe.config import Ernie45MoeConfig
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import Context, RopeSpec, dense_mlp
from packager.onnx_export.graph import Scope
from packager.onnx_export.moe import topk


class Ernie45MoeOnnx(OnnxAdapter):
    config: Ernie45MoeConfig
    genai_type = "ernie4_5"  # genai has no ERNIE MoE type; its generic decoder runs it

    def validate(self) -> None:
        super().validate()
        if self.config.use_bias:
            self.refuse("use_bias=true (MLP biases are not exported)")

    def rope(self) -> RopeSpec:
        spec = super().rope()
        return RopeSpec(spec.inv_freq, spec.attention_scaling, interleaved=True)

    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        probs = self.router_probs(s, logits)
        bias = ctx.weights.vector(f"{self.moe_prefix(i)}.moe_statics.e_score_correction_bias")
        _, ids = topk(s, s.op("Add", [probs, bias], "SelectionBias"), self.top_k)
        weights = s.op("GatherElements", [probs, ids], "ChosenProbs", axis=-1)
        total = s.op("ReduceSum", [weights, s.const([-1])], "TopKSum", keepdims=1)
        total = s.op("Max", [total, s.f32(self.config.moe_norm_min)], "TopKSumMin")
        return s.op("Div", [weights, total], "Renormalize"), ids

    def shared(self, ctx: Context, s: Scope, i: int, x2d: str) -> str | None:
        pre = f"model.layers.{i}.mlp.shared_experts"
        if not ctx.weights.has(f"{pre}.gate_proj.weight"):
            return None
        return dense_mlp(ctx, s.child("shared_experts"), x2d, pre, self.proj)
