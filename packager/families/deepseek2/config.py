"""DeepSeek-V2 config: multi-head latent attention widths, leading dense layers, the router."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig


@dataclass(frozen=True, kw_only=True)
class DeepseekV2Config(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = (
        "n_routed_experts", "num_local_experts", "num_experts",
    )  # fmt: skip
    # What transformers' config class assumes for a field a config.json leaves out.
    defaults: ClassVar[dict[str, Any]] = {
        "n_shared_experts": 0, "first_k_dense_replace": 0, "scoring_func": "softmax",
        "topk_method": "greedy", "routed_scaling_factor": None,
    }  # fmt: skip

    q_lora_rank: int | None  # None: q is one projection (V2-Lite)
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    first_k_dense_replace: int  # layers before the first MoE layer
    moe_layer_freq: int
    scoring_func: str  # router: softmax (V2) or sigmoid (V3)
    topk_method: str  # greedy, group_limited_greedy (V2) or noaux_tc (V3)
    routed_scaling_factor: float | None

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        d = cls.defaults
        return {
            **super().fields(r),
            "n_shared_experts": r.int("n_shared_experts", default=d["n_shared_experts"]),
            "q_lora_rank": r.int("q_lora_rank", default=None),
            "kv_lora_rank": r.int("kv_lora_rank"),
            "qk_nope_head_dim": r.int("qk_nope_head_dim"),
            "qk_rope_head_dim": r.int("qk_rope_head_dim"),
            "v_head_dim": r.int("v_head_dim"),
            "first_k_dense_replace": r.int("first_k_dense_replace",
                                           default=d["first_k_dense_replace"]),
            "moe_layer_freq": r.int("moe_layer_freq", default=1),
            "scoring_func": str(r.first("scoring_func", default=d["scoring_func"])),
            "topk_method": str(r.first("topk_method", default=d["topk_method"])),
            "routed_scaling_factor": r.float("routed_scaling_factor",
                                             default=d["routed_scaling_factor"]),
        }

    @property
    def router_scoring(self) -> str:
        return self.scoring_func

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(range(self.first_k_dense_replace, self.n_layers))
