"""Qwen2-MoE (qkv bias, sigmoid-gated shared expert) and Qwen3-MoE (per-head q/k RMSNorm)."""

from __future__ import annotations

from packager.onnx_export.blocks import Context, dense_mlp
from packager.onnx_export.families.base import OnnxFamily, register
from packager.onnx_export.graph import Scope


class _QwenMoE(OnnxFamily):
    def validate(self) -> None:
        super().validate()
        self.norm_topk = bool(self.config.get("norm_topk_prob", False))

    @property
    def moe_layers(self) -> tuple[int, ...]:
        # transformers: sparse unless listed in mlp_only_layers or off the sparse step.
        c = self.config
        skip = set(c.get("mlp_only_layers") or [])
        step = int(c.get("decoder_sparse_step", 1) or 1)
        return tuple(i for i in range(self.n_layers) if i not in skip and (i + 1) % step == 0)


@register
class Qwen2MoeFamily(_QwenMoE):
    hf_architectures = ("Qwen2MoeForCausalLM",)
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


@register
class Qwen3MoeFamily(_QwenMoE):
    hf_architectures = ("Qwen3MoeForCausalLM",)
    genai_type = "qwen3"

    def per_head_norm(self, ctx: Context, s: Scope, pre: str, q: str, k: str):
        # Qwen3 normalises each head over head_dim (unlike OLMoE's full-width norm).
        w = ctx.weights
        q = s.rms_norm(q, w.vector(f"{pre}.q_norm.weight"), self.eps, "q_norm")
        k = s.rms_norm(k, w.vector(f"{pre}.k_norm.weight"), self.eps, "k_norm")
        return q, k
