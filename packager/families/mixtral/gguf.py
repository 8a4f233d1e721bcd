"""Mixtral: llama.cpp runs it as the `llama` architecture with stacked experts."""

from __future__ import annotations

from typing import ClassVar

import gguf
import numpy as np

from packager.families.gguf_adapter import GGUFAdapter


class MixtralGGUF(GGUFAdapter):
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    expert_proj: ClassVar[dict[str, str]] = {"w1": "w1", "w2": "w2", "w3": "w3"}

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_rope_dimension_count(self.config.head_dim)
        w.add_vocab_size(self.config.vocab_size)

    def transform(self, gguf_name: str, data: np.ndarray) -> np.ndarray:
        # HF rotates the two halves of each head; llama.cpp's `llama` rope rotates adjacent
        # pairs, so q/k rows are interleaved to match.
        if gguf_name.endswith("attn_q.weight"):
            return interleave_heads(data, self.config.n_heads)
        if gguf_name.endswith("attn_k.weight"):
            return interleave_heads(data, self.config.n_kv_heads)
        return data


def interleave_heads(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
