"""Qwen2-MoE / Qwen3-MoE config: the sparse-layer pattern and the shared expert's width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig


@dataclass(frozen=True, kw_only=True)
class QwenMoeConfig(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_experts", "num_local_experts")

    shared_expert_intermediate_size: int
    decoder_sparse_step: int
    mlp_only_layers: tuple[int, ...]

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        shared = r.int("shared_expert_intermediate_size", default=0)
        return {
            **super().fields(r),
            "n_shared_experts": 1 if shared > 0 else 0,
            "shared_expert_intermediate_size": shared,
            "decoder_sparse_step": r.int("decoder_sparse_step", default=1) or 1,
            "mlp_only_layers": r.ints("mlp_only_layers"),
        }

    @property
    def moe_layers(self) -> tuple[int, ...]:
        # transformers: sparse unless listed in mlp_only_layers or off the sparse step.
        skip, step = set(self.mlp_only_layers), self.decoder_sparse_step
        return tuple(i for i in range(self.n_layers) if i not in skip and (i + 1) % step == 0)
