"""LFM2-MoE in ONNX: gated short convolutions beside GQA attention, a sigmoid router with a
selection bias.

A convolution layer projects x to (B, C, x'), convolves B * x' over time with a depthwise
kernel of `conv_L_cache` taps and multiplies by C; its state is the last `conv_L_cache - 1`
values of B * x' per channel, carried as `past_conv.{i}` / `present_conv.{i}` [1, hidden,
L - 1] (packager/onnx_export/recurrent.py). Attention layers normalise each head's q and k;
the router picks on sigmoid(logits) + expert_bias and weighs by the unbiased sigmoid scores,
renormalised (+1e-6, as transformers) and scaled.
"""

from __future__ import annotations

from typing import ClassVar

from packager.families.lfm2moe.config import ATTENTION, CONV, Lfm2MoeConfig
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import Context, apply_rope, attend_with_past, dense_mlp, per_head
from packager.onnx_export.graph import Scope
from packager.onnx_export.moe import topk
from packager.onnx_export.recurrent import CONV as CONV_STATE
from packager.onnx_export.recurrent import StateSpec, causal_conv, conv_state, mask_padding


class Lfm2MoeOnnx(OnnxAdapter):
    config: Lfm2MoeConfig
    genai_type = "lfm2"  # onnxruntime-genai runs no recurrent state for it; named for the record
    proj: ClassVar[tuple[str, str, str]] = ("w1", "w3", "w2")
    moe_modules: ClassVar[tuple[str, ...]] = ("feed_forward",)
    final_norm: ClassVar[str] = "model.embedding_norm"

    def validate(self) -> None:
        c = self.config
        if len(c.layer_types) != c.n_layers or set(c.layer_types) - {CONV, ATTENTION}:
            self.refuse(f"layer_types must give {c.n_layers} layers of '{CONV}' or "
                        f"'{ATTENTION}', got {list(c.layer_types)}")  # fmt: skip
        if c.hidden_act != "silu":
            self.refuse(f"hidden_act '{c.hidden_act}' (only silu is exported)")
        if c.conv_cache < 2:
            self.refuse(f"conv_L_cache={c.conv_cache} (a short convolution needs 2 taps or more)")
        if c.rope.partial_rotary_factor != 1.0:
            self.refuse("partial_rotary_factor != 1 is not exported")
        if self.n_heads % self.n_kv:
            self.refuse(f"{self.n_heads} heads are not a multiple of {self.n_kv} KV heads")

    def layer_norms(self, i: int) -> tuple[str, str]:
        return f"model.layers.{i}.operator_norm", f"model.layers.{i}.ffn_norm"

    # ----- short convolution -----------------------------------------------------------------
    def states(self) -> dict[int, tuple[StateSpec, ...]]:
        spec = (conv_state(self.hidden, self.config.conv_cache),)
        return {i: spec for i in self.config.conv_layers}

    def mixer(self, ctx: Context, s: Scope, i: int, x: str,
              past: dict[str, str]) -> tuple[str, dict[str, str]]:
        w, pre, hdim = ctx.weights, f"model.layers.{i}.conv", self.hidden
        bias = self.config.conv_bias
        x = mask_padding(s, x, "attention_mask")
        bcx = w.linear(s.child("in_proj"), x, f"{pre}.in_proj.weight",
                       bias=f"{pre}.in_proj.bias" if bias else None)  # fmt: skip
        b, c, xx = s.split(bcx, [hdim, hdim, hdim], -1, "SplitBCx")
        kernel = w.table(f"{pre}.conv.weight", self.ckpt.read(f"{pre}.conv.weight"))
        conv_bias = w.vector(f"{pre}.conv.bias") if bias else None
        y, present = causal_conv(s.child("conv"), s.op("Mul", [b, xx], "Bx"), past[CONV_STATE],
                                 kernel, self.config.conv_cache, hdim, conv_bias)  # fmt: skip
        y = s.op("Mul", [c, y], "Cy")
        out = w.linear(s.child("out_proj"), y, f"{pre}.out_proj.weight",
                       bias=f"{pre}.out_proj.bias" if bias else None)  # fmt: skip
        return out, {CONV_STATE: present}

    # ----- attention -------------------------------------------------------------------------
    def attention(self, ctx: Context, s: Scope, i: int, x: str, past: tuple[str, str]):
        w, pre, d = ctx.weights, f"model.layers.{i}.self_attn", self.head_dim
        q, k, v = (w.linear(s.child(f"{p}_proj"), x, f"{pre}.{p}_proj.weight")
                   for p in ("q", "k", "v"))  # fmt: skip
        q = per_head(s, q, self.n_heads, d, lambda h: s.rms_norm(
            h, w.vector(f"{pre}.q_layernorm.weight"), self.eps, "q_norm"), "q_norm")
        k = per_head(s, k, self.n_kv, d, lambda h: s.rms_norm(
            h, w.vector(f"{pre}.k_layernorm.weight"), self.eps, "k_norm"), "k_norm")
        q = apply_rope(s.child("q_rope"), q, ctx.rope, d, self.n_heads)
        k = apply_rope(s.child("k_rope"), k, ctx.rope, d, self.n_kv)
        out, k_all, v_all = attend_with_past(
            s, ctx, q, k, v, past, self.n_heads, self.n_kv, (d, d), d**-0.5)
        return w.linear(s.child("out_proj"), out, f"{pre}.out_proj.weight"), k_all, v_all

    # ----- router ----------------------------------------------------------------------------
    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        c = self.config
        scores = s.op("Sigmoid", [logits], "Sigmoid")
        choose = scores
        if c.use_expert_bias:
            bias = ctx.weights.vector(f"{self.moe_prefix(i)}.expert_bias")
            choose = s.op("Add", [scores, bias], "SelectionBias")
        _, ids = topk(s, choose, self.top_k)
        weights = s.op("GatherElements", [scores, ids], "ChosenScores", axis=-1)
        if c.norm_topk_prob:
            total = s.op("ReduceSum", [weights, s.const([-1])], "TopKSum", keepdims=1)
            weights = s.op("Div", [weights, s.op("Add", [total, s.f32(1e-6)], "TopKSumEps")],
                           "Renormalize")  # fmt: skip
        if c.routed_scaling_factor != 1.0:
            weights = s.op("Mul", [weights, s.f32(c.routed_scaling_factor)], "RoutedScaling")
        return weights, ids

    def dense_mlp(self, ctx: Context, s: Scope, i: int, x: str) -> str:
        return dense_mlp(ctx, s, x, f"model.layers.{i}.feed_forward", self.proj)
