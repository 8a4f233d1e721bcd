"""Phi-MoE (Phi-3.5-MoE): sparsemixer top-2 routing, LayerNorm, q/k/v/o and LM-head biases.
ONNX only: llama.cpp's phimoe graph computes another model (see gguf.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.phimoe.config import PhimoeConfig
from packager.families.phimoe.gguf import PhimoeGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Phimoe(Family):
    hf_architectures = ("PhimoeForCausalLM",)
    config_type = PhimoeConfig
    gguf_type = PhimoeGGUF
    gguf_missing = (
        "llama.cpp's phimoe graph weighs the two chosen experts by their renormalised softmax "
        "and RMS-normalises, where Phi-MoE's sparsemixer weighs each by a softmax over the "
        "logits within 2 x router_jitter_noise of it and LayerNorm normalises: a GGUF would "
        "run another model (pack it with --format onnx)"
    )

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.phimoe.onnx import PhimoeOnnx

        return PhimoeOnnx
