"""ERNIE-4.5-MoE: softmax router with a selection bias, shared experts, leading dense layers,
expert count named `moe_num_experts`; its multi-token-prediction weights are skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.ernie45moe.config import Ernie45MoeConfig
from packager.families.ernie45moe.gguf import Ernie45MoeGGUF
from packager.families.family import Family
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Ernie45Moe(Family):
    hf_architectures = ("Ernie4_5_MoeForCausalLM",)
    config_type = Ernie45MoeConfig
    gguf_type = Ernie45MoeGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.ernie45moe.onnx import Ernie45MoeOnnx

        return Ernie45MoeOnnx
