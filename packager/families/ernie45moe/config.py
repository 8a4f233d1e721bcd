"""ERNIE-4.5-MoE config: ERNIE's own names for the expert layout.

ERNIE calls the expert count `moe_num_experts` and top-k `moe_k` (transformers maps both to the
usual names), places MoE layers from `moe_layer_start_index` to `moe_layer_end_index` every
`moe_layer_interval` layers, and gives its shared experts as a count (`moe_num_shared_experts`,
one MLP of count x `moe_intermediate_size`). Released checkpoints store multi-token-prediction
weights under `model.mtp_*` (`num_nextn_predict_layers`, transformers `num_mtp_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig

MTP_KEYS = ("num_nextn_predict_layers", "num_mtp_layers")


@dataclass(frozen=True, kw_only=True)
class Ernie45MoeConfig(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = (
        "moe_num_experts", "num_experts", "num_local_experts",
    )  # fmt: skip
    top_k_keys: ClassVar[tuple[str, ...]] = ("moe_k", "num_experts_per_tok")
    default_theta: ClassVar[float] = 500000.0

    moe_layer_start_index: int
    moe_layer_end_index: int  # -1: the last layer
    moe_layer_interval: int
    use_bias: bool
    moe_norm_min: float  # floor of the top-k probability sum before renormalising
    mtp_layers: int

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        # transformers' Ernie4_5_MoeConfig defaults, for configs that leave them out
        return {
            **super().fields(r),
            "n_shared_experts": r.int("moe_num_shared_experts", default=2),
            "moe_layer_start_index": r.int("moe_layer_start_index", default=1),
            "moe_layer_end_index": r.int("moe_layer_end_index", default=-1),
            "moe_layer_interval": r.int("moe_layer_interval", default=1),
            "use_bias": r.bool("use_bias", default=False),
            "moe_norm_min": r.float("moe_norm_min", default=1e-12),
            "mtp_layers": r.int(*MTP_KEYS, default=0),
        }

    @property
    def last_moe_layer(self) -> int:
        return self.n_layers - 1 if self.moe_layer_end_index < 0 else self.moe_layer_end_index

    @property
    def moe_layers(self) -> tuple[int, ...]:
        # transformers: (i + 1) % interval == 0 and start <= i <= end
        step = max(self.moe_layer_interval, 1)
        return tuple(i for i in range(self.n_layers)
                     if (i + 1) % step == 0
                     and self.moe_layer_start_index <= i <= self.last_moe_layer)  # fmt: skip

    @property
    def shared_intermediate_size(self) -> int:
        return self.n_shared_experts * self.require(self.moe_intermediate_size,
                                                    "moe_intermediate_size")  # fmt: skip
