"""gpt-oss config: sliding-window layers, attention sinks, the clamped SwiGLU, MXFP4 experts.

The released config.json (OpenAI's) and transformers name some fields differently: the top-k
(`experts_per_token` / `num_experts_per_tok`), RoPE (`rope_scaling` with `rope_theta` beside it
/ `rope_parameters`); the release leaves `swiglu_alpha` to transformers' default. Its
`quantization_config` {quant_method: mxfp4} says the experts are stored as MXFP4 blocks and
scales (`*_blocks`, `*_scales`), which the GGUF keeps as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig

SLIDING, FULL = "sliding_attention", "full_attention"
# transformers' GptOssConfig defaults, for configs that leave a field out.
DEFAULT_ALPHA = 1.702
DEFAULT_LIMIT = 7.0


@dataclass(frozen=True, kw_only=True)
class GptOssConfig(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_local_experts", "num_experts")
    top_k_keys: ClassVar[tuple[str, ...]] = ("num_experts_per_tok", "experts_per_token")
    default_theta: ClassVar[float] = 150000.0

    swiglu_alpha: float
    swiglu_limit: float
    attention_bias: bool
    tie_embeddings: bool
    quant_method: str | None  # quantization_config.quant_method: "mxfp4" for the release

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        base = super().fields(r)
        n = base["n_layers"]
        # transformers: even layers slide, odd layers attend to everything.
        default_types = tuple(SLIDING if (i + 1) % 2 else FULL for i in range(n))
        quant = r.section("quantization_config")
        method = quant.get("quant_method")
        return {
            **base,
            "context_length": r.int("max_position_embeddings", default=131072),
            "rms_norm_eps": r.float("rms_norm_eps", default=1e-5),
            "layer_types": base["layer_types"] or default_types,
            "swiglu_alpha": r.float("swiglu_alpha", default=DEFAULT_ALPHA),
            "swiglu_limit": r.float("swiglu_limit", default=DEFAULT_LIMIT),
            "attention_bias": r.bool("attention_bias", default=True),
            "tie_embeddings": r.bool("tie_word_embeddings", default=False),
            "quant_method": None if method is None else str(method),
        }

    @property
    def expert_width(self) -> int:
        """The experts' intermediate size (gpt-oss has no dense MLP: intermediate_size)."""
        return self.require(self.intermediate_size, "intermediate_size")

    @property
    def mxfp4(self) -> bool:
        return self.quant_method == "mxfp4"

    @property
    def packed_weights(self) -> str | None:
        return "MXFP4" if self.mxfp4 else None

    def sliding(self) -> list[bool]:
        """Per layer: does it attend through the sliding window?"""
        return [t == SLIDING for t in self.layer_types]

    def with_experts(self, n_keep: int) -> dict[str, Any]:
        new = super().with_experts(n_keep)
        if self.raw.get("experts_per_token") is not None and self.top_k > n_keep:
            new["experts_per_token"] = n_keep
        return new
