"""Granite-4.0-H (granite-4.0-h-tiny / -small and kin): Mamba2 layers beside attention, routed
experts plus a shared MLP in every layer, Granite's embedding/attention/residual/logit scales."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.granitehybrid.config import GraniteHybridConfig
from packager.families.granitehybrid.gguf import GraniteHybridGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class GraniteHybrid(Family):
    hf_architectures = ("GraniteMoeHybridForCausalLM",)
    config_type = GraniteHybridConfig
    gguf_type = GraniteHybridGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.granitehybrid.onnx import GraniteHybridOnnx

        return GraniteHybridOnnx
