"""Qwen3.5-MoE (Qwen3.5/3.6-35B-A3B and kin): gated-DeltaNet linear attention interleaved with
gated full attention, many small experts and a shared expert, partial M-RoPE."""

from __future__ import annotations

from packager.families.family import Family
from packager.families.qwen35moe.config import QwenHybridConfig
from packager.families.qwen35moe.gguf import Qwen35MoeGGUF
from packager.families.registry import register

# The exporter has no recurrent layer: a DeltaNet layer needs its conv and delta-rule state as
# extra graph inputs/outputs and a Scan (or per-token unrolled) recurrence over the prompt.
ONNX_MISSING = (
    "gated-DeltaNet linear attention layers (a recurrent state carried between calls) are not "
    "exported; pack GGUF (llama.cpp runs them)"
)


@register
class Qwen35Moe(Family):
    hf_architectures = ("Qwen3_5MoeForCausalLM",)
    composite_architectures = ("Qwen3_5MoeForConditionalGeneration",)  # the released form
    config_type = QwenHybridConfig
    gguf_type = Qwen35MoeGGUF
    onnx_missing = ONNX_MISSING
