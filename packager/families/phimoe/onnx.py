"""Phi-MoE in ONNX: LayerNorm (weight and bias), GQA attention with q/k/v/o biases, LongRoPE as
transformers' Phi-MoE applies it, sparsemixer top-2 routing, experts named w1/w3/w2.

Sparsemixer at inference (transformers' `sparsemixer`, training=False): the first expert is
the best logit; it is weighted by a softmax over the logits whose distance below the best,
relative to max(|logit|, best), is at most 2 x router_jitter_noise (the others are masked to
-inf). The second expert is the best of the rest (the first masked), weighted the same way
relative to its own logit. The two weights do not sum to 1 (usually both are close to 1).
LongRoPE: transformers' Phi-MoE always rotates with the short factors and scales cos/sin by
short_mscale, or by long_mscale once the sequence is longer than the original context.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnx import TensorProto

from packager.errors import UnsupportedArchitectureError
from packager.families.onnx_adapter import OnnxAdapter
from packager.families.phimoe.config import PhimoeConfig
from packager.onnx_export.blocks import Context, RopeSpec
from packager.onnx_export.graph import Scope


class PhimoeOnnx(OnnxAdapter):
    config: PhimoeConfig
    genai_type = "phimoe"
    proj: ClassVar[tuple[str, str, str]] = ("w1", "w3", "w2")
    moe_modules: ClassVar[tuple[str, ...]] = ("block_sparse_moe", "mlp")

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c.rope.kind == "longrope":
            self._longrope()
        if c.top_k != 2:
            self.refuse(f"num_experts_per_tok={c.top_k}: sparsemixer always picks two experts")
        if c.sliding_window and c.sliding_window < c.context_length:
            self.refuse(f"sliding_window={c.sliding_window} attention is not exported")

    def _longrope(self) -> tuple[np.ndarray, float, float, int]:
        """(short factors, short_mscale, long_mscale, original context) of a LongRoPE config."""
        field = self.config.rope.field_name
        raw = self.config.raw.get(field) or {}
        try:
            short = np.asarray(raw["short_factor"], dtype=np.float64)
            scales = float(raw["short_mscale"]), float(raw["long_mscale"])
            orig = int(raw["original_max_position_embeddings"])
        except (KeyError, TypeError, ValueError) as e:
            raise UnsupportedArchitectureError(
                f"{self.architecture} (ONNX export): {field} (longrope) lacks or mistypes {e}"
            ) from None
        if short.shape != (self.head_dim // 2,):
            self.refuse(f"{field}.short_factor has {short.size} entries, expected "
                        f"{self.head_dim // 2}")  # fmt: skip
        return short, scales[0], scales[1], orig

    def rope(self) -> RopeSpec:
        if self.config.rope.kind != "longrope":
            return super().rope()
        short, short_mscale, long_mscale, orig = self._longrope()
        exps = np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim
        inv = 1.0 / (short * self.config.rope.theta**exps)
        return RopeSpec(inv.astype(np.float32), short_mscale, interleaved=False,
                        long_scaling=long_mscale, long_after=orig)  # fmt: skip

    def norm(self, ctx: Context, s: Scope, x: str, prefix: str, name: str) -> str:
        w = ctx.weights
        return s.op("LayerNormalization", [x, w.vector(f"{prefix}.weight"),
                                           w.vector(f"{prefix}.bias")],
                    f"{name}/LayerNorm", axis=-1, epsilon=self.config.norm_eps)  # fmt: skip

    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        eps2 = 2.0 * self.config.router_jitter_noise
        size = s.op("Abs", [logits], "AbsLogits")
        first_w, first = _pick(s, logits, logits, size, eps2, "First")
        onehot = s.op("OneHot", [s.reshape(first, [-1], "FirstFlat"), s.const(self.n_experts),
                                 s.const([0, 1])], "FirstOneHot", axis=-1)  # fmt: skip
        chosen = s.op("Cast", [onehot], "FirstMask", to=TensorProto.BOOL)
        rest = s.op("Where", [chosen, s.f32(float("-inf")), logits], "MaskFirst")
        second_w, second = _pick(s, rest, logits, size, eps2, "Second")
        weights = s.op("Concat", [first_w, second_w], "Weights", axis=-1)
        return weights, s.op("Concat", [first, second], "Experts", axis=-1)


def _pick(s: Scope, scores: str, logits: str, size: str, eps2: float, name: str):
    """(weight [T,1], expert [T,1]): the best of `scores`, weighted by a softmax over the
    scores within `eps2` of it, relative to max(|logit|, best), as sparsemixer does."""
    best = s.op("ReduceMax", [scores, s.const([-1])], f"{name}/Max", keepdims=1)
    expert = s.op("ArgMax", [scores], f"{name}/ArgMax", axis=-1, keepdims=1)
    factor = s.op("Max", [size, best], f"{name}/Factor")
    gap = s.op("Div", [s.op("Sub", [best, logits], f"{name}/Gap"), factor], f"{name}/RelGap")
    far = s.op("Greater", [gap, s.f32(eps2)], f"{name}/Far")
    gates = s.op("Softmax", [s.op("Where", [far, s.f32(float("-inf")), scores], f"{name}/Mask")],
                 f"{name}/Softmax", axis=-1)  # fmt: skip
    return s.op("GatherElements", [gates, expert], f"{name}/Weight", axis=-1), expert
