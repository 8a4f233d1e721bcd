"""GLM-4.5 MoE config (GLM-4.5, GLM-4.5-Air, GLM-4.6): DeepSeek-V3's router on GQA attention.

Released checkpoints and transformers differ in a few names: the expert count
(`n_routed_experts`, which transformers also reads as `num_local_experts`), the NextN depth
(`num_nextn_predict_layers` / `num_mtp_layers`) and the rotary fraction (top-level
`partial_rotary_factor` in released configs, inside `rope_parameters` in transformers 5; 0.5
when absent, as both transformers and llama.cpp's converter assume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig
from packager.families.expert_groups import check_prune

MTP_KEYS = ("num_nextn_predict_layers", "num_mtp_layers")


@dataclass(frozen=True, kw_only=True)
class Glm4MoeConfig(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = (
        "n_routed_experts", "num_local_experts", "num_experts",
    )  # fmt: skip

    first_k_dense_replace: int  # leading dense layers
    routed_scaling_factor: float
    use_qk_norm: bool
    attention_bias: bool
    partial_rotary_factor: float
    mtp_layers: int  # NextN blocks stored after the main layers

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        rope = r.nested("rope_parameters")
        partial = rope.float("partial_rotary_factor",
                             default=r.float("partial_rotary_factor", default=0.5))  # fmt: skip
        return {
            **super().fields(r),
            # transformers' Glm4MoeConfig defaults, for configs that leave them out
            "n_shared_experts": r.int("n_shared_experts", default=1),
            "norm_topk_prob": r.bool("norm_topk_prob", default=True),
            "n_group": r.int("n_group", default=1),
            "topk_group": r.int("topk_group", default=1),
            "first_k_dense_replace": r.int("first_k_dense_replace", default=1),
            "routed_scaling_factor": r.float("routed_scaling_factor", default=1.0),
            "use_qk_norm": r.bool("use_qk_norm", default=False),
            "attention_bias": r.bool("attention_bias", default=False),
            "partial_rotary_factor": partial,
            "mtp_layers": r.int(*MTP_KEYS, default=1),
        }

    @property
    def mtp_key(self) -> str:
        """The name this checkpoint gives its NextN depth (for messages)."""
        return next((k for k in MTP_KEYS if self.raw.get(k) is not None), MTP_KEYS[0])

    @property
    def rotary_dim(self) -> int:
        """How many leading dims of each head are rotated (the rest pass through)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def router_scoring(self) -> str:
        return "sigmoid"

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(range(self.first_k_dense_replace, self.n_layers))

    def with_experts(self, n_keep: int) -> dict[str, Any]:
        check_prune(self, n_keep)
        return super().with_experts(n_keep)
