"""LFM2-MoE (LFM2-8B-A1B and kin, built for phones): gated short convolutions beside grouped-
query attention, leading dense layers, a sigmoid router with a selection bias."""

from __future__ import annotations

from packager.families.family import Family
from packager.families.lfm2moe.config import Lfm2MoeConfig
from packager.families.lfm2moe.gguf import Lfm2MoeGGUF
from packager.families.registry import register


@register
class Lfm2Moe(Family):
    hf_architectures = ("Lfm2MoeForCausalLM",)
    config_type = Lfm2MoeConfig
    gguf_type = Lfm2MoeGGUF
    # The exporter has no recurrent layer: the conv's last inputs would be a state carried
    # between calls as extra graph inputs/outputs.
    onnx_missing = ("short-convolution layers (a convolution state carried between calls) are "
                    "not exported; pack GGUF (llama.cpp runs them)")
