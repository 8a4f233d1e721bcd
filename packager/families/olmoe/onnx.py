"""OLMoE: RMSNorm over the whole q and k projections (before the head split), optional clip."""

from __future__ import annotations

from packager.families.olmoe.config import OlmoeConfig
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import Context
from packager.onnx_export.graph import Scope


class OlmoeOnnx(OnnxAdapter):
    config: OlmoeConfig
    genai_type = "olmo"  # genai has no olmoe type; its generic decoder runs it

    def validate(self) -> None:
        super().validate()
        self.norm_topk = self.config.norm_topk_prob

    def pre_heads(self, ctx: Context, s: Scope, pre: str, q: str, k: str, v: str):
        w = ctx.weights
        q = s.rms_norm(q, w.vector(f"{pre}.q_norm.weight"), self.eps, "q_norm")
        k = s.rms_norm(k, w.vector(f"{pre}.k_norm.weight"), self.eps, "k_norm")
        clip = self.config.clip_qkv
        if clip is not None:
            lo, hi = s.f32(-float(clip)), s.f32(float(clip))
            q, k, v = (s.op("Clip", [t, lo, hi], f"clip_{n}")
                       for t, n in zip((q, k, v), "qkv", strict=True))  # fmt: skip
        return q, k, v
