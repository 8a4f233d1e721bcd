"""Mixtral: llama.cpp runs it as the `llama` architecture with stacked experts."""

from __future__ import annotations

from typing import ClassVar

import gguf
import numpy as np

from packager.archs import register
from packager.archs.base import ArchAdapter, MoEInfo


@register
class MixtralAdapter(ArchAdapter):
    hf_architectures = ("MixtralForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    expert_proj: ClassVar[dict[str, str]] = {"w1": "w1", "w2": "w2", "w3": "w3"}

    def moe(self) -> MoEInfo:
        c = self.config
        return MoEInfo(
            n_experts=int(self.find("num_local_experts", "num_experts")),
            top_k=int(c["num_experts_per_tok"]),
            n_shared_experts=0,
            moe_layers=tuple(range(self.n_layers)),
        )

    def _head_dim(self) -> int:
        c = self.config
        return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_rope_dimension_count(self._head_dim())
        w.add_vocab_size(int(self.config["vocab_size"]))

    def transform(self, gguf_name: str, data: np.ndarray) -> np.ndarray:
        # HF rotates the two halves of each head; llama.cpp's `llama` rope rotates adjacent
        # pairs, so q/k rows are interleaved to match.
        c = self.config
        if gguf_name.endswith("attn_q.weight"):
            return _interleave_heads(data, int(c["num_attention_heads"]))
        if gguf_name.endswith("attn_k.weight"):
            return _interleave_heads(
                data, int(c.get("num_key_value_heads", c["num_attention_heads"]))
            )
        return data


def _interleave_heads(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
