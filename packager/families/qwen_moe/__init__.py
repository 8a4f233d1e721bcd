"""Qwen2-MoE and Qwen3-MoE: one folder, two registered families sharing their config shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.qwen_moe.config import QwenMoeConfig
from packager.families.qwen_moe.gguf import Qwen2MoeGGUF, Qwen3MoeGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Qwen2Moe(Family):
    hf_architectures = ("Qwen2MoeForCausalLM",)
    config_type = QwenMoeConfig
    gguf_type = Qwen2MoeGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.qwen_moe.onnx import Qwen2MoeOnnx

        return Qwen2MoeOnnx


@register
class Qwen3Moe(Family):
    hf_architectures = ("Qwen3MoeForCausalLM",)
    config_type = QwenMoeConfig
    gguf_type = Qwen3MoeGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.qwen_moe.onnx import Qwen3MoeOnnx

        return Qwen3MoeOnnx
