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

from collections.abc import Callable
from dataclasses import dataclass

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
    """What some families add to the plain SwiGLU experts (gpt-oss)."""

    gate_up_bias: str | None = None  # [E, 2F] float32: gate biases first, then up
    down_bias: str | None = None  # [E, H]
    # (scope, gate, up) -> activation; None: silu(gate) * up
    act: Callable[[Scope, str, str], str] | None = None


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
    if mode == "unique":
        uniq, _, inverse, _ = s.op("Unique", [flat], "Unique", n_out=4, sorted=1)
        chosen = uniq
        x_in = s.unsqueeze(s.transpose(x2d, [1, 0], "TokensT"), [0], "AllTokens")  # [1, H, T]
    else:
        chosen = flat
        tiled = s.op("Expand", [s.unsqueeze(x2d, [1], "PerSlot"), s.const([1, top_k, 1])],
                     "Tile")  # fmt: skip
        x_in = s.reshape(tiled, [-1, hidden, 1], "PairCols")  # [T*k, H, 1]
    gate_up = w.gather_experts(s.child("gate_up"), stacks.gate_up, chosen)
    extras = extras or ExpertExtras()
    gu = s.op("MatMul", [gate_up, x_in], "gate_up/MatMul")  # [n, 2F, cols]
    gu = _expert_bias(s, gu, extras.gate_up_bias, chosen, "gate_up")
    g, u = s.split(gu, [ff, ff], 1, "gate_up/Split")
    h = extras.act(s, g, u) if extras.act else s.op("Mul", [s.silu(g), u], "GateTimesUp")
    down = w.gather_experts(s.child("down"), stacks.down, chosen)
    y = s.op("MatMul", [down, h], "down/MatMul")  # [n, H, cols]
    y = _expert_bias(s, y, extras.down_bias, chosen, "down")
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
    scaled = s.op("Mul", [y, s.unsqueeze(weights, [-1], "WeightCol")], "Weigh")
    return s.op("ReduceSum", [scaled, s.const([1])], "SumSlots", keepdims=0)


def _expert_bias(s: Scope, y: str, table: str | None, chosen: str, name: str) -> str:
    """y [n, rows, cols] plus each chosen expert's bias row [rows] (none: y as it is)."""
    if table is None:
        return y
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
