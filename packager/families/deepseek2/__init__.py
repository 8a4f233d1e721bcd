"""DeepSeek-V2: multi-head latent attention, shared experts, leading dense layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.deepseek2.config import DeepseekV2Config
from packager.families.deepseek2.gguf import DeepseekV2GGUF
from packager.families.family import Family
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class DeepseekV2(Family):
    hf_architectures = ("DeepseekV2ForCausalLM",)
    config_type = DeepseekV2Config
    gguf_type = DeepseekV2GGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.deepseek2.onnx import DeepseekV2Onnx

        return DeepseekV2Onnx
