"""Qwen3-Next config: Qwen3.5-MoE's hybrid fields (`QwenHybridConfig`), with Qwen3-Next's own
rotary default.

Its rotary covers a quarter of each head unless told otherwise; the released config.json says so
with a top-level `partial_rotary_factor` (beside `rope_theta` and `rope_scaling`), transformers 5
inside `rope_parameters`. Either is read, the nested one first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from packager.families.config import ConfigReader
from packager.families.qwen35moe.config import QwenHybridConfig

DEFAULT_PARTIAL_ROTARY = 0.25  # transformers' Qwen3NextConfig and the released checkpoints


@dataclass(frozen=True, kw_only=True)
class Qwen3NextConfig(QwenHybridConfig):
    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        base = super().fields(r)
        rope = base["rope"]
        nested = r.nested(rope.field_name).raw.get("partial_rotary_factor")
        if nested is None:
            factor = r.float("partial_rotary_factor", default=DEFAULT_PARTIAL_ROTARY)
            base["rope"] = replace(rope, partial_rotary_factor=factor)
        return base
