"""Mixtral config: the generic fields; transformers names the expert count num_local_experts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from packager.families.config import ModelConfig


@dataclass(frozen=True, kw_only=True)
class MixtralConfig(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_local_experts", "num_experts")
