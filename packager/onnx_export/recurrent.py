"""Recurrent token mixers of hybrid models (short convolutions, gated DeltaNet, Mamba2) in ONNX.

A recurrent layer keeps a fixed-size state per sequence instead of a KV cache. The graph takes
each state as an extra input and returns its successor as an extra output, named after the
layer like the KV cache: `past_conv.{i}` / `present_conv.{i}` is a convolution's last
(kernel - 1) inputs, `[1, channels, kernel - 1]`; `past_ssm.{i}` / `present_ssm.{i}` is the
matrix state of a delta rule (`[1, heads, key dim, value dim]`) or a selective scan
(`[1, heads, head dim, state size]`). Zeros are the state before the first token. The caller
feeds each run's presents back as the next run's pasts, exactly as it does with K and V.

A prompt of S tokens is run as a recurrence: an ONNX `Scan` whose body is one token's update
(the form transformers uses at decode), so the same graph decodes one token or prefills many.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from packager.onnx_export.graph import Scope

CONV, SSM = "conv", "ssm"
_END = np.iinfo(np.int64).max


@dataclass(frozen=True)
class StateSpec:
    """One state tensor a recurrent layer carries between runs (batch axis left out)."""

    kind: str  # CONV or SSM
    shape: tuple[int, ...]

    def input_name(self, layer: int) -> str:
        return f"past_{self.kind}.{layer}"

    def output_name(self, layer: int) -> str:
        return f"present_{self.kind}.{layer}"

    @property
    def values(self) -> int:
        return int(np.prod(self.shape))


def conv_state(channels: int, kernel: int) -> StateSpec:
    return StateSpec(CONV, (channels, kernel - 1))


def causal_conv(
    s: Scope, x: str, past: str, weight: str, kernel: int, channels: int,
    bias: str | None = None, silu: bool = False,
) -> tuple[str, str]:
    """Depthwise causal convolution over time, continuing from `past`.

    x [1, S, C] -> (y [1, S, C], present [1, C, K-1]): the kernel runs over past ++ x without
    padding (transformers' causal_conv1d_update, for any S), and the window's last K-1 columns
    are the next run's past.
    """
    cols = s.transpose(x, [0, 2, 1], "ChannelsFirst")
    window = s.op("Concat", [past, cols], "WithPast", axis=2)  # [1, C, K-1+S]
    inputs = [window, weight] + ([bias] if bias else [])
    y = s.op("Conv", inputs, "Conv", group=channels, kernel_shape=[kernel])
    present = s.op("Slice", [window, s.const([1 - kernel]), s.const([_END]), s.const([2])],
                   "KeepLast")  # fmt: skip
    if silu:
        y = s.silu(y, "conv_act")
    return s.transpose(y, [0, 2, 1], "ChannelsLast"), present


def mask_padding(s: Scope, x: str, attention_mask: str) -> str:
    """Zero the rows of x [1, S, D] whose attention_mask entry is 0 (transformers'
    apply_mask_to_padding_states): a padded position must not enter a recurrent state."""
    seq = s.op("Shape", [x], "SeqShape", start=1, end=2)
    mine = s.op("Slice", [attention_mask, s.op("Neg", [seq], "NegSeq"), s.const([_END]),
                          s.const([1])], "OwnPositions")  # fmt: skip
    keep = s.unsqueeze(s.op("Cast", [mine], "KeepFloat", to=TensorProto.FLOAT), [-1], "KeepCol")
    return s.op("Mul", [x, keep], "MaskPadding")


def l2_normalize(s: Scope, x: str, eps: float, name: str) -> str:
    """x / sqrt(sum(x^2) + eps) over the last axis (the FLA l2norm transformers uses)."""
    sq = s.op("ReduceSum", [s.op("Mul", [x, x], f"{name}/Square"), s.const([-1])],
              f"{name}/SumSquares", keepdims=1)  # fmt: skip
    return s.op("Div", [x, s.op("Sqrt", [s.op("Add", [sq, s.f32(eps)], f"{name}/AddEps")],
                                f"{name}/Sqrt")], f"{name}/Normalize")  # fmt: skip


def gated_rms_norm(s: Scope, x: str, gate: str, weight: str, eps: float, name: str,
                   gate_first: bool = False) -> str:
    """RMSNorm over the last axis gated by silu(gate): norm(x) * w * silu(gate) (DeltaNet), or
    with `gate_first`, norm(x * silu(gate)) * w (Mamba2's norm_before_gate=False)."""
    if gate_first:
        return s.rms_norm(s.op("Mul", [x, s.silu(gate, f"{name}/gate")], f"{name}/Gate"),
                          weight, eps, name)  # fmt: skip
    normed = s.rms_norm(x, weight, eps, name)
    return s.op("Mul", [normed, s.silu(gate, f"{name}/gate")], f"{name}/Gate")


def typed(s: Scope, x: str, name: str) -> str:
    """x as float32 by a Cast, for values computed from onnxruntime's own ops (MatMulNBits),
    which onnx's shape inference gives no type: a Scan's outputs are typed only when all its
    inputs are, and the runtime's paging stages need every border value's type."""
    return s.op("Cast", [x], name, to=TensorProto.FLOAT)


class _Body:
    """A Scan body under construction: value names prefixed with the Scan's own path, so no
    body shadows a name of the graph around it."""

    def __init__(self, s: Scope, name: str) -> None:
        self.s, self.name, self.prefix = s, name, f"{s.prefix}/{name}/"
        self.nodes: list = []
        self.inputs: list = []

    def input(self, name: str, shape: list[int]) -> str:
        full = self.prefix + name
        self.inputs.append(helper.make_tensor_value_info(full, TensorProto.FLOAT, shape))
        return full

    def op(self, op_type: str, inputs: list[str], name: str) -> str:
        out = self.prefix + name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out))
        return out

    def run(self, states: list[str], scanned: list[str], outputs: list[str]) -> list[str]:
        """Scan over axis 0 of `scanned`, carrying `states` (the first body inputs); returns
        the final states, then the stacked per-step outputs (body outputs after the states)."""
        graph = helper.make_graph(
            self.nodes, self.prefix + "body", self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        )
        outs = self.s.op("Scan", [*states, *scanned], self.name, n_out=len(outputs), body=graph,
                         num_scan_inputs=len(scanned))  # fmt: skip
        return outs if isinstance(outs, list) else [outs]


