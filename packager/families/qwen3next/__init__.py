"""Qwen3-Next (Qwen3-Next-80B-A3B and kin): the first gated-DeltaNet + gated-attention Qwen, with
fused DeltaNet input projections, 512 small experts and a shared expert, plain partial rotary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.qwen3next.config import Qwen3NextConfig
from packager.families.qwen3next.gguf import Qwen3NextGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Qwen3Next(Family):
    hf_architectures = ("Qwen3NextForCausalLM",)
    config_type = Qwen3NextConfig
    gguf_type = Qwen3NextGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.qwen35moe.onnx import Qwen3NextOnnx

        return Qwen3NextOnnx
