"""Granite-4.0-H in ONNX: Mamba2 layers beside attention, routed experts plus a shared MLP, the
Granite multipliers.

A Mamba2 layer projects x to a gate z, x B C (one causal depthwise convolution over the three,
silu) and a time step per head; dt = softplus(dt + dt_bias), each group's B and C serve its run
of heads, and the selective state update runs one token at a time
(packager/onnx_export/recurrent.py), plus the D skip; the output is multiplied by silu(z),
RMS-normalised per group and projected out. Its state is the convolution's last (d_conv - 1)
inputs, `past_conv.{i}` [1, d_inner + 2 groups x d_state, d_conv - 1], and the SSM matrix,
`past_ssm.{i}` [1, heads, head dim, d_state] (transformers' layout).

The multipliers: the embedding is scaled by `embedding_multiplier` (the skeleton's
`embedding_scale`); attention's softmax scale is `attention_multiplier`; both branches of every
layer are scaled by `residual_multiplier` before their residual add (the mixer's output, the
routing weights and the shared MLP's output: the expert mix is linear in its weights); logits
are divided by `logits_scaling`, folded into the final norm's weight (the LM head is linear).
Rotary only where `position_embedding_type` is "rope". The router softmaxes its top-k logits.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.granitehybrid.config import ATTENTION, MAMBA, NO_LIMIT, GraniteHybridConfig
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import Context, apply_rope, attend_with_past
from packager.onnx_export.graph import Scope
from packager.onnx_export.moe import topk
from packager.onnx_export.recurrent import (
    CONV,
    SSM,
    StateSpec,
    causal_conv,
    conv_state,
    mask_padding,
    selective_scan,
)


class GraniteHybridOnnx(OnnxAdapter):
    config: GraniteHybridConfig
    genai_type = "granite"  # onnxruntime-genai runs no recurrent state; named for the record
    moe_modules: ClassVar[tuple[str, ...]] = ("block_sparse_moe",)

    def validate(self) -> None:
        c = self.config
        if len(c.kinds) != c.n_layers or set(c.kinds) - {MAMBA, ATTENTION}:
            self.refuse(f"layer_types must give {c.n_layers} layers of Mamba2 or attention, "
                        f"got {list(c.kinds)}")  # fmt: skip
        if c.hidden_act != "silu":
            self.refuse(f"hidden_act '{c.hidden_act}' (only silu is exported)")
        if c.mamba_heads % c.mamba_groups or c.d_inner % c.mamba_groups:
            self.refuse(f"mamba_n_groups={c.mamba_groups} does not divide the Mamba heads "
                        f"({c.mamba_heads}) and inner size ({c.d_inner})")  # fmt: skip
        if c.mamba_heads * c.mamba_head_dim != c.d_inner:
            self.refuse(f"mamba_n_heads x mamba_d_head = {c.mamba_heads * c.mamba_head_dim} is "
                        f"not the inner size {c.d_inner}")  # fmt: skip
        if c.n_experts <= 0:
            self.refuse("num_local_experts=0 (a dense Granite) is not exported")
        if self.n_heads % self.n_kv:
            self.refuse(f"{self.n_heads} heads are not a multiple of {self.n_kv} KV heads")
        self.embedding_scale = c.embedding_multiplier

    def _residual(self, s: Scope, y: str, name: str) -> str:
        r = self.config.residual_multiplier
        return y if r == 1.0 else s.op("Mul", [y, s.f32(r)], name)

    def norm(self, ctx: Context, s: Scope, x: str, prefix: str, name: str) -> str:
        """RMSNorm; the final one's weight carries the 1 / logits_scaling of the LM head."""
        scale = self.config.logits_scaling
        if prefix != self.final_norm or scale == 1.0:
            return super().norm(ctx, s, x, prefix, name)
        w = self.ckpt.read(f"{prefix}.weight").astype(np.float32) / np.float32(scale)
        weight = ctx.weights.table(f"{prefix}.weight.over_logits_scaling", w)
        return s.rms_norm(x, weight, self.eps, name)

    # ----- attention ---------------------------------------------------------------------
    def attention(self, ctx: Context, s: Scope, i: int, x: str, past: tuple[str, str]):
        w, pre, d = ctx.weights, f"model.layers.{i}.self_attn", self.head_dim
        q, k, v = (w.linear(s.child(f"{p}_proj"), x, f"{pre}.{p}_proj.weight")
                   for p in ("q", "k", "v"))  # fmt: skip
        if self.config.position_embedding_type == "rope":
            q = apply_rope(s.child("q_rope"), q, ctx.rope, d, self.n_heads)
            k = apply_rope(s.child("k_rope"), k, ctx.rope, d, self.n_kv)
        out, k_all, v_all = attend_with_past(
            s, ctx, q, k, v, past, self.n_heads, self.n_kv, (d, d),
            self.config.attention_multiplier)
        y = w.linear(s.child("o_proj"), out, f"{pre}.o_proj.weight")
        return self._residual(s, y, "ResidualScale"), k_all, v_all

    # ----- Mamba2 ------------------------------------------------------------------------
    def states(self) -> dict[int, tuple[StateSpec, ...]]:
        c = self.config
        spec = (conv_state(c.conv_channels, c.mamba_conv),
                StateSpec(SSM, (c.mamba_heads, c.mamba_head_dim, c.mamba_state)))  # fmt: skip
        return {i: spec for i in c.mamba_layers}

    def mixer(self, ctx: Context, s: Scope, i: int, x: str,
              past: dict[str, str]) -> tuple[str, dict[str, str]]:
        c, w, pre = self.config, ctx.weights, f"model.layers.{i}.mamba"
        h, p, n, g, inner = (c.mamba_heads, c.mamba_head_dim, c.mamba_state, c.mamba_groups,
                             c.d_inner)  # fmt: skip
        x = mask_padding(s, x, "attention_mask")
        proj = w.linear(s.child("in_proj"), x, f"{pre}.in_proj.weight")
        z, xbc, dt = s.split(proj, [inner, c.conv_channels, h], -1, "SplitZxBCdt")
        kernel = w.table(f"{pre}.conv1d.weight", self.ckpt.read(f"{pre}.conv1d.weight"))
        bias = w.vector(f"{pre}.conv1d.bias") if w.has(f"{pre}.conv1d.bias") else None
        xbc, conv = causal_conv(s.child("conv1d"), xbc, past[CONV], kernel, c.mamba_conv,
                                c.conv_channels, bias, silu=True)  # fmt: skip
        xbc = mask_padding(s.child("conv_out"), xbc, "attention_mask")
        xs, b, cc = s.split(xbc, [inner, g * n, g * n], -1, "SplitXBC")
        xs = s.reshape(xs, [-1, h, p], "XHeads")
        b = _per_head(s, s.reshape(b, [-1, g, n], "BGroups"), g, h, n, "b")
        cc = _per_head(s, s.reshape(cc, [-1, g, n], "CGroups"), g, h, n, "c")
        dt = s.op("Softplus", [s.op("Add", [w.vector(f"{pre}.dt_bias"),
                                            s.reshape(dt, [-1, h], "DtFlat")], "AddDtBias")],
                  "Dt")  # fmt: skip
        if c.time_step_limit != NO_LIMIT:
            lo, hi = c.time_step_limit
            dt = s.op("Clip", [dt, s.f32(lo), s.f32(min(hi, float(np.finfo(np.float32).max)))],
                      "DtLimit")  # fmt: skip
        neg_a = w.table(f"{pre}.A", -np.exp(self.ckpt.read(f"{pre}.A_log").astype(np.float32)))
        state = s.reshape(past[SSM], [h, p, n], "State")
        y, final = selective_scan(s.child("scan"), xs, dt, neg_a, b, cc, state, h, p, n)
        d_skip = w.table(f"{pre}.D.col", self.ckpt.read(f"{pre}.D").astype(np.float32)[:, None])
        y = s.op("Add", [y, s.op("Mul", [xs, d_skip], "DSkip")], "WithSkip")
        y = s.reshape(y, [1, -1, inner], "Merge")
        # Gated RMSNorm per group (norm_before_gate=False): norm(y * silu(z)) * w.
        y = s.op("Mul", [y, s.silu(z, "gate")], "Gate")
        grouped = s.reshape(y, [1, -1, g, inner // g], "NormGroups")
        weight = self.ckpt.read(f"{pre}.norm.weight").astype(np.float32).reshape(g, inner // g)
        y = s.rms_norm(grouped, w.table(f"{pre}.norm.weight.grouped", weight), self.eps, "norm")
        y = s.reshape(y, [1, -1, inner], "NormMerge")
        out = w.linear(s.child("out_proj"), y, f"{pre}.out_proj.weight")
        return self._residual(s, out, "ResidualScale"), {
            CONV: conv, SSM: s.reshape(final, [1, h, p, n], "PresentState")}

    # ----- routing, experts, shared MLP --------------------------------------------------
    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.block_sparse_moe"

    def router_tensors(self, i: int) -> tuple[str, str | None]:
        return f"{self.moe_prefix(i)}.router.layer.weight", None

    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        """Softmax over the top-k logits, times the residual multiplier (see the module doc)."""
        values, ids = topk(s, logits, self.top_k)
        weights = s.op("Softmax", [values], "TopKSoftmax", axis=-1)
        return self._residual(s, weights, "ResidualScale"), ids

    def expert_readers(self, i: int):
        """(gate_up(e) -> [2F, H], gate rows first; down(e) -> [H, F]) from the fused
        `input_linear` / `output_linear` stacks, which are already [out, in] per expert."""
        pre = self.moe_prefix(i)
        names = (f"{pre}.input_linear.weight", f"{pre}.output_linear.weight")
        missing = [n for n in names if n not in self.ckpt.tensors]
        if missing:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: expert tensor {missing[0]} not found in the checkpoint"
            )
        whole: dict[str, np.ndarray] = {}  # a fused tensor is read once, not once per expert

        def one(name: str, e: int) -> np.ndarray:
            if name not in whole:
                whole.clear()
                whole[name] = self.ckpt.read(name)
            return whole[name][e]

        return (lambda e: one(names[0], e)), (lambda e: one(names[1], e))

    def shared(self, ctx: Context, s: Scope, i: int, x2d: str) -> str | None:
        w, pre = ctx.weights, f"model.layers.{i}.shared_mlp"
        if not w.has(f"{pre}.input_linear.weight"):
            return None
        size = self.config.shared_intermediate_size
        gu = w.linear(s.child("shared_input"), x2d, f"{pre}.input_linear.weight")
        gate, up = s.split(gu, [size, size], -1, "SharedSplit")
        hidden = s.op("Mul", [s.silu(gate, "shared_act"), up], "SharedGateUp")
        y = w.linear(s.child("shared_output"), hidden, f"{pre}.output_linear.weight")
        return self._residual(s, y, "SharedResidualScale")


def _per_head(s: Scope, x: str, groups: int, heads_: int, d: int, name: str) -> str:
    """[S, groups, d] -> [S, heads, d]: each group's row repeated for its run of heads."""
    if groups == heads_:
        return x
    tiled = s.op("Expand", [s.unsqueeze(x, [2], f"{name}/Group"),
                            s.const([1, 1, heads_ // groups, 1])], f"{name}/Repeat")  # fmt: skip
    return s.reshape(tiled, [0, heads_, d], f"{name}/PerHead")
