"""OLMoE as llama.cpp's `olmoe`: full-width q/k norms, softmax router without renormalisation."""

from __future__ import annotations

import gguf

from packager.errors import UnsupportedArchitectureError
from packager.families.gguf_adapter import GGUFAdapter
from packager.families.olmoe.config import OlmoeConfig


class OlmoeGGUF(GGUFAdapter):
    config: OlmoeConfig
    gguf_arch = gguf.MODEL_ARCH.OLMOE

    def validate(self) -> None:
        c = self.config
        if c.norm_topk_prob:
            raise UnsupportedArchitectureError(
                "OlmoeForCausalLM: norm_topk_prob=true is not what llama.cpp's olmoe graph computes"
            )
        if c.n_kv_heads != c.n_heads:
            # llama.cpp's olmoe sizes the k-norm by the full width, i.e. assumes no GQA.
            raise UnsupportedArchitectureError(
                "OlmoeForCausalLM: grouped-query attention (num_key_value_heads != "
                "num_attention_heads) is not supported by llama.cpp's olmoe graph"
            )
