"""Family-independent graph blocks: the causal mask, rotary embeddings, attention, dense MLP.

Attention follows transformers' eager path: scores = (q @ k^T) * scale + mask, softmax in
float32, then @ v. Queries, keys and values stay token-major ([1, S, heads * dim], as the
projections give them) up to the attention node, which takes them so, GQA included:
- a causal layer is onnxruntime's GroupQueryAttention (com.microsoft). Its KV cache may be one
  buffer of the whole context that the node writes this run's keys and values into, past and
  present the same memory (the runtime binds it so: runtime/backends/onnx/kv_cache.py), where
  any other node copies the whole cache once a token;
- a layer with its own mask (sliding window, chunked) or a value width of its own is ONNX's
  `Attention` (opset 23), the past joined with this run's keys;
- a layer with a head sink, which neither operator takes, is spelled out in standard ops
  (`attend`).
Rotary is onnxruntime's RotaryEmbedding (com.microsoft, CPU and GPU kernels), partial rotary
included: the same arithmetic in one node where the standard ops took six to nine per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from packager.onnx_export.graph import MS_DOMAIN, Graph, Scope
from packager.onnx_export.weights import Weights

# transformers fills masked scores with the dtype's minimum, not -inf, so a fully masked row
# (left padding) softmaxes to uniform instead of NaN; we do the same.
_MASKED = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class RopeSpec:
    inv_freq: np.ndarray  # float32 [rotary_dim / 2]
    attention_scaling: float
    interleaved: bool  # DeepSeek rotates adjacent pairs; the others rotate the two halves
    # Phi-MoE's LongRoPE: once the sequence (largest position + 1) is longer than `long_after`,
    # cos/sin are scaled by `long_scaling` instead of `attention_scaling`.
    long_scaling: float | None = None
    long_after: int = 0


@dataclass(frozen=True)
class Rope:
    cos: str  # [S, rotary_dim / 2]: row s is position_ids[0, s]'s angles
    sin: str
    interleaved: bool


@dataclass
class Context:
    """What every layer builder needs: the graph, the weights and the shared tensors."""

    graph: Graph
    weights: Weights
    mask: str  # additive float [S, T]
    rope: Rope
    _lengths: tuple[str, str] | None = None

    def kv_lengths(self) -> tuple[str, str]:
        """GroupQueryAttention's lengths, built once: (seqlens_k int32 [1], the attended
        positions less one; total_sequence_length int32 scalar). From attention_mask, as
        onnxruntime-genai feeds it (ones, right-aligned)."""
        if self._lengths is None:
            s, mask = self.graph.scope("/model/kv_lengths"), "attention_mask"
            seen = s.op("ReduceSum", [mask, s.const([1])], "Attended", keepdims=0)
            last = s.op("Sub", [seen, s.const(1)], "LastPosition")
            total = s.op("Gather", [s.op("Shape", [mask], "MaskShape"), s.const(1)], "Total",
                         axis=0)  # fmt: skip
            seqlens = s.op("Cast", [last], "SeqLensK", to=TensorProto.INT32)
            self._lengths = (seqlens, s.op("Cast", [total], "TotalLength", to=TensorProto.INT32))
        return self._lengths


def causal_mask(
    s: Scope, input_ids: str, attention_mask: str, window: int | None = None,
    chunk: int | None = None,
) -> str:  # fmt: skip
    """Additive [S, T] mask: query i (absolute position T-S+i) sees key j <= it, if unpadded;
    with a `window`, only the last `window` positions (j > i - window, as transformers'
    sliding-window layers and llama.cpp's standard SWA); with a `chunk`, only keys in the
    query's own `chunk`-token block (j // chunk == i // chunk: Llama 4's chunked attention, as
    transformers and llama.cpp's chunked SWA compute it)."""
    zero, one = s.const(0), s.const(1)
    seq = s.op("Gather", [s.op("Shape", [input_ids], "ShapeIds"), one], "SeqLen", axis=0)
    total = s.op("Gather", [s.op("Shape", [attention_mask], "ShapeMask"), one], "TotalLen", axis=0)
    past = s.op("Sub", [total, seq], "PastLen")
    keys = s.unsqueeze(s.op("Range", [zero, total, one], "KeyPos"), [0], "KeyRow")
    queries = s.unsqueeze(s.op("Range", [past, total, one], "QueryPos"), [1], "QueryCol")
    causal = s.op("LessOrEqual", [keys, queries], "Causal")
    if window is not None:
        recent = s.op("Greater", [keys, s.op("Sub", [queries, s.const(window)], "WindowStart")],
                      "InWindow")  # fmt: skip
        causal = s.op("And", [causal, recent], "CausalWindow")
    if chunk is not None:
        size = s.const(chunk)
        same = s.op("Equal", [s.op("Div", [keys, size], "KeyChunk"),
                              s.op("Div", [queries, size], "QueryChunk")], "SameChunk")
        causal = s.op("And", [causal, same], "CausalChunk")  # fmt: skip
    padded = s.op("Cast", [attention_mask], "KeepKeys", to=TensorProto.BOOL)
    allowed = s.op("And", [causal, padded], "Allowed")
    return s.op("Where", [allowed, s.f32(0.0), s.f32(_MASKED)], "Additive")


def rotary(s: Scope, position_ids: str, spec: RopeSpec) -> Rope:
    """cos/sin of position * inv_freq, computed in-graph (no table, no position limit): one
    [S, rotary_dim / 2] row per token of this run, the cache `apply_rope` indexes from 0."""
    pos = s.op("Cast", [position_ids], "Positions", to=TensorProto.FLOAT)
    freqs = s.op("Mul", [s.unsqueeze(pos, [-1], "PosCol"), s.f32(spec.inv_freq)], "Freqs")
    freqs = s.reshape(freqs, [-1, len(spec.inv_freq)], "FreqRows")
    cos, sin = s.op("Cos", [freqs], "Cos"), s.op("Sin", [freqs], "Sin")
    if spec.long_scaling is not None:
        last = s.op("ReduceMax", [position_ids], "LastPosition", keepdims=0)
        long = s.op("GreaterOrEqual", [last, s.const(spec.long_after)], "IsLong")
        scale = s.op("Where", [long, s.f32(spec.long_scaling), s.f32(spec.attention_scaling)],
                     "Scaling")  # fmt: skip
        cos = s.op("Mul", [cos, scale], "ScaleCos")
        sin = s.op("Mul", [sin, scale], "ScaleSin")
    elif spec.attention_scaling != 1.0:
        cos = s.op("Mul", [cos, s.f32(spec.attention_scaling)], "ScaleCos")
        sin = s.op("Mul", [sin, s.f32(spec.attention_scaling)], "ScaleSin")
    return Rope(cos, sin, spec.interleaved)


def apply_rope(s: Scope, x: str, rope: Rope, dim: int, n_heads: int | None = None,
               rot: int | None = None) -> str:  # fmt: skip
    """Rotate x the way the family's transformers code does (rotate-half, or DeepSeek's
    adjacent pairs) in one onnxruntime RotaryEmbedding node: x1*cos - x2*sin, x1*sin + x2*cos.
    x is token-major [1, S, n_heads * dim] when `n_heads` is given, else [1, heads, S, dim];
    `rot` (default `dim`) leading values of each head are rotated, the rest pass (partial
    rotary, in the node itself: no Split and Concat). Position offset 0 into this run's own
    cos/sin rows (`rotary`), so no position limit."""
    attrs = {"interleaved": int(rope.interleaved)}
    if n_heads is not None:
        attrs.update(num_heads=n_heads, rotary_embedding_dim=rot or dim)
    elif rot not in (None, dim):
        raise ValueError("partial rotary needs token-major input (n_heads)")
    y = s.op("RotaryEmbedding", [x, s.const([0]), rope.cos, rope.sin], "RotaryEmbedding",
             domain=MS_DOMAIN, **attrs)  # fmt: skip
    s.g.float_output(y)
    return y


def per_head(s: Scope, x: str, n: int, dim: int, fn: Callable[[str], str], name: str) -> str:
    """`fn` (a norm over the last axis: Qwen3's q/k norms) on each head of token-major x
    [1, S, n * dim]: the heads are a free reshape away, never transposed."""
    h = fn(s.reshape(x, [0, 0, n, dim], f"{name}/Heads"))
    return s.reshape(h, [0, 0, n * dim], f"{name}/Tokens")


def heads(s: Scope, x: str, n: int, dim: int, name: str) -> str:
    """[1, S, n*dim] -> [1, n, S, dim]."""
    return s.transpose(s.reshape(x, [0, 0, n, dim], f"{name}/Reshape"), [0, 2, 1, 3],
                       f"{name}/Transpose")  # fmt: skip


def with_past(s: Scope, past: str, new: str, name: str) -> str:
    return s.op("Concat", [past, new], f"{name}/ConcatPast", axis=2)


def attend_with_past(
    s: Scope,
    ctx: Context,
    q: str,
    k: str,
    v: str,
    past: tuple[str, str],
    n_heads: int,
    n_kv: int,
    dims: tuple[int, int],
    scale: float,
    mask: str | None = None,
    sinks: str | None = None,
) -> tuple[str, str, str]:
    """Attention of this run's token-major q [1, S, H*Dqk], k [1, S, Hkv*Dqk], v [1, S, Hkv*Dv]
    over the past [1, Hkv, P, *] and themselves: (output [1, S, H*Dv], present key, value).

    - Causal, no sink, one width: GroupQueryAttention. Given a past of the whole context's
      length whose memory is also bound as the present, it writes this run's keys in place.
      A decode step read 1.08-1.25x (qwen3moe-large int8, paired, 2 threads, through the
      runtime) against `Attention`, which joins past and new into a fresh tensor every run.
      With a past of exactly the positions so far it concatenates like the others
      (onnxruntime-genai, plain runs).
    - A mask of its own (`mask`: sliding window, chunks) or Dv != Dqk: `Attention` (opset 23).
    - A head sink (`sinks`: gpt-oss, MiMo's sliding layers): spelled out (`attend`).
    """
    d_qk, d_v = dims
    a = s.child("sdpa")
    if sinks is not None:
        k_all = with_past(s, past[0], heads(s, k, n_kv, d_qk, "k_heads"), "key")
        v_all = with_past(s, past[1], heads(s, v, n_kv, d_v, "v_heads"), "value")
        out = attend(a, ctx, heads(s, q, n_heads, d_qk, "q_heads"), k_all, v_all, n_heads,
                     n_kv, dims, scale, mask=mask, sinks=sinks)  # fmt: skip
        return out, k_all, v_all
    if mask is not None or d_qk != d_v:
        out, k_all, v_all = a.op("Attention", [q, k, v, mask or ctx.mask, past[0], past[1]],
                                 "Attention", n_out=3, scale=float(scale), q_num_heads=n_heads,
                                 kv_num_heads=n_kv)  # fmt: skip
        return out, k_all, v_all
    out, k_all, v_all = a.op(
        "GroupQueryAttention", [q, k, v, past[0], past[1], *ctx.kv_lengths()],
        "GroupQueryAttention", n_out=3, domain=MS_DOMAIN, scale=float(scale),
        num_heads=n_heads, kv_num_heads=n_kv)  # fmt: skip
    for t in (out, k_all, v_all):
        s.g.float_output(t)
    return out, k_all, v_all


def attend(
    s: Scope,
    ctx: Context,
    q: str,
    k: str,
    v: str,
    n_heads: int,
    n_kv: int,
    dims: tuple[int, int],
    scale: float,
    mask: str | None = None,
    sinks: str | None = None,
) -> str:
    """Scaled dot-product attention with GQA; q [1,H,S,D], k/v [1,Hkv,T,*] -> [1, S, H*Dv].

    GQA groups query heads as [Hkv, rep] and broadcasts each K/V head over its group (the
    5-D MatMul batch dims), the same head order as transformers' repeat_kv, without copying K.
    `mask` replaces the shared causal mask (a sliding-window layer's); `sinks` [H] are
    per-head logits of a virtual key with no value (gpt-oss): a column the softmax normalises
    over and that is then dropped.
    """
    rep = n_heads // n_kv
    d_qk, d_v = dims
    if rep > 1:
        q = s.reshape(q, [0, n_kv, rep, -1, d_qk], "GroupQueries")
        k = s.unsqueeze(k, [2], "GroupKeys")
        v = s.unsqueeze(v, [2], "GroupValues")
    perm = [0, 1, 2, 4, 3] if rep > 1 else [0, 1, 3, 2]
    scores = s.op("MatMul", [q, s.transpose(k, perm, "KeysT")], "QK")
    scores = s.op("Mul", [scores, s.f32(scale)], "Scale")
    scores = s.op("Add", [scores, mask or ctx.mask], "Mask")
    if sinks is None:
        probs = s.op("Softmax", [scores], "Softmax", axis=-1)
    else:
        sink = s.reshape(sinks, [1, n_kv, rep, 1, 1] if rep > 1 else [1, n_heads, 1, 1],
                         "SinkHeads")  # fmt: skip
        col = s.op("ReduceMax", [scores, s.const([-1])], "RowMax", keepdims=1)
        sink = s.op("Expand", [sink, s.op("Shape", [col], "ColShape")], "SinkColumn")
        joined = s.op("Concat", [scores, sink], "WithSink", axis=-1)
        probs = s.op("Softmax", [joined], "Softmax", axis=-1)
        keys = s.op("Shape", [scores], "ScoreShape", start=-1)
        probs = s.op("Slice", [probs, s.const([0]), keys, s.const([-1])], "DropSink")
    out = s.op("MatMul", [probs, v], "PV")
    if rep > 1:
        out = s.reshape(out, [0, n_heads, -1, d_v], "UngroupHeads")
    out = s.transpose(out, [0, 2, 1, 3], "HeadsLast")
    return s.reshape(out, [0, 0, n_heads * d_v], "MergeHeads")


def dense_mlp(ctx: Context, s: Scope, x: str, prefix: str, names: tuple[str, str, str]) -> str:
    """down(silu(gate(x)) * up(x)) for checkpoint tensors `{prefix}.{gate|up|down}.weight`."""
    w = ctx.weights
    gate, up, down = (f"{prefix}.{n}.weight" for n in names)
    g = w.linear(s.child(names[0]), x, gate)
    u = w.linear(s.child(names[1]), x, up)
    h = s.op("Mul", [s.silu(g), u], "GateUp")
    return w.linear(s.child(names[2]), h, down)
