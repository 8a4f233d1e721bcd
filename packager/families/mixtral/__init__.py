"""Mixtral: GQA attention, softmax top-k renormalised, experts named w1/w3/w2."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.mixtral.config import MixtralConfig
from packager.families.mixtral.gguf import MixtralGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Mixtral(Family):
    hf_architectures = ("MixtralForCausalLM",)
    config_type = MixtralConfig
    gguf_type = MixtralGGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.mixtral.onnx import MixtralOnnx

        return MixtralOnnx
