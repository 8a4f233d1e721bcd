"""Bytes of one (dense quant, expert quant) choice: dense weights, experts, KV cache, buffers.

Estimates from `contract.quant_types`, counting llama.cpp's fallback to another type where rows
do not divide into blocks; still a forecast: the bundle's real layout is measured on the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gguf

from contract.quant_types import QuantType, bytes_for, kv_bytes_per_element
from packager.plan.shape import ModelShape


@dataclass(frozen=True)
class Sizes:
    """Byte budget of one (dense quant, expert quant) choice."""

    q_dense: QuantType
    q_experts: QuantType
    dense: int
    expert: dict[int, int]
    kept: int
    kv: int
    top_k: int

    @property
    def experts_total(self) -> int:
        return self.kept * sum(self.expert.values())

    @property
    def stream(self) -> int:
        return self.top_k * sum(self.expert.values())

    @property
    def minimum(self) -> int:
        return self.dense + self.kv + self.stream

    @property
    def resident(self) -> int:
        return self.dense + self.kv + self.experts_total


def sizes_for(shape: ModelShape, q_dense: QuantType, q_experts: QuantType, kept: int,
              kv: int) -> Sizes:
    """The byte budget of one choice; `kept` experts per layer survive pruning."""
    return Sizes(q_dense, q_experts, bytes_for(shape.dense_params, shape.hidden_size, q_dense),
                 expert_bytes(shape, q_experts), kept, kv, shape.top_k)


def expert_bytes(shape: ModelShape, q: QuantType) -> dict[int, int]:
    """Bytes of one expert per MoE layer: the down projection has rows of expert_row_len, the
    other projections (gate, up) rows of hidden_size; each may hit llama.cpp's block fallback.
    Experts the checkpoint stores in a ggml type (`expert_storage`) keep its exact size."""
    if shape.expert_storage is not None:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[shape.expert_storage]]
        return {layer: -(-n // block) * size
                for layer, n in sorted(shape.expert_params_per_layer.items())}
    down = shape.hidden_size * shape.expert_row_len
    return {layer: bytes_for(n - down, shape.hidden_size, q)
            + bytes_for(down, shape.expert_row_len, q)
            for layer, n in sorted(shape.expert_params_per_layer.items())}


# llama.cpp keeps recurrent state in f32 whatever the KV cache type.
RECURRENT_BYTES_PER_VALUE = 4


def kv_cache_bytes(shape: ModelShape, context_length: int, cache_type: str) -> int:
    """K and V for every attention layer: layers x n_kv_heads x (head_dim_k + head_dim_v) x
    context; plus a hybrid model's recurrent state, whose size does not grow with the context."""
    layers = shape.n_layers if shape.kv_layers is None else shape.kv_layers
    per_token = layers * shape.n_kv_heads * (shape.head_dim_k + shape.head_dim_v)
    state = shape.recurrent_state_values * RECURRENT_BYTES_PER_VALUE
    return math.ceil(per_token * context_length * kv_bytes_per_element(cache_type)) + state


def gib(n: float) -> str:
    """Bytes as the rationale and the plan table print them (GiB above one, else MiB)."""
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"
