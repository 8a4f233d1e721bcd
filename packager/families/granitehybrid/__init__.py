"""Granite-4.0-H (granite-4.0-h-tiny / -small and kin): Mamba2 layers beside attention, routed
experts plus a shared MLP in every layer, Granite's embedding/attention/residual/logit scales."""

from __future__ import annotations

from packager.families.family import Family
from packager.families.granitehybrid.config import GraniteHybridConfig
from packager.families.granitehybrid.gguf import GraniteHybridGGUF
from packager.families.registry import register


@register
class GraniteHybrid(Family):
    hf_architectures = ("GraniteMoeHybridForCausalLM",)
    config_type = GraniteHybridConfig
    gguf_type = GraniteHybridGGUF
    # The exporter has no recurrent layer: a Mamba2 layer needs its conv and SSM state as
    # extra graph inputs/outputs and a Scan (or per-token unrolled) selective scan.
    onnx_missing = ("Mamba2 layers (a convolution and SSM state carried between calls) are not "
                    "exported; pack GGUF (llama.cpp runs them)")
