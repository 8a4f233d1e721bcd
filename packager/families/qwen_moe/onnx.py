"""Qwen2-MoE (qkv bias, sigmoid-gated shared expert) and Qwen3-MoE (per-head q/k RMSNorm)."""

from __future__ import annotations

from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import Context, dense_mlp
from packager.onnx_export.graph import Scope


class _QwenMoE(OnnxAdapter):
    def validate(self) -> None:
        super().validate()
        self.norm_topk = self.config.norm_topk_prob


class Qwen2MoeOnnx(_QwenMoE):
    genai_type = "qwen2"

    def shared(self, ctx: Context, s: Scope, i: int, x2d: str) -> str | None:
        pre = f"model.layers.{i}.mlp"
        if not ctx.weights.has(f"{pre}.shared_expert.gate_proj.weight"):
            return None
        y = dense_mlp(ctx, s.child("shared_expert"), x2d, f"{pre}.shared_expert", self.proj)
        gate = ctx.weights.linear(
            s.child("shared_expert_gate"), x2d, f"{pre}.shared_expert_gate.weight", keep_fp32=True
        )
        return s.op("Mul", [s.op("Sigmoid", [gate], "SharedGate/Sigmoid"), y], "SharedGate/Mul")


class Qwen3MoeOnnx(_QwenMoE):
    genai_type = "qwen3"

    def per_head_norm(self, ctx: Context, s: Scope, pre: str, q: str, k: str):
        # Qwen3 normalises each head over head_dim (unlike OLMoE's full-width norm).
        return self.rms_head_norms(ctx, s, pre, q, k)
