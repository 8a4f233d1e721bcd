"""Qwen3.5-MoE config (and Qwen3-Next's, which extends it): which layers are gated-DeltaNet
linear attention and which full attention, the DeltaNet shape, the shared expert, partial
M-RoPE, and the multi-token-prediction depth.

Released checkpoints and transformers agree on most names; the layer pattern is either an
explicit `layer_types` list or `full_attention_interval` (every n-th layer full attention, the
converter's default 4), and the MTP depth is `mtp_num_hidden_layers` (absent from Qwen3-Next's
released config, whose MTP tensors are then counted from the checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig

LINEAR, FULL = "linear_attention", "full_attention"


@dataclass(frozen=True, kw_only=True)
class QwenHybridConfig(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_experts",)

    shared_expert_intermediate_size: int
    full_attention_interval: int
    conv_kernel: int  # linear_conv_kernel_dim: the causal conv over q, k, v
    key_head_dim: int
    value_head_dim: int
    n_key_heads: int
    n_value_heads: int
    mrope_section: tuple[int, ...]  # () when the config leaves it out
    mtp_layers: int
    decoder_sparse_step: int
    mlp_only_layers: tuple[int, ...]

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        shared = r.int("shared_expert_intermediate_size", default=0)
        rope = r.nested("rope_parameters" if r.raw.get("rope_parameters") else "rope_scaling")
        return {
            **super().fields(r),
            "n_shared_experts": 1 if shared > 0 else 0,
            "shared_expert_intermediate_size": shared,
            # transformers' router always renormalises the top-k weights
            "norm_topk_prob": r.bool("norm_topk_prob", default=True),
            "full_attention_interval": r.int("full_attention_interval", default=4),
            "conv_kernel": r.int("linear_conv_kernel_dim"),
            "key_head_dim": r.int("linear_key_head_dim"),
            "value_head_dim": r.int("linear_value_head_dim"),
            "n_key_heads": r.int("linear_num_key_heads"),
            "n_value_heads": r.int("linear_num_value_heads"),
            "mrope_section": rope.ints("mrope_section"),
            "mtp_layers": r.int("mtp_num_hidden_layers", default=0),
            "decoder_sparse_step": r.int("decoder_sparse_step", default=1) or 1,
            "mlp_only_layers": r.ints("mlp_only_layers"),
        }

    @property
    def kinds(self) -> tuple[str, ...]:
        """Each layer's kind: layer_types when given, else every n-th layer full attention."""
        if self.layer_types:
            return self.layer_types
        n = max(self.full_attention_interval, 1)
        return tuple(FULL if (i + 1) % n == 0 else LINEAR for i in range(self.n_layers))

    @property
    def recurrent_layers(self) -> tuple[int, ...]:
        return tuple(i for i, kind in enumerate(self.kinds) if kind == LINEAR)

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, kind in enumerate(self.kinds) if kind == FULL)

    @property
    def key_dim(self) -> int:
        return self.key_head_dim * self.n_key_heads

    @property
    def value_dim(self) -> int:
        return self.value_head_dim * self.n_value_heads

    @property
    def rope_dim(self) -> int:
        """Rotated dimensions per head (the rest pass through)."""
        return int(self.head_dim * self.rope.partial_rotary_factor)

    @property
    def moe_layers(self) -> tuple[int, ...]:
        skip, step = set(self.mlp_only_layers), self.decoder_sparse_step
        return tuple(i for i in range(self.n_layers) if i not in skip and (i + 1) % step == 0)
