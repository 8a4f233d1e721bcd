"""DeepSeek-V3 (and Kimi-K2, Moonlight): MLA, sigmoid router with a selection bias,
group-limited top-k, routed scaling; multi-token-prediction layers are skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.deepseek3.config import DeepseekV3Config
from packager.families.deepseek3.gguf import DeepseekV3GGUF
from packager.families.family import Family
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class DeepseekV3(Family):
    hf_architectures = ("DeepseekV3ForCausalLM",)
    config_type = DeepseekV3Config
    gguf_type = DeepseekV3GGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.deepseek3.onnx import DeepseekV3Onnx

        return DeepseekV3Onnx