def delta_rule(
    s: Scope, q: str, k: str, v: str, decay: str, beta: str, state: str,
    heads: int, dk: int, dv: int,
) -> tuple[str, str]:
    """The gated delta rule, one token at a time (transformers' torch_recurrent_gated_delta_rule).

    q, k [S, H, dk] (already L2-normalised, q scaled), v [S, H, dv], decay = exp(g) and beta
    [S, H]; state [H, dk, dv]. Per token: S <- S * decay; S <- S + k (beta (v - k S)); out = q S.
    Returns (out [S, H, dv], final state [H, dk, dv]).
    """
    scanned = [
        s.reshape(q, [0, heads, 1, dk], "QRows"),
        s.reshape(k, [0, heads, 1, dk], "KRows"),
        s.reshape(k, [0, heads, dk, 1], "KCols"),
        s.reshape(v, [0, heads, 1, dv], "VRows"),
        s.reshape(typed(s, decay, "DecayTyped"), [0, heads, 1, 1], "DecayCells"),
        s.reshape(typed(s, beta, "BetaTyped"), [0, heads, 1, 1], "BetaCells"),
    ]
    b = _Body(s, "DeltaRule")
    h = b.input("state", [heads, dk, dv])
    q_t, krow, kcol = b.input("q", [heads, 1, dk]), b.input("krow", [heads, 1, dk]), \
        b.input("kcol", [heads, dk, 1])
    v_t, dec, bet = b.input("v", [heads, 1, dv]), b.input("decay", [heads, 1, 1]), \
        b.input("beta", [heads, 1, 1])
    decayed = b.op("Mul", [h, dec], "Decayed")
    kv = b.op("MatMul", [krow, decayed], "KS")  # [H, 1, dv]
    delta = b.op("Mul", [b.op("Sub", [v_t, kv], "Error"), bet], "Delta")
    nxt = b.op("Add", [decayed, b.op("MatMul", [kcol, delta], "Update")], "Next")  # outer product
    out = b.op("MatMul", [q_t, nxt], "Out")  # [H, 1, dv]
    final, ys = b.run([state], scanned, [nxt, out])
    return s.reshape(ys, [0, heads, dv], "Out"), final


def selective_scan(
    s: Scope, x: str, dt: str, a: str, b: str, c: str, state: str,
    heads: int, head_dim: int, d_state: int,
) -> tuple[str, str]:
    """Mamba2's selective state update, one token at a time (transformers'
    mamba2_selective_state_update without the D skip).

    x [S, H, P], dt [S, H] (after bias and softplus), a = A [H] (negative), b and c [S, H, N]
    (each group's rows repeated over its heads); state [H, P, N]. Per token:
    h <- h * exp(dt A) + (dt x) b^T; y = h c. Returns (y [S, H, P], final state [H, P, N]).
    """
    da = s.op("Exp", [s.op("Mul", [dt, a], "DtA")], "DecayA")  # [S, H]
    scanned = [
        s.reshape(da, [0, heads, 1, 1], "DecayCells"),
        s.reshape(s.op("Mul", [x, s.unsqueeze(dt, [-1], "DtCol")], "DtX"),
                  [0, heads, head_dim, 1], "DtXCols"),
        s.reshape(b, [0, heads, 1, d_state], "BRows"),
        s.reshape(c, [0, heads, d_state, 1], "CCols"),
    ]
    body = _Body(s, "SelectiveScan")
    h = body.input("state", [heads, head_dim, d_state])
    dec, dx = body.input("decay", [heads, 1, 1]), body.input("dtx", [heads, head_dim, 1])
    b_t, c_t = body.input("b", [heads, 1, d_state]), body.input("c", [heads, d_state, 1])
    decayed = body.op("Mul", [h, dec], "Decayed")
    nxt = body.op("Add", [decayed, body.op("MatMul", [dx, b_t], "Update")], "Next")
    y = body.op("MatMul", [nxt, c_t], "Out")  # [H, P, 1]
    final, ys = body.run([state], scanned, [nxt, y])
    return s.reshape(ys, [0, heads, head_dim], "Out"), final
