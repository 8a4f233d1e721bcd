"""GLM-4.5 MoE: sigmoid router with a selection bias and expert groups, one shared expert,
leading dense layers, partial rotary; its NextN (MTP) layers are skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.glm4moe.config import Glm4MoeConfig
from packager.families.glm4moe.gguf import Glm4MoeGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Glm4Moe(Family):
    hf_architectures = ("Glm4MoeForCausalLM",)
    config_type = Glm4MoeConfig
    gguf_type = Glm4MoeGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.glm4moe.onnx import Glm4MoeOnnx

        return Glm4MoeOnnx
