"""DeepSeek-V4 (V4-Flash, V4-Pro): hyper-connections, compressed sparse and heavily compressed
attention with a lightning indexer, hash-routed first layers, a sqrt-softplus router with a
selection bias, clamped SwiGLU; multi-token-prediction layers are skipped."""

from __future__ import annotations

from packager.families.deepseek4.config import DeepseekV4Config
from packager.families.deepseek4.gguf import DeepseekV4GGUF
from packager.families.family import Family
from packager.families.registry import register


@register
class DeepseekV4(Family):
    hf_architectures = ("DeepseekV4ForCausalLM",)
    config_type = DeepseekV4Config
    gguf_type = DeepseekV4GGUF
    onnx_missing = (
        "compressed sparse attention (per-layer compressor buffers and the lightning indexer's "
        "top-k over compressed entries) has no ONNX form in the exporter"
    )
