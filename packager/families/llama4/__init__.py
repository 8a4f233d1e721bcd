"""Llama 4 (text model): interleaved MoE layers with a shared expert, sigmoid-weighted top-k
routing applied to the expert input, chunked attention and no-rope layers. A vision+text
checkpoint (Llama4ForConditionalGeneration) is packed as its text model, and says so."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from packager.families.family import Family
from packager.families.llama4.config import Llama4Config
from packager.families.llama4.gguf import Llama4GGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class Llama4(Family):
    hf_architectures = ("Llama4ForCausalLM",)
    # A vision+text checkpoint packs this text model (packager/composite.py)
    composite_architectures = ("Llama4ForConditionalGeneration",)
    config_type = Llama4Config
    gguf_type = Llama4GGUF

    def require_gguf(self) -> None:
        """A GGUF is refused for what llama.cpp's graph hard-codes otherwise (gguf.py); an ONNX
        build reads those fields."""
        super().require_gguf()
        cast(Llama4GGUF, self.gguf).check_graph()

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.llama4.onnx import Llama4Onnx

        return Llama4Onnx
