"""Qwen3-Next (Qwen3-Next-80B-A3B and kin): the first gated-DeltaNet + gated-attention Qwen, with
fused DeltaNet input projections, 512 small experts and a shared expert, plain partial rotary."""

from __future__ import annotations

from packager.families.family import Family
from packager.families.qwen3next.config import Qwen3NextConfig
from packager.families.qwen3next.gguf import Qwen3NextGGUF
from packager.families.qwen35moe import ONNX_MISSING
from packager.families.registry import register


@register
class Qwen3Next(Family):
    hf_architectures = ("Qwen3NextForCausalLM",)
    config_type = Qwen3NextConfig
    gguf_type = Qwen3NextGGUF
    onnx_missing = ONNX_MISSING
