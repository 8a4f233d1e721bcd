"""Qwen3.5-MoE and Qwen3-Next in ONNX: gated DeltaNet beside gated full attention.

A DeltaNet layer projects x to q, k, v (one causal depthwise convolution over the three, silu),
a gate z and per value head b (beta = sigmoid(b)) and a (the decay g = -exp(A_log) *
softplus(a + dt_bias)); q and k are L2-normalised (q scaled by key_dim^-0.5), repeated per key
head over its run of value heads, and run through the gated delta rule one token at a time
(packager/onnx_export/recurrent.py); the output is RMS-normalised per head, gated by silu(z)
and projected out. Its state is the convolution's last (kernel - 1) inputs, `past_conv.{i}`
[1, 2 key_dim + value_dim, kernel - 1], and the delta rule's matrix, `past_ssm.{i}`
[1, value heads, key head dim, value head dim].

Full-attention layers are Qwen3's with a sigmoid output gate (the second half of each head's
q_proj rows), rotary on the leading `partial_rotary_factor` of each head (M-RoPE with text
positions: every section sees the same position, so plain rotary). Every RMSNorm but the
DeltaNet's is zero-centred, x * (1 + w). Routing and the sigmoid-gated shared expert are
Qwen2-MoE's. Qwen3-Next differs only in its fused, per-key-head interleaved input projections.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from packager.families.qwen35moe.config import FULL, LINEAR, QwenHybridConfig
from packager.families.qwen_moe.onnx import Qwen2MoeOnnx
from packager.onnx_export.blocks import Context, attend_with_past, per_head
from packager.onnx_export.graph import Scope
from packager.onnx_export.recurrent import (
    CONV,
    SSM,
    StateSpec,
    causal_conv,
    conv_state,
    delta_rule,
    gated_rms_norm,
    l2_normalize,
    mask_padding,
)

_L2_EPS = 1e-6  # transformers' l2norm (the FLA kernels')


class Qwen35MoeOnnx(Qwen2MoeOnnx):
    config: QwenHybridConfig
    genai_type = "qwen3_5_moe"  # onnxruntime-genai runs no recurrent state; named for the record
    partial_rotary: ClassVar[bool] = True

    def validate(self) -> None:
        c = self.config
        if len(c.kinds) != c.n_layers or set(c.kinds) - {LINEAR, FULL}:
            self.refuse(f"layer_types must give {c.n_layers} layers of '{LINEAR}' or '{FULL}', "
                        f"got {list(c.kinds)}")  # fmt: skip
        if c.hidden_act != "silu":
            self.refuse(f"hidden_act '{c.hidden_act}' (only silu is exported)")
        if c.n_value_heads % c.n_key_heads:
            self.refuse(f"linear_num_value_heads={c.n_value_heads} is not a multiple of "
                        f"linear_num_key_heads={c.n_key_heads}")  # fmt: skip
        if c.rope_dim <= 0 or c.rope_dim % 2:
            self.refuse(f"partial_rotary_factor={c.rope.partial_rotary_factor} leaves an odd or "
                        "empty rotary width")  # fmt: skip
        if self.n_heads % self.n_kv:
            self.refuse(f"{self.n_heads} heads are not a multiple of {self.n_kv} KV heads")
        self.norm_topk = c.norm_topk_prob

    def norm(self, ctx: Context, s: Scope, x: str, prefix: str, name: str) -> str:
        """Zero-centred RMSNorm: the stored weight is w, the scale 1 + w (added in float32, as
        transformers does)."""
        w = self.ckpt.read(f"{prefix}.weight").astype(np.float32)
        scale = ctx.weights.table(f"{prefix}.weight.plus_one", np.float32(1.0) + w)
        return s.rms_norm(x, scale, self.eps, name)

    # ----- gated full attention ----------------------------------------------------------------
    def rope_dim(self) -> int:
        return self.config.rope_dim

    def attention(self, ctx: Context, s: Scope, i: int, x: str, past: tuple[str, str]):
        w, pre, d = ctx.weights, f"model.layers.{i}.self_attn", self.head_dim
        qg = w.linear(s.child("q_proj"), x, f"{pre}.q_proj.weight")
        q, gate = s.split(s.reshape(qg, [0, 0, self.n_heads, 2 * d], "QGateHeads"), [d, d], -1,
                          "SplitGate")  # fmt: skip
        gate = s.reshape(gate, [0, 0, self.n_heads * d], "GateFlat")
        k = w.linear(s.child("k_proj"), x, f"{pre}.k_proj.weight")
        v = w.linear(s.child("v_proj"), x, f"{pre}.v_proj.weight")
        q = s.reshape(self.norm(ctx, s, q, f"{pre}.q_norm", "q_norm"),
                      [0, 0, self.n_heads * d], "q_norm/Tokens")  # fmt: skip
        k = per_head(s, k, self.n_kv, d, lambda h: self.norm(ctx, s, h, f"{pre}.k_norm", "k_norm"),
                     "k_norm")  # fmt: skip
        q = self.rotate(ctx, s, q, self.n_heads, "q_rope")
        k = self.rotate(ctx, s, k, self.n_kv, "k_rope")
        out, k_all, v_all = attend_with_past(
            s, ctx, q, k, v, past, self.n_heads, self.n_kv, (d, d), d**-0.5)
        out = s.op("Mul", [out, s.op("Sigmoid", [gate], "OutputGate")], "GateOutput")
        return w.linear(s.child("o_proj"), out, f"{pre}.o_proj.weight"), k_all, v_all

    # ----- gated DeltaNet ------------------------------------------------------------------
    def states(self) -> dict[int, tuple[StateSpec, ...]]:
        c = self.config
        spec = (conv_state(2 * c.key_dim + c.value_dim, c.conv_kernel),
                StateSpec(SSM, (c.n_value_heads, c.key_head_dim, c.value_head_dim)))
        return {i: spec for i in c.recurrent_layers}

    def projections(self, ctx: Context, s: Scope, i: int, x: str) -> tuple[str, str, str, str]:
        """(qkv [1,S,2 key_dim + value_dim], z [1,S,value_dim], b, a [1,S,value heads])."""
        w, pre = ctx.weights, f"model.layers.{i}.linear_attn"
        return tuple(w.linear(s.child(f"in_proj_{p}"), x, f"{pre}.in_proj_{p}.weight")
                     for p in ("qkv", "z", "b", "a"))  # type: ignore[return-value]  # fmt: skip

    def mixer(self, ctx: Context, s: Scope, i: int, x: str,
              past: dict[str, str]) -> tuple[str, dict[str, str]]:
        c, w, pre = self.config, ctx.weights, f"model.layers.{i}.linear_attn"
        hk, hv, dk, dv = c.n_key_heads, c.n_value_heads, c.key_head_dim, c.value_head_dim
        x = mask_padding(s, x, "attention_mask")
        qkv, z, b, a = self.projections(ctx, s, i, x)
        channels = 2 * c.key_dim + c.value_dim
        kernel = w.table(f"{pre}.conv1d.weight", self.ckpt.read(f"{pre}.conv1d.weight"))
        qkv, conv = causal_conv(s.child("conv1d"), qkv, past[CONV], kernel, c.conv_kernel,
                                channels, silu=True)  # fmt: skip
        q, k, v = s.split(qkv, [c.key_dim, c.key_dim, c.value_dim], -1, "SplitQKV")
        q = self._per_value_head(s, s.reshape(q, [-1, hk, dk], "QHeads"), hk, hv, dk, "q")
        k = self._per_value_head(s, s.reshape(k, [-1, hk, dk], "KHeads"), hk, hv, dk, "k")
        q = s.op("Mul", [l2_normalize(s, q, _L2_EPS, "q_l2"), s.f32(dk**-0.5)], "ScaleQ")
        k = l2_normalize(s, k, _L2_EPS, "k_l2")
        v = s.reshape(v, [-1, hv, dv], "VHeads")
        beta = s.op("Sigmoid", [s.reshape(b, [-1, hv], "BFlat")], "Beta")
        neg_a = w.table(f"{pre}.A", -np.exp(self.ckpt.read(f"{pre}.A_log").astype(np.float32)))
        dt = s.op("Softplus", [s.op("Add", [s.reshape(a, [-1, hv], "AFlat"),
                                            w.vector(f"{pre}.dt_bias")], "AddDtBias")], "Dt")
        decay = s.op("Exp", [s.op("Mul", [dt, neg_a], "G")], "Decay")
        state = s.reshape(past[SSM], [hv, dk, dv], "State")
        out, final = delta_rule(s.child("delta_rule"), q, k, v, decay, beta, state, hv, dk, dv)
        zh = s.reshape(z, [-1, hv, dv], "ZHeads")
        out = gated_rms_norm(s, out, zh, w.vector(f"{pre}.norm.weight"), self.eps, "norm")
        out = s.reshape(out, [1, -1, c.value_dim], "Merge")
        y = w.linear(s.child("out_proj"), out, f"{pre}.out_proj.weight")
        return y, {CONV: conv, SSM: s.reshape(final, [1, hv, dk, dv], "PresentState")}

    @staticmethod
    def _per_value_head(s: Scope, x: str, hk: int, hv: int, d: int, name: str) -> str:
        """[S, hk, d] -> [S, hv, d]: each key head repeated for its run of value heads."""
        if hk == hv:
            return x
        tiled = s.op("Expand", [s.unsqueeze(x, [2], f"{name}/Group"),
                                s.const([1, 1, hv // hk, 1])], f"{name}/Repeat")  # fmt: skip
        return s.reshape(tiled, [0, hv, d], f"{name}/PerValueHead")


class Qwen3NextOnnx(Qwen35MoeOnnx):
    """Qwen3-Next: q, k, v, z in one projection and b, a in another, laid out per key head."""

    genai_type = "qwen3_next"

    def projections(self, ctx: Context, s: Scope, i: int, x: str) -> tuple[str, str, str, str]:
        c, w, pre = self.config, ctx.weights, f"model.layers.{i}.linear_attn"
        hk, r, dk, dv = c.n_key_heads, c.n_value_heads // c.n_key_heads, c.key_head_dim, \
            c.value_head_dim
        qkvz = w.linear(s.child("in_proj_qkvz"), x, f"{pre}.in_proj_qkvz.weight")
        qkvz = s.reshape(qkvz, [0, 0, hk, 2 * dk + 2 * r * dv], "QKVZPerKeyHead")
        q, k, v, z = s.split(qkvz, [dk, dk, r * dv, r * dv], -1, "SplitQKVZ")
        q, k = s.reshape(q, [0, 0, c.key_dim], "QFlat"), s.reshape(k, [0, 0, c.key_dim], "KFlat")
        v, z = (s.reshape(t, [0, 0, c.value_dim], f"{n}Flat") for t, n in ((v, "V"), (z, "Z")))
        qkv = s.op("Concat", [q, k, v], "QKV", axis=-1)
        ba = w.linear(s.child("in_proj_ba"), x, f"{pre}.in_proj_ba.weight")
        b, a = s.split(s.reshape(ba, [0, 0, hk, 2 * r], "BAPerKeyHead"), [r, r], -1, "SplitBA")
        hv = c.n_value_heads
        return qkv, z, s.reshape(b, [0, 0, hv], "BFlat3"), s.reshape(a, [0, 0, hv], "AFlat3")
