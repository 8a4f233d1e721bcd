"""Llama 4 config (text model): interleaved MoE layers, no-rope layers, chunked attention.

A composite checkpoint (Llama4ForConditionalGeneration) keeps these fields under
`text_config`; the registry and packager/composite.py hand this reader the text model's config.
Defaults are transformers'
Llama4TextConfig's: MoE every `interleave_moe_layer_step` layers (or the explicit
`moe_layers`), rope skipped every `no_rope_layer_interval`-th layer (or per `no_rope_layers`),
chunked attention on the rope layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig


@dataclass(frozen=True, kw_only=True)
class Llama4Config(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_local_experts", "num_experts")
    default_theta: ClassVar[float] = 500000.0

    intermediate_size_mlp: int | None  # the dense layers' width (`intermediate_size`: experts)
    interleave_moe_layer_step: int
    moe_layer_list: tuple[int, ...]  # `moe_layers` as the config lists it; () when absent
    use_qk_norm: bool
    no_rope_layers: tuple[int, ...]  # per layer, 1: rope; () when absent
    no_rope_layer_interval: int
    attention_chunk_size: int | None
    attn_temperature_tuning: bool
    floor_scale: int
    attn_scale: float
    attention_bias: bool

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        chunk = r.raw.get("attention_chunk_size", 8192)
        return {
            **super().fields(r),
            "intermediate_size_mlp": r.int("intermediate_size_mlp", default=None),
            "interleave_moe_layer_step": r.int("interleave_moe_layer_step", default=1),
            "moe_layer_list": r.ints("moe_layers"),
            "use_qk_norm": r.bool("use_qk_norm", default=True),
            "no_rope_layers": r.ints("no_rope_layers"),
            "no_rope_layer_interval": r.int("no_rope_layer_interval", default=4),
            "attention_chunk_size": None if chunk is None else r.int("attention_chunk_size"),
            "attn_temperature_tuning": r.bool("attn_temperature_tuning", default=True),
            "floor_scale": r.int("floor_scale", default=8192),
            "attn_scale": r.float("attn_scale", default=0.1),
            "attention_bias": r.bool("attention_bias", default=False),
        }

    @property
    def router_scoring(self) -> str:
        return "sigmoid"

    @property
    def interleaved_moe_layers(self) -> tuple[int, ...]:
        step = max(self.interleave_moe_layer_step, 1)
        return tuple(range(step - 1, self.n_layers, step))

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return self.moe_layer_list or self.interleaved_moe_layers

    def uses_rope(self, layer: int) -> bool:
        if self.no_rope_layers:
            return bool(self.no_rope_layers[layer])
        return (layer + 1) % max(self.no_rope_layer_interval, 1) != 0
