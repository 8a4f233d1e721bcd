"""MiMo-V2-Flash in ONNX: full and sliding-window layers, sinks, a narrower scaled V head, partial
rotary at two bases, DeepSeek-V3's router without shared experts.

The pieces are gpt-oss's (the shared adapter's sliding-window mask, `attend`'s sink column)
plus what MiMo adds, each as transformers' MiMoV2Flash computes it:

* per-layer KV caches: a sliding layer caches `swa_num_key_value_heads` heads (twice the full
  layers' in transformers), so `past_key_values.i.*` differ in width between layer kinds (stock
  onnxruntime takes any shapes; onnxruntime-genai's one `num_key_value_heads` cannot describe
  them, so its config records the sliding layers');
* keys and queries `head_dim` wide, values `v_head_dim`; V is multiplied by
  `attention_value_scale` before it is cached (as transformers caches it);
* rotary on the first int(head_dim * partial_rotary_factor) dims of each head (rotate-half),
  at `rope_theta` for full layers and the sliding layers' own base for sliding ones: the
  sliding layers' cos/sin are a second in-graph table, built once;
* the router: sigmoid scores, the selection bias, expert groups, renormalised top-k scaled by
  `routed_scaling_factor` (deepseek3's `sigmoid_group_route`).
"""

from __future__ import annotations

import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.deepseek3.onnx import sigmoid_group_route
from packager.families.mimo2.config import MiMoV2Config
from packager.families.onnx_adapter import OnnxAdapter
from packager.onnx_export.blocks import (
    Context,
    Rope,
    RopeSpec,
    apply_rope,
    attend_with_past,
    rotary,
)
from packager.onnx_export.graph import Scope

# The sliding layers' sinks as released checkpoints and transformers name them.
_SINK_NAMES = ("sinks", "attention_sink", "attention_sink_bias")


class MiMoV2Onnx(OnnxAdapter):
    config: MiMoV2Config
    genai_type = "mimo_v2_flash"  # no onnxruntime-genai type: the generic decoder's fields

    def validate(self) -> None:
        c = self.config
        # transformers builds every layer with `head_dim`, `v_head_dim` and the full head count;
        # a released config that sets other sliding widths describes a model it cannot run.
        for key, got, want in (("swa_head_dim", c.swa_head_dim, c.head_dim),
                               ("swa_v_head_dim", c.swa_v_head_dim, c.v_head_dim),
                               ("swa_num_attention_heads", c.swa_heads, c.n_heads)):
            if got != want:
                self.refuse(f"{key}={got} differs from {want} (one width for both layer kinds)")
        if c.hidden_act != "silu":
            self.refuse(f"hidden_act '{c.hidden_act}' (only silu is exported)")
        for kind, name in zip(c.rope_kinds, ("full_attention", "sliding_attention"), strict=True):
            if kind != "default":
                self.refuse(f"rope_parameters.{name}.rope_type '{kind}' (exported: default)")
        for factor in c.rotary_factors:
            dim = int(c.head_dim * factor)
            if not 0 < dim <= c.head_dim or dim % 2:
                self.refuse(f"partial_rotary_factor={factor} leaves an odd or empty rotary "
                            f"width ({dim} of {c.head_dim})")  # fmt: skip
        for heads_kv in {c.n_kv_heads, c.swa_kv_heads}:
            if c.n_heads % heads_kv:
                self.refuse(f"{c.n_heads} heads are not a multiple of {heads_kv} KV heads")
        if c.scoring_func != "sigmoid":
            self.refuse(f"scoring_func '{c.scoring_func}' (transformers' MiMo router is sigmoid)")
        if c.topk_method != "noaux_tc":
            self.refuse(f"topk_method '{c.topk_method}' (transformers' MiMo router is noaux_tc)")
        if c.n_experts % (c.n_group or 1) or c.n_experts // (c.n_group or 1) < 2:
            self.refuse(f"n_group={c.n_group} does not split {c.n_experts} experts into groups "
                        "of 2 or more")  # fmt: skip
        self.sliding = set(c.sliding_layers)

    def _kv(self, i: int) -> tuple[int, int, int]:
        c = self.config
        return (c.swa_kv_heads if i in self.sliding else c.n_kv_heads), c.head_dim, c.v_head_dim

    def kv_layout(self) -> tuple[int, int, int]:
        return max(self.kv_layouts())

    def kv_layouts(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(self._kv(i) for i in range(self.n_layers))

    # ----- rotary: the full layers' table is the graph's; the sliding layers' is built once -----
    def _spec(self, theta: float, factor: float) -> RopeSpec:
        dim = int(self.head_dim * factor)
        inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        return RopeSpec(inv.astype(np.float32), 1.0, interleaved=False)

    def rope(self) -> RopeSpec:
        return self._spec(self.config.full_theta, self.config.rotary_factors[0])

    def _sliding_rope(self, ctx: Context) -> Rope:
        c = self.config
        spec = self._spec(c.swa_theta, c.rotary_factors[1])
        return self.per_graph(ctx, "swa_rope", lambda: rotary(
            ctx.graph.scope("/model/rotary_emb_swa"), "position_ids", spec))

    # ----- attention ------------------------------------------------------------------------
    def attention(self, ctx: Context, s: Scope, i: int, x: str, past: tuple[str, str]):
        c, w, pre = self.config, ctx.weights, f"model.layers.{i}.self_attn"
        sliding = i in self.sliding
        n_kv, k_dim, v_dim = self._kv(i)

        def proj(p: str) -> str:
            bias = f"{pre}.{p}_proj.bias"
            return w.linear(s.child(f"{p}_proj"), x, f"{pre}.{p}_proj.weight",
                            bias=bias if w.has(bias) else None)  # fmt: skip

        q, k, v = proj("q"), proj("k"), proj("v")
        if c.value_scale != 1.0:
            v = s.op("Mul", [v, s.f32(c.value_scale)], "ValueScale")
        rope = self._sliding_rope(ctx) if sliding else ctx.rope
        dim = int(self.head_dim * c.rotary_factors[1 if sliding else 0])
        q = apply_rope(s.child("q_rope"), q, rope, k_dim, self.n_heads, dim)
        k = apply_rope(s.child("k_rope"), k, rope, k_dim, n_kv, dim)
        mask = sinks = None
        if sliding:
            mask = self.window_mask(ctx, int(c.require(c.sliding_window, "sliding_window")))
            sinks = w.vector(self._sink_name(i))
        out, k_all, v_all = attend_with_past(
            s, ctx, q, k, v, past, self.n_heads, n_kv, (k_dim, v_dim), k_dim**-0.5, mask=mask,
            sinks=sinks)
        y = w.linear(s.child("o_proj"), out, f"{pre}.o_proj.weight")
        return y, k_all, v_all

    def _sink_name(self, i: int) -> str:
        pre = f"model.layers.{i}.self_attn"
        for name in (f"{pre}.{n}{suffix}" for n in _SINK_NAMES for suffix in ("", ".weight")):
            if name in self.ckpt.tensors:
                return name
        raise UnsupportedArchitectureError(
            f"{self.architecture} (ONNX export): sliding layer {i} has no sinks tensor (looked "
            f"for {pre}.{{{','.join(_SINK_NAMES)}}})"
        )

    # ----- routing ------------------------------------------------------------------------
    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        c = self.config
        bias = ctx.weights.vector(f"{self.moe_prefix(i)}.gate.e_score_correction_bias")
        return sigmoid_group_route(s, logits, bias, c, self.top_k, c.routed_scaling_factor)

