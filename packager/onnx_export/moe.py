"""The routed-experts block: router -> softmax -> top-k -> Gather chosen experts -> MatMuls.

Only the chosen experts' rows of the stacked weights are gathered, so onnxruntime (which
memory-maps external data) faults in just their pages. Two ways to lay out the computation:

* ``pairs``: one gathered weight per (token, slot) pair, then batched MatMuls
  [T*k, F, H] @ [T*k, H, 1]. Exact FLOPs, but T*k experts' weights are copied.
* ``unique`` (default): Unique() over the chosen ids, one gathered copy per distinct expert,
  every token through every distinct expert ([U, F, H] @ [1, H, T]), then GatherND picks each
  pair's row. Up to E/k times the FLOPs, yet 7-10x faster prefill on CPU (memory-bound).

At decode (T = 1) both gather exactly k experts. Measurements are in the package README.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from packager.onnx_export.blocks import Context
from packager.onnx_export.graph import Scope
from packager.onnx_export.weights import ExpertStack

# "fused": one QMoE node per layer (qmoe.py), the default for int8/int4; the gather graphs
# here serve float builds (onnxruntime's float MoE kernel packs every expert into a private copy).
EXPERT_MODES = ("pairs", "unique", "fused")


@dataclass(frozen=True)
class LayerStacks:
    gate_up: ExpertStack  # per expert [2F, H]: gate rows first, then up (transformers' fused)
    down: ExpertStack  # per expert [H, F]


@dataclass(frozen=True)
class ExpertExtras:
    """What some families add to plain SwiGLU experts (gpt-oss): per-expert biases and a
    clamped SwiGLU, given as data so both expert graphs (gathered MatMuls, QMoE) use them."""

    name: str  # prefix of the constants written for them
    gate_up_bias: np.ndarray | None = None  # [E, 2F] float32: gate biases first, then up
    down_bias: np.ndarray | None = None  # [E, H]
    # (alpha, beta, limit): (clamp(up, ±limit) + beta) * g * sigmoid(alpha * g), g = min(gate,
    # limit) (onnxruntime QMoE's swiglu with swiglu_limit); None: silu(gate) * up.
    swiglu: tuple[float, float, float] | None = None
    # The router's weight multiplies each chosen expert's input, not its output (Llama 4):
    # sum_j expert_j(w_j * x) instead of sum_j w_j * expert_j(x) (SwiGLU is not linear).
    weigh_input: bool = False


def clamped_swiglu(s: Scope, gate: str, up: str, alpha: float, beta: float, limit: float) -> str:
    g = s.op("Min", [gate, s.f32(limit)], "ClampGate")
    u = s.op("Clip", [up, s.f32(-limit), s.f32(limit)], "ClampUp")
    glu = s.op("Mul", [g, s.op("Sigmoid", [s.op("Mul", [g, s.f32(alpha)], "Alpha")], "Sigmoid")],
               "Glu")  # fmt: skip
    return s.op("Mul", [s.op("Add", [u, s.f32(beta)], "UpPlusBeta"), glu], "GateTimesUp")


def moe_experts(
    ctx: Context,
    s: Scope,
    x2d: str,
    weights: str,
    ids: str,
    stacks: LayerStacks,
    top_k: int,
    mode: str,
    extras: ExpertExtras | None = None,
) -> str:
    """Weighted sum over each token's chosen experts: x2d [T, H] -> [T, H].

    Expert matrices stay [out, in] as stored, so activations are the right-hand operand
    (W @ x^T): no gathered weight is ever transposed.
    """
    w = ctx.weights
    hidden, ff = stacks.down.shape
    flat = s.reshape(ids, [-1], "FlatIds")
    weigh_input = extras is not None and extras.weigh_input
    if mode == "unique":
        uniq, _, inverse, _ = s.op("Unique", [flat], "Unique", n_out=4, sorted=1)
        chosen = uniq
        x_in = s.unsqueeze(s.transpose(x2d, [1, 0], "TokensT"), [0], "AllTokens")  # [1, H, T]
        if weigh_input:
            x_in = s.op("Mul", [x_in, _unique_input_weights(s, uniq, ids, weights)],
                        "WeighInput")  # [U, H, T]  # fmt: skip
    else:
        chosen = flat
        tiled = s.op("Expand", [s.unsqueeze(x2d, [1], "PerSlot"), s.const([1, top_k, 1])],
                     "Tile")  # fmt: skip
        x_in = s.reshape(tiled, [-1, hidden, 1], "PairCols")  # [T*k, H, 1]
        if weigh_input:
            x_in = s.op("Mul", [x_in, s.reshape(weights, [-1, 1, 1], "PairWeights")],
                        "WeighInput")  # fmt: skip
    gate_up = w.gather_experts(s.child("gate_up"), stacks.gate_up, chosen)
    gu = s.op("MatMul", [gate_up, x_in], "gate_up/MatMul")  # [n, 2F, cols]
    if extras is not None and extras.gate_up_bias is not None:
        table = w.table(f"{extras.name}.gate_up_bias", extras.gate_up_bias)
        gu = _expert_bias(s, gu, table, chosen, "gate_up")
    g, u = s.split(gu, [ff, ff], 1, "gate_up/Split")
    if extras is not None and extras.swiglu is not None:
        h = clamped_swiglu(s, g, u, *extras.swiglu)
    else:
        h = s.op("Mul", [s.silu(g), u], "GateTimesUp")
    down = w.gather_experts(s.child("down"), stacks.down, chosen)
    y = s.op("MatMul", [down, h], "down/MatMul")  # [n, H, cols]
    if extras is not None and extras.down_bias is not None:
        y = _expert_bias(s, y, w.table(f"{extras.name}.down_bias", extras.down_bias), chosen,
                         "down")  # fmt: skip
    if mode == "unique":
        y = s.transpose(y, [0, 2, 1], "ExpertTokenRows")  # [U, T, H]
        # Row of pair p: (position of its expert among the unique ids, its token).
        n_tok = s.op("Gather", [s.op("Shape", [x2d], "TokShape"), s.const(0)], "Tokens", axis=0)
        tok = s.op("Range", [s.const(0), n_tok, s.const(1)], "TokenIds")
        tok = s.op("Expand", [s.unsqueeze(tok, [1], "TokCol"), s.const([1, top_k])], "TokTile")
        coords = s.op(
            "Concat", [s.unsqueeze(inverse, [1], "InvCol"),
                       s.unsqueeze(s.reshape(tok, [-1], "TokFlat"), [1], "TokFlatCol")],
            "PairCoords", axis=1,
        )  # fmt: skip
        y = s.op("GatherND", [y, coords], "PickPairs")
    y = s.reshape(y, [-1, top_k, hidden], "PerToken")
    if not weigh_input:
        y = s.op("Mul", [y, s.unsqueeze(weights, [-1], "WeightCol")], "Weigh")
    return s.op("ReduceSum", [y, s.const([1])], "SumSlots", keepdims=0)


def _unique_input_weights(s: Scope, uniq: str, ids: str, weights: str) -> str:
    """[U, 1, T]: each distinct chosen expert's router weight for each token (0 where the
    token did not choose it; those products are never picked)."""
    hit = s.op("Equal", [s.unsqueeze(uniq, [1, 2], "UniqCol"), s.unsqueeze(ids, [0], "IdsRow")],
               "ChoseExpert")  # [U, T, k]  # fmt: skip
    per_slot = s.op("Where", [hit, s.unsqueeze(weights, [0], "WeightsRow"), s.f32(0.0)],
                    "SlotWeights")  # fmt: skip
    per_token = s.op("ReduceSum", [per_slot, s.const([-1])], "ExpertWeights", keepdims=0)
    return s.unsqueeze(per_token, [1], "ExpertWeightCol")


def _expert_bias(s: Scope, y: str, table: str, chosen: str, name: str) -> str:
    """y [n, rows, cols] plus each chosen expert's bias row [rows]."""
    rows = s.op("Gather", [table, chosen], f"{name}/GatherBias", axis=0)  # [n, rows]
    return s.op("Add", [y, s.unsqueeze(rows, [-1], f"{name}/BiasCol")], f"{name}/AddBias")


