"""LFM2-MoE config: which layers are short convolutions and which attention, the leading dense
layers, the sigmoid router with its selection bias and routed scaling.

Released checkpoints and transformers differ in places: the layer pattern is `layer_types`
("conv" / "full_attention") or `full_attn_idxs` (the attention layers' indices), the norm epsilon
is `norm_eps` (not rms_norm_eps), and older configs tie the output with `tie_embedding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packager.families.config import ConfigReader, ModelConfig

CONV, ATTENTION = "conv", "full_attention"


@dataclass(frozen=True, kw_only=True)
class Lfm2MoeConfig(ModelConfig):
    conv_cache: int  # conv_L_cache: the short convolution's kernel length
    conv_bias: bool
    n_dense_layers: int  # num_dense_layers: leading layers with a dense feed-forward
    use_expert_bias: bool
    routed_scaling_factor: float

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        base = super().fields(r)
        n = base["n_layers"]
        kinds = base["layer_types"]
        if not kinds and r.raw.get("full_attn_idxs") is not None:
            full = set(r.ints("full_attn_idxs"))
            kinds = tuple(ATTENTION if i in full else CONV for i in range(n))
        return {
            **base,
            "layer_types": kinds,
            "rms_norm_eps": r.float("norm_eps", "rms_norm_eps", default=1e-5),
            "norm_topk_prob": r.bool("norm_topk_prob", default=True),
            "conv_cache": r.int("conv_L_cache", default=3),
            "conv_bias": r.bool("conv_bias", default=False),
            "n_dense_layers": r.int("num_dense_layers", default=2),
            "use_expert_bias": r.bool("use_expert_bias", default=True),
            "routed_scaling_factor": r.float("routed_scaling_factor", default=1.0),
        }

    @property
    def conv_layers(self) -> tuple[int, ...]:
        return tuple(i for i, kind in enumerate(self.layer_types) if kind == CONV)

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(range(self.n_dense_layers, self.n_layers))

    @property
    def router_scoring(self) -> str:
        return "sigmoid"
