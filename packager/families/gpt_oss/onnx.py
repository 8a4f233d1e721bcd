"""gpt-oss in ONNX: sinks, sliding-window masks, the biased router, expert biases, clamped SwiGLU.

Every piece is standard ONNX: a sliding-window layer gets its own additive mask (the last
`sliding_window` positions), the sinks are a per-head column the softmax normalises over and
that is dropped after it (transformers' eager attention), the router's bias is added to its
logits and its top-k values softmaxed (the same weights as softmax-then-renormalise), and the
experts add their biases and compute `(clamp(up, ±limit) + 1) * g * sigmoid(alpha * g)` with
`g = min(gate, limit)` (standard ops in float and int4 builds; in int8 builds onnxruntime's QMoE
node, whose bias inputs, activation_alpha/beta and swiglu_limit are exactly this). MXFP4 experts
are dequantized exactly (every MXFP4 weight is a float32) before the exporter writes them in the
build's precision.
"""

from __future__ import annotations

import numpy as np

from packager.families.gpt_oss import mxfp4
from packager.families.gpt_oss.config import GptOssConfig
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import (
    Context,
    apply_rope,
    attend_with_past,
)
from packager.onnx_export.graph import Scope
from packager.onnx_export.moe import ExpertExtras


class GptOssOnnx(OnnxAdapter):
    config: GptOssConfig
    genai_type = "gpt_oss"
    norm_topk = True  # softmax over the top-k logits = softmax, then renormalise the top-k

    def validate(self) -> None:
        c = self.config
        if c.rope.partial_rotary_factor != 1.0:
            self.refuse("partial_rotary_factor != 1 is not exported")
        if self.n_heads % self.n_kv:
            self.refuse(f"{self.n_heads} heads are not a multiple of {self.n_kv} KV heads")

    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.mlp"

    def router_tensors(self, i: int) -> tuple[str, str | None]:
        return f"model.layers.{i}.mlp.router.weight", f"model.layers.{i}.mlp.router.bias"

    # ----- attention --------------------------------------------------------------------------
    def attention(self, ctx: Context, s: Scope, i: int, x: str, past: tuple[str, str]):
        w, pre = ctx.weights, f"model.layers.{i}.self_attn"
        q, k, v = (w.linear(s.child(f"{p}_proj"), x, f"{pre}.{p}_proj.weight",
                            bias=f"{pre}.{p}_proj.bias") for p in ("q", "k", "v"))  # fmt: skip
        q = apply_rope(s.child("q_rope"), q, ctx.rope, self.head_dim, self.n_heads)
        k = apply_rope(s.child("k_rope"), k, ctx.rope, self.head_dim, self.n_kv)
        mask = None
        if self.config.sliding()[i]:
            window = self.config.require(self.config.sliding_window, "sliding_window")
            mask = self.window_mask(ctx, int(window))
        out, k_all, v_all = attend_with_past(
            s, ctx, q, k, v, past, self.n_heads, self.n_kv, (self.head_dim, self.head_dim),
            self.head_dim**-0.5, mask=mask, sinks=w.vector(f"{pre}.sinks"))
        y = w.linear(s.child("o_proj"), out, f"{pre}.o_proj.weight", bias=f"{pre}.o_proj.bias")
        return y, k_all, v_all

    # ----- experts ----------------------------------------------------------------------------
    def expert_readers(self, i: int):
        """(gate_up(e) -> [2F, H], gate rows first, then up; down(e) -> [H, F])."""
        pre, c = f"model.layers.{i}.mlp.experts", self.config
        whole: dict[str, np.ndarray] = {}  # each tensor is read (and dequantized) once

        def weight(proj: str) -> np.ndarray:  # [E, out, in], the checkpoint's numbers
            if proj not in whole:
                whole.clear()
                if c.mxfp4:
                    whole[proj] = mxfp4.dequantize(self.ckpt.read(f"{pre}.{proj}_blocks"),
                                                   self.ckpt.read(f"{pre}.{proj}_scales"))
                else:
                    whole[proj] = self.ckpt.read(f"{pre}.{proj}").transpose(0, 2, 1)
            return whole[proj]

        def gate_up(e: int) -> np.ndarray:
            rows = weight("gate_up_proj")[e]  # gate and up interleaved by row
            return np.concatenate([rows[0::2], rows[1::2]], axis=0)

        return gate_up, (lambda e: weight("down_proj")[e])

    def expert_extras(self, ctx: Context, i: int) -> ExpertExtras:
        pre, c = f"model.layers.{i}.mlp.experts", self.config
        gub = self.ckpt.read(f"{pre}.gate_up_proj_bias")  # gate and up interleaved
        return ExpertExtras(
            name=pre,
            gate_up_bias=np.concatenate([gub[:, 0::2], gub[:, 1::2]], axis=1),
            down_bias=self.ckpt.read(f"{pre}.down_proj_bias"),
            swiglu=(float(c.swiglu_alpha), 1.0, float(c.swiglu_limit)),
        )
