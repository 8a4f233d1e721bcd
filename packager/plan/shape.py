"""What the planner knows about a model: parameter counts per part, never bytes or weights.

Bytes depend on the quant the search is trying, so the shape stays quant-free and sizes.py turns
it into bytes per candidate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packager.plan.errors import PlanError

_LAYER = re.compile(r"(?:^|\.)(?:blk|layers)\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model; parameter counts, not bytes."""

    n_layers: int
    moe_layers: tuple[int, ...]
    n_experts: int
    top_k: int
    hidden_size: int
    vocab_size: int
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    dense_params: int  # every weight outside the routed experts (embeddings, attention, shared)
    expert_params_per_layer: dict[int, int]  # params of ONE routed expert in that layer
    expert_row_len: int  # row length of ffn_down_exps (the expert's intermediate size)
    # Hybrid models: layers that keep a KV cache (None: all), and the f32 values of recurrent
    # state (convolution + SSM/delta-rule) one sequence keeps across the other layers.
    kv_layers: int | None = None
    recurrent_state_values: int = 0
    # A ggml type the experts keep whatever the build's quant, because the checkpoint already
    # stores them so (gpt-oss's MXFP4); None: the build's expert quant.
    expert_storage: str | None = None

    def validate(self) -> None:
        positive = ("n_layers", "n_experts", "top_k", "hidden_size", "vocab_size", "n_kv_heads",
                    "head_dim_k", "head_dim_v", "dense_params", "expert_row_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise PlanError(f"ModelShape.{name} must be a positive integer, got {value!r}")
        if self.top_k > self.n_experts:
            raise PlanError(f"ModelShape.top_k must be <= n_experts ({self.n_experts}), "
                            f"got {self.top_k}")
        bad = [x for x in self.moe_layers if not 0 <= x < self.n_layers]
        if not self.moe_layers or bad:
            raise PlanError(f"ModelShape.moe_layers must be non-empty layer indices in "
                            f"0..{self.n_layers - 1}, got {list(self.moe_layers)}")
        down = self.hidden_size * self.expert_row_len
        if set(self.expert_params_per_layer) != set(self.moe_layers) or any(
            v < down for v in self.expert_params_per_layer.values()
        ):
            raise PlanError("ModelShape.expert_params_per_layer must give, for exactly the "
                            f"moe_layers {list(self.moe_layers)}, at least hidden_size x "
                            f"expert_row_len ({down}) params (the down projection)")

    @property
    def active_params(self) -> int:
        """Weights one token multiplies: dense plus top_k experts in every MoE layer."""
        return self.dense_params + self.top_k * sum(self.expert_params_per_layer.values())


def shape_from_tensors(
    tensors: Iterable[tuple[str, Sequence[int], bool]], *, n_layers: int,
    moe_layers: Sequence[int], n_experts: int, top_k: int, hidden_size: int, vocab_size: int,
    n_kv_heads: int, head_dim_k: int, head_dim_v: int, kv_layers: int | None = None,
    recurrent_state_values: int = 0, expert_storage: str | None = None,
) -> ModelShape:
    """Build a ModelShape from (name, numpy-order shape, is_expert) triples, e.g. an adapter's
    planned tensors: GGUF names (`blk.N.ffn_down_exps.weight`), experts stacked as
    (n_experts, rows, row_len)."""
    dense, per_layer, rows = 0, dict.fromkeys(moe_layers, 0), 0
    for name, shape, is_expert in tensors:
        n = math.prod(shape)
        if not is_expert:
            dense += n
            continue
        m = _LAYER.search(name)
        if not m or int(m.group(1)) not in per_layer:
            raise PlanError(f"expert tensor '{name}' names no MoE layer of {list(moe_layers)}")
        per_layer[int(m.group(1))] += n // n_experts
        if "down" in name:
            rows = int(shape[-1])
    shape = ModelShape(n_layers, tuple(moe_layers), n_experts, top_k, hidden_size, vocab_size,
                       n_kv_heads, head_dim_k, head_dim_v, dense, per_layer, rows or hidden_size,
                       kv_layers, recurrent_state_values, expert_storage)
    shape.validate()
    return shape
