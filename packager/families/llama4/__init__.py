"""Llama 4 (text model): interleaved MoE layers with a shared expert, sigmoid-weighted top-k
routing applied to the expert input, chunked attention and no-rope layers. A vision+text
checkpoint (Llama4ForConditionalGeneration) is packed as its text model, and says so."""

from __future__ import annotations

from packager.families.family import Family
from packager.families.llama4.config import Llama4Config
from packager.families.llama4.gguf import Llama4GGUF
from packager.families.registry import register


@register
class Llama4(Family):
    hf_architectures = ("Llama4ForCausalLM",)
    # A vision+text checkpoint packs this text model (packager/composite.py)
    composite_architectures = ("Llama4ForConditionalGeneration",)
    config_type = Llama4Config
    gguf_type = Llama4GGUF
    onnx_missing = ("the router's weight scales each expert's input (Llama 4), which the ONNX "
                    "expert block does not express")  # fmt: skip
