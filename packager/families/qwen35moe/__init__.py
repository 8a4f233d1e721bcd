"""Qwen3.5-MoE (Qwen3.5/3.6-35B-A3B and kin): gated-DeltaNet linear attention interleaved with
gated full attention, many small experts and a shared expert, partial M-RoPE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.qwen35moe.config import QwenHybridConfig
from packager.families.qwen35moe.gguf import Qwen35MoeGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Qwen35Moe(Family):
    hf_architectures = ("Qwen3_5MoeForCausalLM",)
    composite_architectures = ("Qwen3_5MoeForConditionalGeneration",)  # the released form
    config_type = QwenHybridConfig
    gguf_type = Qwen35MoeGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.qwen35moe.onnx import Qwen35MoeOnnx

        return Qwen35MoeOnnx
