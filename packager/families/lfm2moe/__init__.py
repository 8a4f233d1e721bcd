"""LFM2-MoE (LFM2-8B-A1B and kin, built for phones): gated short convolutions beside grouped-
query attention, leading dense layers, a sigmoid router with a selection bias."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.lfm2moe.config import Lfm2MoeConfig
from packager.families.lfm2moe.gguf import Lfm2MoeGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Lfm2Moe(Family):
    hf_architectures = ("Lfm2MoeForCausalLM",)
    config_type = Lfm2MoeConfig
    gguf_type = Lfm2MoeGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.lfm2moe.onnx import Lfm2MoeOnnx

        return Lfm2MoeOnnx
