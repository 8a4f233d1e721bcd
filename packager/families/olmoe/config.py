"""OLMoE config: the generic fields plus the optional q/k/v clipping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig


@dataclass(frozen=True, kw_only=True)
class OlmoeConfig(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_experts", "num_local_experts")

    clip_qkv: float | None

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        return {**super().fields(r), "clip_qkv": r.float("clip_qkv", default=None)}
