"""The ONNX adapter contract: what a family tells the graph builder, plus the shared defaults.

A family adapter answers four questions, mirroring `packager/archs/` for GGUF: which configs
it accepts (`validate`), how its attention is built (`attention`), how its router picks and
weighs experts (`route`), and what dense extras ride along with the experts (`shared`). The
common decoder skeleton (embedding, norms, residuals, LM head) lives in `model.py` and never
branches on the family.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.hf_config import ConfigFields
from packager.onnx_export.blocks import (
    Context,
    RopeSpec,
    apply_rope,
    attend,
    dense_mlp,
    heads,
    with_past,
)
from packager.onnx_export.graph import Scope
from packager.onnx_export.moe import normalize, topk
from packager.source import Checkpoint

_REGISTRY: dict[str, type[OnnxFamily]] = {}


def register(cls: type[OnnxFamily]) -> type[OnnxFamily]:
    for arch in cls.hf_architectures:
        _REGISTRY[arch] = cls
    return cls


def supported() -> list[str]:
    return sorted(_REGISTRY)


def family_for(ckpt: Checkpoint) -> OnnxFamily:
    archs = ckpt.config.get("architectures") or []
    arch = archs[0] if archs else f"model_type={ckpt.config.get('model_type', '?')}"
    if arch not in _REGISTRY:
        raise UnsupportedArchitectureError(
            f"ONNX export: architecture {arch} is not supported; supported: "
            f"{', '.join(supported())}"
        )
    return _REGISTRY[arch](ckpt)


class OnnxFamily(ConfigFields):
    """Defaults are the Qwen/Mixtral/OLMoE shape: GQA attention with rotate-half RoPE."""

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    genai_type: ClassVar[str] = ""
    # canonical projection -> checkpoint name, per expert and for dense MLPs
    proj: ClassVar[tuple[str, str, str]] = ("gate_proj", "up_proj", "down_proj")
    moe_modules: ClassVar[tuple[str, ...]] = ("mlp",)
    norm_topk: ClassVar[bool] = False

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.config: dict[str, Any] = ckpt.config
        c = self.config
        self.n_layers = int(self.req("num_hidden_layers"))
        self.hidden = int(self.req("hidden_size"))
        self.n_heads = int(self.req("num_attention_heads"))
        self.n_kv = int(c.get("num_key_value_heads") or self.n_heads)
        self.head_dim = int(c.get("head_dim") or self.hidden // self.n_heads)
        self.eps = float(c.get("rms_norm_eps", 1e-6))
        self.vocab = int(self.req("vocab_size"))
        self.top_k = int(self.req("num_experts_per_tok"))
        self.n_experts = int(self.find("num_experts", "num_local_experts", "n_routed_experts"))
        self.validate()

    # ----- config access ----------------------------------------------------------------
    def refuse(self, why: str) -> None:
        raise UnsupportedArchitectureError(f"{self.architecture} (ONNX export): {why}")

    # ----- hook 1: what is accepted ------------------------------------------------------
    def validate(self) -> None:
        c = self.config
        if c.get("hidden_act", "silu") != "silu":
            self.refuse(f"hidden_act '{c.get('hidden_act')}' (only silu is exported)")
        if c.get("use_sliding_window") or any(
            t != "full_attention" for t in c.get("layer_types") or []
        ):
            self.refuse("sliding-window attention layers are not exported")
        if float(self.rope_params().get("partial_rotary_factor", 1.0)) != 1.0:
            self.refuse("partial_rotary_factor != 1 is not exported")
        if self.n_heads % self.n_kv:
            self.refuse(f"{self.n_heads} heads are not a multiple of {self.n_kv} KV heads")

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(range(self.n_layers))

    def kv_layout(self) -> tuple[int, int, int]:
        """(heads, key dim, value dim) of past_key_values.* for every layer."""
        return self.n_kv, self.head_dim, self.head_dim

    # ----- rotary -------------------------------------------------------------------------
    def rope_params(self) -> dict[str, Any]:
        p = dict(self.config.get("rope_parameters") or self.config.get("rope_scaling") or {})
        p.setdefault("rope_theta", self.config.get("rope_theta", 10000.0))
        return p

    def rope_dim(self) -> int:
        return self.head_dim

    def rope(self) -> RopeSpec:
        p, dim = self.rope_params(), self.rope_dim()
        base = float(p["rope_theta"])
        kind = p.get("rope_type", p.get("type", "default")) or "default"
        exps = np.arange(0, dim, 2, dtype=np.float64) / dim
        inv = 1.0 / base**exps
        scaling = 1.0
        if kind == "linear":
            inv = inv / float(p["factor"])
        elif kind == "yarn":
            inv, scaling = _yarn(p, dim, base, inv, int(self.config["max_position_embeddings"]))
        elif kind != "default":
            self.refuse(f"rope type '{kind}' (exported: default, linear, yarn)")
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
        q = heads(s, q, self.n_heads, self.head_dim, "q_heads")
        k = heads(s, k, self.n_kv, self.head_dim, "k_heads")
        v = heads(s, v, self.n_kv, self.head_dim, "v_heads")
        q, k = self.per_head_norm(ctx, s, pre, q, k)
        q = apply_rope(s.child("q_rope"), q, ctx.rope, self.head_dim)
        k = apply_rope(s.child("k_rope"), k, ctx.rope, self.head_dim)
        k_all = with_past(s, past[0], k, "key")
        v_all = with_past(s, past[1], v, "value")
        dims = (self.head_dim, self.head_dim)
        out = attend(s.child("sdpa"), ctx, q, k_all, v_all, self.n_heads, self.n_kv, dims,
                     self.head_dim**-0.5)  # fmt: skip
        bias = f"{pre}.o_proj.bias"
        y = w.linear(s.child("o_proj"), out, f"{pre}.o_proj.weight",
                     bias=bias if w.has(bias) else None)  # fmt: skip
        return y, k_all, v_all

    def pre_heads(self, ctx: Context, s: Scope, pre: str, q: str, k: str, v: str):
        """Hook for full-width q/k transforms (OLMoE's norms and clipping)."""
        return q, k, v

    def per_head_norm(self, ctx: Context, s: Scope, pre: str, q: str, k: str):
        """Hook for per-head q/k norms (Qwen3)."""
        return q, k

    # ----- hook 3: routing ----------------------------------------------------------------
    def route(self, s: Scope, probs: str) -> tuple[str, str]:
        """(weights [T,k], expert ids [T,k]) from softmax probabilities [T,E]."""
        values, ids = topk(s, probs, self.top_k)
        return (normalize(s, values) if self.norm_topk else values), ids

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


def _yarn(p: dict[str, Any], dim: int, base: float, inv: np.ndarray, max_pos: int):
    """YaRN inverse frequencies and attention factor, as transformers computes them."""
    factor = float(p.get("factor") or 1.0)
    orig = int(p.get("original_max_position_embeddings") or max_pos)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = p.get("attention_factor")
    if attn is None:
        ms, ms_all = p.get("mscale"), p.get("mscale_all_dim")
        attn = mscale(factor, ms) / mscale(factor, ms_all) if ms and ms_all else mscale(factor)
    fast, slow = float(p.get("beta_fast") or 32), float(p.get("beta_slow") or 1)

    def corr(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr(fast), corr(slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extra = 1 - ramp
    return inv / factor * (1 - extra) + inv * extra, float(attn)