def topk(s: Scope, scores: str, k: int, name: str = "TopK") -> tuple[str, str]:
    values, ids = s.op("TopK", [scores, s.const([k])], name, n_out=2, axis=-1, largest=1,
                       sorted=1)  # fmt: skip
    return values, ids


def normalize(s: Scope, values: str) -> str:
    total = s.op("ReduceSum", [values, s.const([-1])], "TopKSum", keepdims=1)
    return s.op("Div", [values, total], "Renormalize")


def group_limited(s: Scope, probs: str, n_experts: int, n_group: int, topk_group: int) -> str:
    """Zero every expert outside the `topk_group` groups with the best single expert."""
    grouped = s.reshape(probs, [0, n_group, n_experts // n_group], "Groups")
    best = s.op("ReduceMax", [grouped, s.const([-1])], "GroupMax", keepdims=0)
    _, gidx = topk(s, best, topk_group, "GroupTopK")
    onehot = s.op("OneHot", [gidx, s.const(n_group), s.const([0, 1])], "GroupOneHot", axis=-1)
    keep = s.op("ReduceMax", [onehot, s.const([1])], "GroupKeep", keepdims=1)
    keep = s.op("Cast", [s.transpose(keep, [0, 2, 1], "GroupKeepT")], "GroupKeepBool",
                to=TensorProto.BOOL)  # fmt: skip
    masked = s.op("Where", [keep, grouped, s.f32(0.0)], "MaskGroups")
    return s.reshape(masked, [0, n_experts], "Ungroup")
