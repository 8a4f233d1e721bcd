"""The decoder skeleton every family shares: embedding, layers, final norm, LM head, I/O names.

The interface is the conventional decoder-only one onnxruntime-genai drives (``input_ids``,
``attention_mask``, ``position_ids``, ``past_key_values.i.key/value`` in; ``logits``,
``present.i.key/value`` out), plus one ``routing.i`` output per MoE layer: the expert ids the
router chose, [S, top_k] int64, so the runtime can read routing back without engine hooks.
Hybrid families replace attention in their recurrent layers by a token mixer whose state is
carried as ``past_conv.i`` / ``past_ssm.i`` inputs and ``present_*`` outputs (recurrent.py);
those layers have no ``past_key_values.i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnx import ModelProto, TensorProto, helper

from packager.onnx_export.blocks import Context, causal_mask, rotary
from packager.onnx_export.external_data import DataWriter
from packager.onnx_export.graph import MS_DOMAIN, Graph, Scope
from packager.onnx_export.moe import LayerStacks, moe_experts
from packager.onnx_export.precision import Precision
from packager.onnx_export.qmoe import FusedStacks, fused_stacks, qmoe
from packager.onnx_export.quant import QuantScheme
from packager.onnx_export.weights import Weights
from packager.source import Checkpoint

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter

# 23 is the first opset with the Attention operator (blocks.attend_with_past; 21 brought blocked
# DequantizeLinear and int4 types); IR 11 goes with it.
OPSET = 23
IR_VERSION = 11
S, T, P = "sequence_length", "total_sequence_length", "past_sequence_length"


@dataclass(frozen=True)
class BuiltModel:
    model: ModelProto
    stacks: dict[int, LayerStacks | FusedStacks]
    dense_bytes: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def build_model(
    ckpt: Checkpoint,
    fam: OnnxAdapter,
    writer: DataWriter,
    quant: QuantScheme,
    expert_mode: str = "unique",
    dequant: str = "dq",
    precision: Precision | None = None,
) -> BuiltModel:
    g = Graph()
    w = Weights(ckpt, g, writer, quant, dequant, precision)
    layouts = fam.kv_layouts()  # per layer: (KV heads, key dim, value dim)
    g.add_input("input_ids", TensorProto.INT64, [1, S])
    g.add_input("attention_mask", TensorProto.INT64, [1, T])
    g.add_input("position_ids", TensorProto.INT64, [1, S])
    states = fam.states()  # recurrent layers: their state instead of a KV cache
    past: dict[int, tuple[str, str]] = {}
    state_in: dict[int, dict[str, str]] = {}
    for i in range(fam.n_layers):
        if i in states:
            state_in[i] = {sp.kind: g.add_input(sp.input_name(i), TensorProto.FLOAT,
                                                [1, *sp.shape]) for sp in states[i]}  # fmt: skip
            continue
        kv_heads, k_dim, v_dim = layouts[i]
        k = g.add_input(f"past_key_values.{i}.key", TensorProto.FLOAT, [1, kv_heads, P, k_dim])
        v = g.add_input(f"past_key_values.{i}.value", TensorProto.FLOAT, [1, kv_heads, P, v_dim])
        past[i] = (k, v)

    root = g.scope("/model")
    h = w.embedding(root.child("embed_tokens"), "input_ids", "model.embed_tokens.weight")
    if fam.embedding_scale != 1.0:
        h = root.op("Mul", [h, root.f32(fam.embedding_scale)], "embed_scale")
    mask = causal_mask(root.child("attn_mask"), "input_ids", "attention_mask")
    ctx = Context(g, w, mask, rotary(root.child("rotary_emb"), "position_ids", fam.rope()))
    presents: dict[int, tuple[str, str]] = {}
    state_out: dict[int, dict[str, str]] = {}
    routing: dict[int, str] = {}
    stacks: dict[int, LayerStacks | FusedStacks] = {}
    moe_layers = set(fam.moe_layers)
    # Each residual Add is fused into the norm after it (residual_norm): `m` is the branch
    # output still to be added to `h`, by the next layer's input norm or the final one.
    m: str | None = None
    for i in range(fam.n_layers):
        ls = root.child(f"layers.{i}")
        in_norm, post_norm = fam.layer_norms(i)
        x, h = fam.residual_norm(ctx, ls, h, m, in_norm, "input_layernorm")
        if i in states:
            a, state_out[i] = fam.mixer(ctx, ls.child("mixer"), i, x, state_in[i])
        else:
            a, pk, pv = fam.attention(ctx, ls.child("attn"), i, x, past[i])
            presents[i] = (pk, pv)
        x, h = fam.residual_norm(ctx, ls, h, a, post_norm, "post_attention_layernorm")
        if i in moe_layers:
            m, routing[i], stacks[i] = _moe_layer(ctx, fam, ls.child("moe"), i, x, expert_mode)
        else:
            m = fam.dense_mlp(ctx, ls.child("mlp"), i, x)

    h, _ = fam.residual_norm(ctx, root, h, m, fam.final_norm, "norm")
    head = "lm_head.weight" if w.has("lm_head.weight") else "model.embed_tokens.weight"
    # Under int4 the LM head stays 8-bit (llama.cpp's Q4 mixes keep the output tensor wider),
    # also when it is the tied embedding table.
    bias = "lm_head.bias" if w.has("lm_head.bias") else None  # Phi-MoE's
    logits = w.linear(root.child("lm_head"), h, head, bits=8 if quant.bits == 4 else None,
                      bias=bias)  # fmt: skip

    g.add_output("logits", logits, TensorProto.FLOAT, [1, S, fam.vocab])
    for i in range(fam.n_layers):
        if i in states:
            for sp in states[i]:
                g.add_output(sp.output_name(i), state_out[i][sp.kind], TensorProto.FLOAT,
                             [1, *sp.shape])  # fmt: skip
            continue
        pk, pv = presents[i]
        kv_heads, k_dim, v_dim = layouts[i]
        g.add_output(f"present.{i}.key", pk, TensorProto.FLOAT, [1, kv_heads, T, k_dim])
        g.add_output(f"present.{i}.value", pv, TensorProto.FLOAT, [1, kv_heads, T, v_dim])
    for i, ids in routing.items():  # an Identity: the staged runner finds each router by it
        g.add_output(f"routing.{i}", ids, TensorProto.INT64, [S, fam.top_k], rename=False)

    opsets = [helper.make_opsetid("", OPSET)]
    if MS_DOMAIN in g.domains:
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    model = helper.make_model(
        g.to_proto(f"edgemoe {fam.architecture}"),
        opset_imports=opsets,
        producer_name="edgemoe",
        ir_version=IR_VERSION,
    )
    # Fused expert stacks are graph inputs only so onnxruntime never packs them (qmoe.py).
    overridable = {t.name for t in g.initializers}
    return BuiltModel(
        model,
        stacks,
        w.dense_bytes,
        tuple(v.name for v in g.inputs if v.name not in overridable),
        tuple(v.name for v in g.outputs),
    )


def _moe_layer(
    ctx: Context, fam: OnnxAdapter, s: Scope, i: int, x: str, mode: str
) -> tuple[str, str, LayerStacks | FusedStacks]:
    w, pre = ctx.weights, fam.moe_prefix(i)
    x2d = s.reshape(x, [-1, fam.hidden], "Flatten")
    router, bias = fam.router_tensors(i)
    logits = w.linear(s.child("router"), x2d, router, bias=bias, keep_fp32=True)
    weights, ids = fam.route(ctx, s.child("router"), i, logits)
    read_gate_up, read_down = fam.expert_readers(i)
    extras = fam.expert_extras(ctx, i)
    stacks: LayerStacks | FusedStacks
    if mode == "fused":
        stacks = fused_stacks(w, f"{pre}.experts", fam.n_experts, read_gate_up, read_down)
        y = qmoe(s.child("experts"), x2d, logits, weights, ids, stacks, fam.top_k,
                 w.q.block_size, w, extras)  # fmt: skip
    else:
        stacks = LayerStacks(
            gate_up=w.expert_stack(f"{pre}.experts.gate_up", fam.n_experts, read_gate_up),
            down=w.expert_stack(f"{pre}.experts.down", fam.n_experts, read_down),
        )
        y = moe_experts(ctx, s.child("experts"), x2d, weights, ids, stacks, fam.top_k, mode,
                        extras)  # fmt: skip
    shared = fam.shared(ctx, s, i, x2d)
    if shared is not None:
        y = s.op("Add", [y, shared], "AddShared")
    return s.reshape(y, [1, -1, fam.hidden], "Unflatten"), ids, stacks
