"""Quantized experts as one fused onnxruntime `QMoE` node per layer, read where they lie.

Layout (onnxruntime's raw QMoE layout, `weights_prepacked=0`): per layer and projection three
tensors, each expert-major and unpadded, so expert e of every tensor is one contiguous byte range
of the external-data file (the runtime pages it as it pages a GGUF's experts):

* `experts.gate_up.q{bits}` [E, 2F, H*bits/8]: gate and up rows *interleaved* (gate row i, then up
  row i), the only SwiGLU layout the CPU kernel takes; `experts.down.q{bits}` [E, H, F*bits/8];
* `.scales` float32 [E, rows, in/block] and `.zero_points` uint8 [E, rows, ceil(blocks*bits/8)],
  the same asymmetric blocks MatMulNBits reads (quant.py).

Why the stacks are also declared graph inputs: onnxruntime "pre-packs" constant weights of
kernels that can use a faster layout, into a private heap copy made at load. For QMoE that is a
copy of *every* expert, which would end the expert budget. An initializer that is also a graph
input can be overridden at run time, so onnxruntime treats it as not constant and never packs it;
nobody feeds it, so the kernel reads the initializer, i.e. the file's mapped pages. Prepacking
stays on for everything else (the dense MatMulNBits, where it is what makes them fast).

Routing stays the family's (`route` hook): the chosen ids and weights are scattered into two
[T, E] rows — a selection score (weight + 1 at the chosen experts, 0 elsewhere) that makes the
kernel's own top-k pick exactly those experts, and the weights (`router_weights`, taken as given:
`normalize_routing_weights=0`) — so the `routing.i` outputs are what the kernel used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from packager.errors import PackError
from packager.onnx_export.external_data import StackedInfo, onnx_type
from packager.onnx_export.graph import MS_DOMAIN, Scope
from packager.onnx_export.moe import ExpertExtras
from packager.onnx_export.weights import Weights

# QMoE's accuracy_level per width (onnxruntime 1.32, its MatMulNBits meaning): 4 lets the
# kernel quantize each token's activations to int8 blocks and use integer dot products on the
# experts it packed, as llama.cpp's Q4_K/Q8_0 dot products do; 8-bit experts do so at every
# level. Measured in the package README.
QMOE_ACCURACY = {8: 4, 4: 4}


@dataclass(frozen=True)
class FusedProjection:
    """One projection's stacked codes, scales and zero points, as written."""

    codes: StackedInfo
    scales: StackedInfo
    zero_points: StackedInfo
    bits: int

    def tensors(self) -> list[tuple[StackedInfo, str]]:
        """(tensor, role suffix) in manifest order: codes, scales, zero points."""
        return [(self.codes, ""), (self.scales, ".scales"), (self.zero_points, ".zero_points")]


@dataclass(frozen=True)
class FusedStacks:
    gate_up: FusedProjection  # per expert [2F, H], rows interleaved
    down: FusedProjection  # per expert [H, F]
    ff: int  # F, the expert's intermediate size


def interleave_rows(ff: int) -> np.ndarray:
    """Row order that turns transformers' [gate; up] ([2F, H]) into [g0, u0, g1, u1, ...]."""
    return np.stack([np.arange(ff), np.arange(ff) + ff], axis=1).reshape(-1)


