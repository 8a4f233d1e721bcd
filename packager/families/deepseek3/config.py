"""DeepSeek-V3 config (also Kimi-K2, Moonlight): V2's MLA plus the V3 router and MTP layers.

Released checkpoints and transformers name two fields differently: the expert count
(`n_routed_experts` / `num_local_experts`) and the multi-token-prediction depth
(`num_nextn_predict_layers` / `num_mtp_layers`); released configs also carry the router's
`scoring_func` and `topk_method`, which transformers' V3 hard-codes (sigmoid, noaux_tc).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader
from packager.families.deepseek2.config import DeepseekV2Config
from packager.families.expert_groups import check_prune

MTP_KEYS = ("num_nextn_predict_layers", "num_mtp_layers")


@dataclass(frozen=True, kw_only=True)
class DeepseekV3Config(DeepseekV2Config):
    defaults: ClassVar[dict[str, Any]] = {
        "n_shared_experts": 1, "first_k_dense_replace": 3, "scoring_func": "sigmoid",
        "topk_method": "noaux_tc", "routed_scaling_factor": 2.5,
    }  # fmt: skip

    rope_interleave: bool  # rotary dims in adjacent pairs (llama.cpp's deepseek2 layout)
    attention_bias: bool
    mtp_layers: int  # multi-token-prediction blocks stored after the main layers

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        return {
            **super().fields(r),
            # transformers' DeepseekV3Config defaults, for configs that leave them out
            "norm_topk_prob": r.bool("norm_topk_prob", default=True),
            "n_group": r.int("n_group", default=8),
            "topk_group": r.int("topk_group", default=4),
            "rope_interleave": r.bool("rope_interleave", default=True),
            "attention_bias": r.bool("attention_bias", default=False),
            "mtp_layers": r.int(*MTP_KEYS, default=0),
        }

    @property
    def mtp_key(self) -> str:
        """The name this checkpoint gives its MTP depth (for messages)."""
        return next((k for k in MTP_KEYS if self.raw.get(k) is not None), MTP_KEYS[0])

    def with_experts(self, n_keep: int) -> dict[str, Any]:
        check_prune(self, n_keep)
        return super().with_experts(n_keep)
