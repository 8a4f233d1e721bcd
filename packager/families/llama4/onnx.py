"""Llama 4 (text model) in ONNX, as transformers' Llama4TextModel computes it.

* Router: top-k of the logits, each chosen expert's weight the sigmoid of its logit, and that
  weight multiplies the expert's *input* (`ExpertExtras.weigh_input`: the gathered expert graphs
  scale the gathered rows; onnxruntime's QMoE, which weighs outputs, gets one node per top-k
  slot fed the weighted row with weight 1, i.e. one node for every released Llama 4). The
  shared expert (`feed_forward.shared_expert`) is added to the routed sum; layers without a
  router are dense MLPs of `intermediate_size_mlp`.
* Experts are read fused and input-major as released (gate_up_proj [E, hidden, 2F], gate
  columns first; down_proj [E, F, hidden]) and transposed per expert to the exporter's
  [out, in].
* Rope layers rotate adjacent pairs (complex rotary) with llama3 frequency scaling when the
  config asks for it, then apply the weightless q/k RMSNorm when `use_qk_norm`; no-rope layers
  skip both and scale queries by log1p(floor((position + 1) / floor_scale)) * attn_scale + 1
  when `attn_temperature_tuning`.
* Chunked layers (`layer_types` "chunked_attention", by default the rope layers when
  `attention_chunk_size` is set) see only keys in their own chunk; the others are causal.
  Unlike llama.cpp's graph, none of these is hard-coded: every field is read.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from packager.errors import UnsupportedArchitectureError
from packager.families.llama4.config import Llama4Config
from packager.families.llama4.gguf import llama3_frequencies
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import (
    Context,
    RopeSpec,
    apply_rope,
    attend_with_past,
    causal_mask,
    dense_mlp,
    per_head,
)
from packager.onnx_export.graph import Scope
from packager.onnx_export.moe import ExpertExtras, topk

CHUNKED, FULL = "chunked_attention", "full_attention"


class Llama4Onnx(OnnxAdapter):
    config: Llama4Config
    genai_type = "llama4"

    def validate(self) -> None:
        c = self.config
        if c.hidden_act != "silu":
            self.refuse(f"hidden_act '{c.hidden_act}' (only silu is exported)")
        if self.n_heads % self.n_kv:
            self.refuse(f"{self.n_heads} heads are not a multiple of {self.n_kv} KV heads")
        if c.rope.kind not in ("default", "linear", "yarn", "llama3"):
            self.refuse(f"rope type '{c.rope.kind}' (exported: default, linear, yarn, llama3)")
        if c.layer_types and (len(c.layer_types) < c.n_layers
                              or any(t not in (CHUNKED, FULL) for t in c.layer_types)):
            self.refuse(f"layer_types {list(c.layer_types)!r} (expected {c.n_layers} of "
                        f"{CHUNKED} or {FULL})")  # fmt: skip
        chunk = c.attention_chunk_size
        if any(self._chunked(i) for i in range(c.n_layers)) and (chunk is None or chunk < 1):
            self.refuse(f"chunked layers need a positive attention_chunk_size, not {chunk}")
        if c.floor_scale < 1:
            self.refuse(f"floor_scale={c.floor_scale} (must be positive)")

    def _chunked(self, i: int) -> bool:
        c = self.config
        if c.layer_types:
            return c.layer_types[i] == CHUNKED
        return c.attention_chunk_size is not None and c.uses_rope(i)

    # ----- rotary -----------------------------------------------------------------------------
    def rope(self) -> RopeSpec:
        if self.config.rope.kind == "llama3":
            _, inv = llama3_frequencies(self.config)
            return RopeSpec(inv.astype(np.float32), 1.0, interleaved=True)
        spec = super().rope()
        return RopeSpec(spec.inv_freq, spec.attention_scaling, interleaved=True)

    # ----- attention --------------------------------------------------------------------------
    def attention(self, ctx: Context, s: Scope, i: int, x: str, past: tuple[str, str]):
        c, w, pre = self.config, ctx.weights, f"model.layers.{i}.self_attn"

        def proj(p: str, inp: str) -> str:
            bias = f"{pre}.{p}_proj.bias"
            return w.linear(s.child(f"{p}_proj"), inp, f"{pre}.{p}_proj.weight",
                            bias=bias if w.has(bias) else None)  # fmt: skip

        d = self.head_dim
        q, k, v = proj("q", x), proj("k", x), proj("v", x)
        if c.uses_rope(i):
            q = apply_rope(s.child("q_rope"), q, ctx.rope, d, self.n_heads)
            k = apply_rope(s.child("k_rope"), k, ctx.rope, d, self.n_kv)
            if c.use_qk_norm:
                q = per_head(s, q, self.n_heads, d, lambda h: _l2_norm(s, h, self.eps, "q_norm"),
                             "q_norm")  # fmt: skip
                k = per_head(s, k, self.n_kv, d, lambda h: _l2_norm(s, h, self.eps, "k_norm"),
                             "k_norm")  # fmt: skip
        elif c.attn_temperature_tuning:
            q = s.op("Mul", [q, self._temperature(ctx)], "Temperature")
        mask = self._chunk_mask(ctx) if self._chunked(i) else None
        out, k_all, v_all = attend_with_past(
            s, ctx, q, k, v, past, self.n_heads, self.n_kv, (self.head_dim, self.head_dim),
            self.head_dim**-0.5, mask=mask)
        return proj("o", out), k_all, v_all

    def _chunk_mask(self, ctx: Context) -> str:
        chunk = int(self.config.require(self.config.attention_chunk_size, "attention_chunk_size"))
        return self.per_graph(ctx, "chunk_mask", lambda: causal_mask(
            ctx.graph.scope("/model/chunked_mask"), "input_ids", "attention_mask", chunk=chunk))

    def _temperature(self, ctx: Context) -> str:
        """[1, S, 1]: the no-rope layers' query scale at each position, built once."""
        c = self.config

        def build() -> str:
            s = ctx.graph.scope("/model/attn_temperature")
            pos = s.op("Cast", ["position_ids"], "Positions", to=TensorProto.FLOAT)
            steps = s.op("Floor", [s.op("Div", [s.op("Add", [pos, s.f32(1.0)], "Plus1"),
                                                s.f32(float(c.floor_scale))], "PerFloor")],
                         "Floor")  # fmt: skip
            log = s.op("Log", [s.op("Add", [steps, s.f32(1.0)], "Log1pArg")], "Log1p")
            scale = s.op("Add", [s.op("Mul", [log, s.f32(c.attn_scale)], "Scaled"),
                                 s.f32(1.0)], "Scale")  # fmt: skip
            return s.unsqueeze(scale, [2], "PerTokenRow")

        return self.per_graph(ctx, "temperature", build)

    # ----- routing and experts ------------------------------------------------------------
    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.feed_forward"

    def router_tensors(self, i: int) -> tuple[str, str | None]:
        return f"model.layers.{i}.feed_forward.router.weight", None

    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        values, ids = topk(s, logits, self.top_k)
        return s.op("Sigmoid", [values], "Sigmoid"), ids

    def expert_extras(self, ctx: Context, i: int) -> ExpertExtras:
        return ExpertExtras(name=f"{self.moe_prefix(i)}.experts", weigh_input=True)

    def expert_readers(self, i: int):
        """(gate_up(e) -> [2F, H], gate rows first; down(e) -> [H, F]) from the fused,
        input-major stacks."""
        pre = f"{self.moe_prefix(i)}.experts"
        names = (f"{pre}.gate_up_proj", f"{pre}.down_proj")
        missing = [n for n in names if n not in self.ckpt.tensors]
        if missing:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: expert tensor {missing[0]} not found in the checkpoint "
                "(Llama 4 stores each layer's experts fused)"
            )
        whole: dict[str, np.ndarray] = {}  # a fused tensor is read once, not once per expert

        def one(name: str, e: int) -> np.ndarray:
            if name not in whole:
                whole.clear()
                whole[name] = self.ckpt.read(name)
            return np.ascontiguousarray(whole[name][e].T)

        return (lambda e: one(names[0], e)), (lambda e: one(names[1], e))

    def shared(self, ctx: Context, s: Scope, i: int, x2d: str) -> str | None:
        pre = f"{self.moe_prefix(i)}.shared_expert"
        return dense_mlp(ctx, s.child("shared_expert"), x2d, pre, self.proj)

    def dense_mlp(self, ctx: Context, s: Scope, i: int, x: str) -> str:
        return dense_mlp(ctx, s, x, f"model.layers.{i}.feed_forward", self.proj)


def _l2_norm(s: Scope, x: str, eps: float, name: str) -> str:
    """x / sqrt(mean(x^2) + eps) over each head: transformers' weightless RMSNorm."""
    sq = s.op("Pow", [x, s.f32(2.0)], f"{name}/Square")
    mean = s.op("ReduceMean", [sq, s.const([-1])], f"{name}/ReduceMean", keepdims=1)
    std = s.op("Sqrt", [s.op("Add", [mean, s.f32(eps)], f"{name}/AddEps")], f"{name}/Sqrt")
    return s.op("Div", [x, std], f"{name}/Normalize")