def write_fused(
    w: Weights,
    name: str,
    n_experts: int,
    read: Callable[[int], np.ndarray],
    interleave: bool,
    bits: int | None = None,
) -> FusedProjection:
    """Quantize and write experts [n, out, in] of `name` one at a time (rows interleaved for
    gate_up) at `bits` (default: the precision plan's); declare the three stacks as overridable
    initializers (see the module doc)."""
    first = read(0)
    out_dim, in_dim = int(first.shape[0]), int(first.shape[1])
    planned, imp = w.precision.experts(name, n_experts, in_dim)
    bits = bits or planned
    assert bits is not None
    bs = w.q.block_size
    if in_dim % bs:
        raise PackError(f"{name}: input size {in_dim} is not a multiple of block_size {bs}")
    order = interleave_rows(out_dim // 2) if interleave else None
    params: list[tuple[np.ndarray, np.ndarray]] = []  # (scales, zero points) per expert

    def codes() -> Iterator[np.ndarray]:
        for e in range(n_experts):
            m = first if e == 0 else read(e)
            bq = w._quantize(f"{name}[{e}]", m, bits, None if imp is None else imp[e], bs)
            packed, scales, zeros = bq.packed.reshape(out_dim, -1), bq.scales, bq.zero_points
            if order is not None:
                packed, scales, zeros = packed[order], scales[order], zeros[order]
            params.append((scales, zeros))
            yield packed

    written = [w.w.add_contiguous(f"{name}.q{bits}", codes(), n_experts)]
    for i, suffix in enumerate((".scales", ".zero_points")):
        written.append(w.w.add_contiguous(f"{name}{suffix}", (p[i] for p in params), n_experts))
    for proto, info in written:
        w.g.add_initializer(proto)
        w.g.add_input(info.name, onnx_type(np.dtype(info.dtype)), [n_experts, *info.shape])
    infos = [info for _, info in written]
    return FusedProjection(infos[0], infos[1], infos[2], bits)


def fused_stacks(
    w: Weights,
    prefix: str,
    n_experts: int,
    read_gate_up: Callable[[int], np.ndarray],
    read_down: Callable[[int], np.ndarray],
) -> FusedStacks:
    """Both projections of one layer, at gate_up's width: onnxruntime 1.32's CPU QMoE refuses a
    node whose widths differ ("Mixed-width QMoE execution is not yet implemented on CPU"), so
    where the precision plan widens the down projection (int4's Q4_K_M exceptions) it stays at
    4 bits here. Measured against the gather graph, which keeps those at 8 bits (package README):
    top-1 no lower on five fixtures, mean KL within 2 %, 12 % fewer expert bytes; widening the
    whole layer to 8 bits instead bought nothing measurable for 24 % more bytes."""
    gate_up = write_fused(w, f"{prefix}.gate_up", n_experts, read_gate_up, interleave=True)
    down = write_fused(w, f"{prefix}.down", n_experts, read_down, interleave=False,
                       bits=gate_up.bits)  # fmt: skip
    return FusedStacks(gate_up, down, gate_up.codes.shape[0] // 2)


def qmoe(
    s: Scope,
    x2d: str,
    logits: str,
    weights: str,
    ids: str,
    stacks: FusedStacks,
    top_k: int,
    block_size: int,
    w: Weights | None = None,
    extras: ExpertExtras | None = None,
) -> str:
    """sum_j weights[t, j] * expert_{ids[t, j]}(x2d[t]) for x2d [T, H] -> [T, H] in one node.

    `logits` [T, E] only lends its shape (zeros = logits * 0: one node where Shape, Gather,
    Concat and ConstantOfShape would be four; per-node cost is most of a small model's decode).
    Mixture weights are never negative, so weights + 1 > 0 marks exactly the chosen experts.
    """
    zeros = s.op("Mul", [logits, s.f32(0.0)], "Zeros")
    if extras is not None and extras.weigh_input:
        return _qmoe_weighing_inputs(s, x2d, zeros, weights, ids, stacks, top_k, block_size)
    marks = s.op("Add", [weights, s.f32(1.0)], "Marks")
    select = s.op("ScatterElements", [zeros, ids, marks], "SelectScores", axis=1)
    route = s.op("ScatterElements", [zeros, ids, weights], "RouteWeights", axis=1)
    fc1_bias = fc2_bias = ""
    act = {"activation_alpha": 1.0, "activation_beta": 0.0}
    if extras is not None:  # gpt-oss: biases (gate/up interleaved as the codes) and the clamp
        assert w is not None
        if extras.gate_up_bias is not None:
            fc1_bias = w.table(f"{extras.name}.gate_up_bias.interleaved",
                               extras.gate_up_bias[:, interleave_rows(stacks.ff)])
        if extras.down_bias is not None:
            fc2_bias = w.table(f"{extras.name}.down_bias", extras.down_bias)
        if extras.swiglu is not None:
            alpha, beta, limit = extras.swiglu
            act = {"activation_alpha": alpha, "activation_beta": beta, "swiglu_limit": limit}
    return _qmoe_node(s, x2d, select, route, stacks, top_k, block_size, fc1_bias, fc2_bias,
                      act, "QMoE")  # fmt: skip


def _qmoe_node(s: Scope, x2d: str, select: str, route: str, stacks: FusedStacks, top_k: int,
               block_size: int, fc1_bias: str, fc2_bias: str, act: dict[str, float],
               name: str) -> str:  # fmt: skip
    gu, dn = stacks.gate_up, stacks.down
    inputs = [x2d, select, gu.codes.name, gu.scales.name, fc1_bias, dn.codes.name,
              dn.scales.name, fc2_bias, "", "", "", gu.zero_points.name, dn.zero_points.name, "",
              route]  # fmt: skip
    return s.op(
        "QMoE", inputs, name, domain=MS_DOMAIN, k=top_k, expert_weight_bits=gu.bits,
        block_size=block_size, activation_type="swiglu", swiglu_fusion=1,
        normalize_routing_weights=0, weights_prepacked=0, accuracy_level=QMOE_ACCURACY[gu.bits],
        **act,
    )  # fmt: skip


def _qmoe_weighing_inputs(s: Scope, x2d: str, zeros: str, weights: str, ids: str,
                          stacks: FusedStacks, top_k: int, block_size: int) -> str:  # fmt: skip
    """Experts whose input the router's weight scales (Llama 4). QMoE weighs outputs and feeds
    every chosen expert the same row, so each of the k slots is one QMoE node choosing one
    expert (weight 1) for its token's row times that slot's weight; their sum is the layer's.
    With k = 1 (every released Llama 4) that is one node, as for any other family."""
    act = {"activation_alpha": 1.0, "activation_beta": 0.0}
    total = ""
    for j in range(top_k):
        slot = s.child(f"slot{j}") if top_k > 1 else s
        w_j = weights if top_k == 1 else s.slice(weights, j, j + 1, 1, f"slot{j}/Weight")
        ids_j = ids if top_k == 1 else s.slice(ids, j, j + 1, 1, f"slot{j}/Ids")
        x_j = slot.op("Mul", [x2d, w_j], "WeighInput")
        one = slot.op("Add", [slot.op("Mul", [w_j, s.f32(0.0)], "ZeroWeight"), s.f32(1.0)],
                      "OneWeight")  # fmt: skip
        mark = slot.op("ScatterElements", [zeros, ids_j, one], "SelectScores", axis=1)
        y = _qmoe_node(slot, x_j, mark, mark, stacks, 1, block_size, "", "", act, "QMoE")
        total = y if not total else s.op("Add", [total, y], f"slot{j}/Sum")
    return total
