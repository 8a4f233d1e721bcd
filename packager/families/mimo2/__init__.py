"""MiMo-V2-Flash: hybrid sliding-window / full attention with sinks, a narrower V head and a
scaled value, dense leading layers, a sigmoid router with a selection bias and expert groups;
multi-token-prediction blocks are skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.mimo2.config import MiMoV2Config
from packager.families.mimo2.gguf import MiMoV2GGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


@register
class MiMoV2(Family):
    hf_architectures = ("MiMoV2FlashForCausalLM",)
    config_type = MiMoV2Config
    gguf_type = MiMoV2GGUF

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.mimo2.onnx import MiMoV2Onnx

        return MiMoV2Onnx
