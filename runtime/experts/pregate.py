"""Pre-gating: a later MoE layer's router applied to an earlier layer's hidden state.

The residual stream changes little from one layer to the next, so layer L+1's router applied to
layer L's hidden state guesses L+1's experts before L+1 computes them (the idea of "pre-gated"
MoE). The router input is RMSNorm(x) * w_norm; RMSNorm's 1/rms is one positive number per token
and softmax and sigmoid are increasing, so the ranking of experts only needs
`(G * w_norm) @ x`: the norm weight is folded into the router matrix once, and a guess is one
small matrix-vector product per layer. A router with its own bias (gpt-oss: `ffn_gate_inp.bias`,
added to the logits) breaks that: the 1/rms no longer cancels, so those logits are taken of the
normalised state. Weights come from the GGUF (`ffn_gate_inp`, `ffn_norm` or
`post_attention_norm`, and `exp_probs_b` where a model adds a selection bias); this module is
pure numpy otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import BundleError


@dataclass(frozen=True)
class RouterWeights:
    """One MoE layer's router with its input norm folded in: logits ∝ matrix @ hidden."""

    layer: int
    matrix: np.ndarray  # float32 [n_experts, n_embd] = ffn_gate_inp * ffn_norm
    bias: np.ndarray | None = None  # selection bias added to the router's scores
    # What the bias is added to: sigmoids (DeepSeek-V3, GLM-4.5) or softmax probabilities
    # (ERNIE-4.5), as the GGUF's expert_gating_func says.
    gating: str = "sigmoid"
    logit_bias: np.ndarray | None = None  # the router's own bias, added to its logits (gpt-oss)
    eps: float = 1e-6  # the norm's epsilon (matters only with a logit bias)


def _array(tensor: object) -> np.ndarray:
    import gguf

    data = np.asarray(tensor.data)  # type: ignore[attr-defined]
    kind = tensor.tensor_type  # type: ignore[attr-defined]
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return data.astype(np.float32)
    return gguf.quants.dequantize(data, kind).astype(np.float32)


# llama.cpp's gating functions (LLAMA_EXPERT_GATING_FUNC_TYPE_*) whose ranking pre-gating
# reproduces: softmax (the default when a GGUF names none) and sigmoid (plus a selection bias).
PREGATED = {1: "softmax", 2: "sigmoid"}
_GATING_NAMES = {3: "softmax over the chosen experts", 4: "sqrt-softplus"}


def pregate_refusal(model_path: str | Path) -> str | None:
    """Why pre-gating cannot guess this GGUF's experts (one line), or None when it can: a
    gating function the guess does not compute, or a residual stream split into several
    hyper-connection streams (what the next router reads is not one layer's hidden state)."""
    from contract.gguf_layout import open_reader

    try:
        fields = open_reader(Path(model_path)).fields
    except BundleError as e:
        return str(e)

    def get(key: str) -> object:
        field = fields.get(key)
        return field.contents() if field is not None else None

    arch = get("general.architecture")
    gating = get(f"{arch}.expert_gating_func")
    if gating is not None and int(gating) not in PREGATED:
        name = _GATING_NAMES.get(int(gating), f"gating function {gating}")
        return f"pre-gating ranks softmax and sigmoid routers, not {name} ones"
    streams = get(f"{arch}.hyper_connection.count")
    if streams is not None and int(streams) > 1:
        return f"the residual stream is {streams} hyper-connection streams"
    return None


def read_routers(model_path: str | Path, moe_layers: Sequence[int]) -> dict[int, RouterWeights]:
    """Every MoE layer's folded router from a GGUF (a few KiB per layer: read once)."""
    from contract.gguf_layout import open_reader

    reader = open_reader(Path(model_path))  # parsed once per load (a BundleError if damaged)
    tensors = {t.name: t for t in reader.tensors}
    gating = _gating(reader)
    eps = next((float(f.contents()) for k, f in reader.fields.items()
                if k.endswith(".attention.layer_norm_rms_epsilon")), 1e-6)
    out: dict[int, RouterWeights] = {}
    for layer in moe_layers:
        gate = tensors.get(f"blk.{layer}.ffn_gate_inp.weight")
        # The norm in front of the router: ffn_norm, or post_attention_norm where a graph
        # (qwen35moe, qwen3next, gpt-oss) names the pre-MoE norm so.
        norm = tensors.get(f"blk.{layer}.ffn_norm.weight") \
            or tensors.get(f"blk.{layer}.post_attention_norm.weight")
        if gate is None or norm is None:
            raise BundleError(f"{model_path}: layer {layer} has no ffn_gate_inp/ffn_norm weight")
        g = _array(gate).reshape(-1, _array(norm).size)
        bias = tensors.get(f"blk.{layer}.exp_probs_b.bias")
        logit_bias = tensors.get(f"blk.{layer}.ffn_gate_inp.bias")
        out[layer] = RouterWeights(
            layer,
            np.ascontiguousarray(g * _array(norm).reshape(1, -1), dtype=np.float32),
            None if bias is None else _array(bias).reshape(-1),
            gating,
            None if logit_bias is None else _array(logit_bias).reshape(-1),
            eps,
        )
    return out


def _gating(reader: object) -> str:
    """ "softmax" when the GGUF records a softmax gating function, else "sigmoid"."""
    import gguf

    fields = reader.fields  # type: ignore[attr-defined]
    arch = fields.get("general.architecture")
    key = f"{arch.contents()}.expert_gating_func" if arch is not None else ""
    value = fields[key].contents() if key in fields else None
    return "softmax" if value == gguf.ExpertGatingFuncType.SOFTMAX else "sigmoid"


class Pregate:
    """Ranks a target layer's experts from another layer's hidden state."""

    def __init__(self, routers: dict[int, RouterWeights]) -> None:
        self.routers = routers

    def scores(self, target: int, hidden: np.ndarray) -> np.ndarray:
        """[n_tokens, n_experts] selection scores (ordered like the router's) for `target`."""
        r = self.routers[target]
        x = hidden.reshape(-1, r.matrix.shape[1])
        logits = x @ r.matrix.T
        if r.logit_bias is not None:
            rms = np.sqrt(np.mean(np.square(x, dtype=np.float32), axis=1, keepdims=True) + r.eps)
            logits = logits / rms + r.logit_bias
        if r.bias is not None and r.gating == "softmax":
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            logits = e / e.sum(axis=1, keepdims=True) + r.bias
        elif r.bias is not None:
            logits = 1.0 / (1.0 + np.exp(-logits)) + r.bias
        return logits

    def rank(self, target: int, hidden: np.ndarray, m: int) -> np.ndarray:
        """[n_tokens, m] the m highest-scoring experts of `target`, best first."""
        s = self.scores(target, hidden)
        m = min(m, s.shape[1])
        top = np.argpartition(-s, m - 1, axis=1)[:, :m]
        order = np.take_along_axis(s, top, axis=1).argsort(axis=1)[:, ::-1]
        return np.take_along_axis(top, order, axis=1)


def next_layers(moe_layers: Sequence[int], layer: int, depth: int) -> list[int]:
    """The MoE layers 1..depth after `layer` (fewer at the end of the stack)."""
    order = list(moe_layers)
    i = order.index(layer)
    return order[i + 1 : i + 1 + depth]
