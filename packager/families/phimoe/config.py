"""Phi-MoE config (Phi-3.5-MoE): Mixtral's layout with LayerNorm, biases and sparsemixer routing.

`router_jitter_noise` is not only a training knob here: transformers' sparsemixer uses it at
inference too, as the relative distance from the best logit within which other experts still
share the softmax that weighs the chosen one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig


@dataclass(frozen=True, kw_only=True)
class PhimoeConfig(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_local_experts", "num_experts")
    default_theta: ClassVar[float] = 1000000.0

    router_jitter_noise: float
    attention_bias: bool
    lm_head_bias: bool
    norm_eps: float  # LayerNorm epsilon (transformers passes rms_norm_eps)

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        # transformers' PhimoeConfig defaults, for configs that leave them out
        return {
            **super().fields(r),
            "router_jitter_noise": r.float("router_jitter_noise", default=0.01),
            "attention_bias": r.bool("attention_bias", default=False),
            "lm_head_bias": r.bool("lm_head_bias", default=False),
            "norm_eps": r.float("rms_norm_eps", default=1e-5),
        }
