"""OLMoE: full-width q/k norms before the head split, optional q/k/v clipping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.olmoe.config import OlmoeConfig
from packager.families.olmoe.gguf import OlmoeGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Olmoe(Family):
    hf_architectures = ("OlmoeForCausalLM",)
    config_type = OlmoeConfig
    gguf_type = OlmoeGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.olmoe.onnx import OlmoeOnnx

        return OlmoeOnnx
