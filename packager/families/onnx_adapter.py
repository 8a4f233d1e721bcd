"""A family's ONNX graph hooks: what a family tells the graph builder, plus the shared defaults.

An adapter answers four questions, as the GGUF adapter does for llama.cpp: which configs it
accepts (`validate`), how its attention is built (`attention`), how its router picks and weighs
experts (`route`), and what dense extras ride along with the experts (`shared`). The common
decoder skeleton (embedding, norms, residuals, LM head) lives in `packager/onnx_export/model.py`
and never branches on the family. Adapters read the family's typed config, never config.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.config import ModelConfig, Rope
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
from packager.onnx_export.moe import ExpertExtras, normalize, topk
from packager.onnx_export.recurrent import StateSpec
from packager.source import Checkpoint

T = TypeVar("T")


class OnnxAdapter:
    """Defaults are the Qwen/Mixtral/OLMoE shape: GQA attention with rotate-half RoPE."""

    genai_type: ClassVar[str] = ""
    # canonical projection -> checkpoint name, per expert and for dense MLPs
    proj: ClassVar[tuple[str, str, str]] = ("gate_proj", "up_proj", "down_proj")
    moe_modules: ClassVar[tuple[str, ...]] = ("mlp",)
    norm_topk: ClassVar[bool] = False
    # Whether `rotate` handles a rotary width below the head size (GLM's partial rotary).
    partial_rotary: ClassVar[bool] = False
    # What the embedding rows are multiplied by before the first layer (Granite's
    # embedding_multiplier); 1 adds no node.
    embedding_scale: float = 1.0

    def __init__(self, config: ModelConfig, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.config = c = config
        self.n_layers = c.n_layers
        self.hidden = c.hidden_size
        self.n_heads = c.n_heads
        self.n_kv = c.n_kv_heads
        self.head_dim = c.head_dim
        self.eps = c.rms_norm_eps
        self.vocab = c.vocab_size
        self.top_k = c.top_k
        self.n_experts = c.n_experts
        self._per_graph: dict[tuple[int, str], Any] = {}
        self.validate()

    @property
    def architecture(self) -> str:
        return self.config.architecture

    def refuse(self, why: str) -> None:
        raise UnsupportedArchitectureError(f"{self.architecture} (ONNX export): {why}")

    # ----- hook 1: what is accepted ------------------------------------------------------
    def validate(self) -> None:
        c = self.config
        if c.hidden_act != "silu":
            self.refuse(f"hidden_act '{c.hidden_act}' (only silu is exported)")
        if c.use_sliding_window or any(t != "full_attention" for t in c.layer_types):
            self.refuse("sliding-window attention layers are not exported")
        if c.rope.partial_rotary_factor != 1.0 and not self.partial_rotary:
            self.refuse("partial_rotary_factor != 1 is not exported")
        if self.n_heads % self.n_kv:
            self.refuse(f"{self.n_heads} heads are not a multiple of {self.n_kv} KV heads")

    # The checkpoint prefixes of the final norm and of each layer's two norms.
    final_norm: ClassVar[str] = "model.norm"

    def layer_norms(self, i: int) -> tuple[str, str]:
        """(the norm before the token mixer, the norm before the feed-forward) of layer `i`."""
        return f"model.layers.{i}.input_layernorm", f"model.layers.{i}.post_attention_layernorm"

    def norm(self, ctx: Context, s: Scope, x: str, prefix: str, name: str) -> str:
        """The layer norm whose weights are `{prefix}.*` (RMSNorm; Phi-MoE's is a LayerNorm)."""
        return s.rms_norm(x, ctx.weights.vector(f"{prefix}.weight"), self.eps, name)

    def residual_norm(self, ctx: Context, s: Scope, h: str, branch: str | None, prefix: str,
                      name: str) -> tuple[str, str]:  # fmt: skip
        """(norm(h + branch), h + branch): a residual Add and the norm after it, fused into one
        node where the norm is the plain RMSNorm (`norm` not overridden); no `branch`: (norm(h),
        h)."""
        if branch is None:
            return self.norm(ctx, s, h, prefix, name), h
        if type(self).norm is not OnnxAdapter.norm:
            h = s.op("Add", [h, branch], f"{name}/residual")
            return self.norm(ctx, s, h, prefix, name), h
        return s.skip_rms_norm(h, branch, ctx.weights.vector(f"{prefix}.weight"), self.eps,
                               f"{name}/SkipRMSNorm")  # fmt: skip

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return self.config.moe_layers

    def kv_layout(self) -> tuple[int, int, int]:
        """(heads, key dim, value dim) of past_key_values.* for every layer (the widest, where
        layers differ: `kv_layouts`)."""
        return self.n_kv, self.head_dim, self.head_dim

    def kv_layouts(self) -> tuple[tuple[int, int, int], ...]:
        """Per layer, (heads, key dim, value dim) of its past_key_values (hook: MiMo's sliding
        layers cache more heads than its full ones)."""
        return (self.kv_layout(),) * self.n_layers

    # ----- tensors shared by the layers of one kind ---------------------------------------
    def per_graph(self, ctx: Context, key: str, build: Callable[[], T]) -> T:
        """Tensors built once per graph where the first layer that needs them asks, then reused
        (a sliding-window mask, a second rotary table)."""
        slot = (id(ctx), key)
        if slot not in self._per_graph:
            self._per_graph[slot] = build()
        return self._per_graph[slot]

    def window_mask(self, ctx: Context, window: int) -> str:
        """The additive mask of sliding-window layers: the last `window` positions, the query
        included (transformers' `sliding_window`)."""
        return self.per_graph(ctx, f"window{window}", lambda: causal_mask(
            ctx.graph.scope("/model/sliding_mask"), "input_ids", "attention_mask", window))

    # ----- rotary -------------------------------------------------------------------------
    def rope_dim(self) -> int:
        return self.head_dim

    def rope(self) -> RopeSpec:
        p, dim = self.config.rope, self.rope_dim()
        base = p.theta
        exps = np.arange(0, dim, 2, dtype=np.float64) / dim
        inv = 1.0 / base**exps
        scaling = 1.0
        if p.kind == "linear":
            inv = inv / float(self.config.require(p.factor, f"{p.field_name}.factor"))
        elif p.kind == "yarn":
            inv, scaling = _yarn(p, dim, base, inv, self.config.context_length)
        elif p.kind != "default":
            self.refuse(f"rope type '{p.kind}' (exported: default, linear, yarn)")
        return RopeSpec(inv.astype(np.float32), float(scaling), interleaved=False)

    # ----- hook 2: attention --------------------------------------------------------------
    def attention(self, ctx: Context, s: Scope, i: int, x: str, past: tuple[str, str]):
        """Standard GQA attention; returns (output [1,S,H], present key, present value)."""
        w, pre = ctx.weights, f"model.layers.{i}.self_attn"
        qkv = []
        for p in ("q", "k", "v"):
            bias = f"{pre}.{p}_proj.bias"
            qkv.append(
                w.linear(s.child(f"{p}_proj"), x, f"{pre}.{p}_proj.weight",
                         bias=bias if w.has(bias) else None)
            )  # fmt: skip
        q, k, v = self.pre_heads(ctx, s, pre, *qkv)
        q, k = self.per_head_norm(ctx, s, pre, q, k)
        q = self.rotate(ctx, s, q, self.n_heads, "q_rope")
        k = self.rotate(ctx, s, k, self.n_kv, "k_rope")
        dims = (self.head_dim, self.head_dim)
        out, k_all, v_all = attend_with_past(
            s, ctx, q, k, v, past, self.n_heads, self.n_kv, dims, self.head_dim**-0.5)
        bias = f"{pre}.o_proj.bias"
        y = w.linear(s.child("o_proj"), out, f"{pre}.o_proj.weight",
                     bias=bias if w.has(bias) else None)  # fmt: skip
        return y, k_all, v_all

    def rotate(self, ctx: Context, s: Scope, x: str, n: int, name: str) -> str:
        """Rotary embedding of the `n` heads of token-major x [1, S, n * head_dim]: the first
        `rope_dim()` values of each head (all of them but for partial rotary)."""
        return apply_rope(s.child(name), x, ctx.rope, self.head_dim, n, self.rope_dim())

    def pre_heads(self, ctx: Context, s: Scope, pre: str, q: str, k: str, v: str):
        """Hook for full-width q/k transforms (OLMoE's norms and clipping)."""
        return q, k, v

    def per_head_norm(self, ctx: Context, s: Scope, pre: str, q: str, k: str):
        """Hook for per-head q/k norms (Qwen3): q [1, S, heads * head_dim], k [1, S, kv *
        head_dim], token-major (`blocks.per_head` reaches each head)."""
        return q, k

    def rms_head_norms(
        self, ctx: Context, s: Scope, pre: str, q: str, k: str,
        names: tuple[str, str] = ("q_norm", "k_norm"),
    ) -> tuple[str, str]:  # fmt: skip
        """The common per-head norm: RMSNorm over head_dim with weights `{pre}.{name}.weight`."""
        w, d, eps = ctx.weights, self.head_dim, self.eps

        def norm(x: str, n: int, name: str) -> str:
            weight = w.vector(f"{pre}.{name}.weight")
            return per_head(s, x, n, d, lambda h: s.rms_norm(h, weight, eps, name), name)

        return norm(q, self.n_heads, names[0]), norm(k, self.n_kv, names[1])

    # ----- hybrid models: recurrent token mixers (packager/onnx_export/recurrent.py) ---------
    def states(self) -> dict[int, tuple[StateSpec, ...]]:
        """The recurrent layers and the state each carries between runs ({}: attention only).
        Those layers run `mixer` instead of `attention` and have no KV cache."""
        return {}

    def mixer(self, ctx: Context, s: Scope, i: int, x: str,
              past: dict[str, str]) -> tuple[str, dict[str, str]]:
        """A recurrent layer's token mixer: (output [1,S,H], present state by kind) from x and
        the past state by kind (StateSpec.kind)."""
        self.refuse(f"layer {i} is recurrent and the family exports no mixer for it")
        raise AssertionError  # refuse raised

    # ----- hook 3: routing ----------------------------------------------------------------
    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        """(weights [T,k], expert ids [T,k]) of layer `i` from its router logits [T,E]."""
        values, ids = topk(s, self.router_probs(s, logits), self.top_k)
        return (normalize(s, values) if self.norm_topk else values), ids

    def router_probs(self, s: Scope, logits: str) -> str:
        return s.op("Softmax", [logits], "Softmax", axis=-1)

    # ----- hook 4: dense parts of MoE layers ---------------------------------------------
    def moe_prefix(self, i: int) -> str:
        for module in self.moe_modules:
            pre = f"model.layers.{i}.{module}"
            if f"{pre}.gate.weight" in self.ckpt.tensors:
                return pre
        looked = ", ".join(f"model.layers.{i}.{m}.gate.weight" for m in self.moe_modules)
        raise UnsupportedArchitectureError(
            f"{self.architecture}: layer {i} has no router weight (looked for {looked})"
        )

    def router_tensors(self, i: int) -> tuple[str, str | None]:
        """The checkpoint names of layer `i`'s router weight and bias (None: no bias)."""
        return f"{self.moe_prefix(i)}.gate.weight", None

    def expert_extras(self, ctx: Context, i: int) -> ExpertExtras | None:
        """Expert biases and a clamped SwiGLU instead of silu(gate) * up (None: neither)."""
        return None

    def shared(self, ctx: Context, s: Scope, i: int, x2d: str) -> str | None:
        return None

    def dense_mlp(self, ctx: Context, s: Scope, i: int, x: str) -> str:
        return dense_mlp(ctx, s, x, f"model.layers.{i}.mlp", self.proj)

    # ----- expert tensors ----------------------------------------------------------------
    def expert_readers(self, i: int):
        """(read_gate_up(e) -> [2F, H], read_down(e) -> [H, F]) from per-expert or fused files.

        Both are the checkpoint's own [out, in] layout; gate_up is transformers' fused layout.
        """
        pre = f"{self.moe_prefix(i)}.experts"
        t, read = self.ckpt.tensors, self.ckpt.read
        fused = next((n for n in (f"{pre}.gate_up_proj", f"{pre}.gate_up_proj.weight") if n in t),
                     None)  # fmt: skip
        if fused is not None:
            down = fused.replace("gate_up_proj", "down_proj")
            whole: dict[str, np.ndarray] = {}  # a fused tensor is read once, not once per expert

            def one(name: str, e: int) -> np.ndarray:
                if name not in whole:
                    whole.clear()
                    whole[name] = read(name)
                return whole[name][e]

            return (lambda e: one(fused, e)), (lambda e: one(down, e))
        g, u, d = (f"{pre}.{{e}}.{n}.weight" for n in self.proj)
        missing = [n for n in (g, u, d) if n.format(e=self.n_experts - 1) not in t]
        if missing:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: expert tensor {missing[0].format(e=self.n_experts - 1)} "
                "not found in the checkpoint"
            )

        def gate_up(e: int) -> np.ndarray:
            return np.concatenate([read(g.format(e=e)), read(u.format(e=e))], axis=0)

        return gate_up, (lambda e: read(d.format(e=e)))


def _yarn(p: Rope, dim: int, base: float, inv: np.ndarray, max_pos: int):
    """YaRN inverse frequencies and attention factor, as transformers computes them."""
    factor = float(p.factor or 1.0)
    orig = int(p.original_context or max_pos)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = p.attention_factor
    if attn is None:
        ms, ms_all = p.mscale, p.mscale_all_dim
        attn = mscale(factor, ms) / mscale(factor, ms_all) if ms and ms_all else mscale(factor)
    fast, slow = float(p.beta_fast or 32), float(p.beta_slow or 1)

    def corr(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr(fast), corr(slow)
    if p.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extra = 1 - ramp
    return inv / factor * (1 - extra) + inv * extra, float(attn)
