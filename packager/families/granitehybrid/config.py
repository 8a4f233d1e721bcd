"""Granite-4.0-H config (transformers `granitemoehybrid`): which layers are Mamba2 and which
attention, the Mamba2 shape, the four Granite multipliers, the shared MLP and the position
embedding switch.

Released checkpoints name the layer kinds "mamba" / "attention" (`layer_types`, older
transformers `layers_block_type`); transformers 5 saves "linear_attention" / "full_attention".
`mamba_d_head` may be "auto" (d_inner / heads). transformers saves `time_step_limit`'s infinite
bound as {"__float__": "Infinity"}; a released config may leave the field out (no limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from packager.families.config import ConfigReader, ModelConfig

MAMBA, ATTENTION = "mamba", "attention"
_KINDS = {"mamba": MAMBA, "linear_attention": MAMBA,
          "attention": ATTENTION, "full_attention": ATTENTION}  # fmt: skip
NO_LIMIT = (0.0, math.inf)


@dataclass(frozen=True, kw_only=True)
class GraniteHybridConfig(ModelConfig):
    kinds: tuple[str, ...]  # MAMBA / ATTENTION per layer; an unknown name is kept, then refused
    shared_intermediate_size: int
    embedding_multiplier: float
    attention_multiplier: float
    residual_multiplier: float
    logits_scaling: float
    position_embedding_type: str  # "nope" or "rope" (None in a config reads as "nope")
    attention_bias: bool
    mamba_heads: int
    mamba_groups: int
    mamba_state: int
    mamba_head_dim: int
    mamba_conv: int
    mamba_expand: float
    mamba_conv_bias: bool
    mamba_proj_bias: bool
    time_step_limit: tuple[float, float]

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        base = super().fields(r)
        n, hidden = base["n_layers"], base["hidden_size"]
        raw_kinds = r.raw.get("layer_types") or r.raw.get("layers_block_type")
        kinds = tuple(_KINDS.get(k, str(k)) for k in raw_kinds) if raw_kinds else (MAMBA,) * n
        expand = r.float("mamba_expand", default=2.0)
        heads = r.int("mamba_n_heads", default=128)
        d_head = r.raw.get("mamba_d_head", "auto")
        shared = r.int("shared_intermediate_size", default=1024)
        return {
            **base,
            "layer_types": kinds,
            "kinds": kinds,
            # each routed expert's width is `intermediate_size`
            "moe_intermediate_size": base["intermediate_size"],
            "n_shared_experts": 1 if shared > 0 else 0,
            "norm_topk_prob": True,  # softmax over the top-k logits: renormalised
            "shared_intermediate_size": shared,
            "embedding_multiplier": r.float("embedding_multiplier", default=1.0),
            "attention_multiplier": r.float("attention_multiplier", default=1.0),
            "residual_multiplier": r.float("residual_multiplier", default=1.0),
            "logits_scaling": r.float("logits_scaling", default=1.0),
            "position_embedding_type": str(r.raw.get("position_embedding_type") or "nope"),
            "attention_bias": r.bool("attention_bias", default=False),
            "mamba_heads": heads,
            "mamba_groups": r.int("mamba_n_groups", default=1),
            "mamba_state": r.int("mamba_d_state", default=256),
            "mamba_head_dim": (int(expand * hidden) // max(heads, 1) if d_head == "auto"
                               else r.int("mamba_d_head")),  # fmt: skip
            "mamba_conv": r.int("mamba_d_conv", default=4),
            "mamba_expand": expand,
            "mamba_conv_bias": r.bool("mamba_conv_bias", default=True),
            "mamba_proj_bias": r.bool("mamba_proj_bias", default=False),
            "time_step_limit": _limit(r),
        }

    @property
    def d_inner(self) -> int:
        return int(self.mamba_expand * self.hidden_size)

    @property
    def conv_channels(self) -> int:
        """What the Mamba2 convolution runs over: x, then B and C of every group."""
        return self.d_inner + 2 * self.mamba_groups * self.mamba_state

    @property
    def mamba_layers(self) -> tuple[int, ...]:
        return tuple(i for i, k in enumerate(self.kinds) if k == MAMBA)

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, k in enumerate(self.kinds) if k == ATTENTION)


def _limit(r: ConfigReader) -> tuple[float, float]:
    """time_step_limit as two floats; JSON's spellings of infinity read as math.inf."""
    value = r.raw.get("time_step_limit")
    if value is None:
        return NO_LIMIT

    def one(v: Any) -> float:
        if isinstance(v, dict) and "__float__" in v:
            v = v["__float__"]
        if isinstance(v, str):
            v = float(v)  # "Infinity", "inf"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise r.error(f"field 'time_step_limit' must be two numbers, got {value!r}")
        return float(v)

    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise r.error(f"field 'time_step_limit' must be two numbers, got {value!r}")
    return one(value[0]), one(value[1])
