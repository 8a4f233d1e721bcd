"""OLMoE: full-width q/k norms, softmax router without top-k renormalisation."""

from __future__ import annotations

import gguf

from packager.archs import register
from packager.archs.base import ArchAdapter, MoEInfo
from packager.errors import UnsupportedArchitectureError


@register
class OlmoeAdapter(ArchAdapter):
    hf_architectures = ("OlmoeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.OLMOE

    def validate(self) -> None:
        if self.config.get("norm_topk_prob", False):
            raise UnsupportedArchitectureError(
                "OlmoeForCausalLM: norm_topk_prob=true is not what llama.cpp's olmoe graph computes"
            )

        c = self.config
        if int(c.get("num_key_value_heads") or c["num_attention_heads"]) != int(
            c["num_attention_heads"]
        ):
            # llama.cpp's olmoe sizes the k-norm by the full width, i.e. assumes no GQA.
            raise UnsupportedArchitectureError(
                "OlmoeForCausalLM: grouped-query attention (num_key_value_heads != "
                "num_attention_heads) is not supported by llama.cpp's olmoe graph"
            )

    def moe(self) -> MoEInfo:
        c = self.config
        return MoEInfo(
            n_experts=int(self.find("num_experts", "num_local_experts")),
            top_k=int(c["num_experts_per_tok"]),
            n_shared_experts=0,
            moe_layers=tuple(range(self.n_layers)),
        )
