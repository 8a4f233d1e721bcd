"""Qwen2-MoE (shared expert with a sigmoid gate) and Qwen3-MoE (q/k norms, normalised top-k)
as llama.cpp's `qwen2moe` and `qwen3moe`."""

from __future__ import annotations

import gguf

from packager.errors import UnsupportedArchitectureError
from packager.families.gguf_adapter import GGUFAdapter
from packager.families.qwen_moe.config import QwenMoeConfig


class _QwenMoE(GGUFAdapter):
    config: QwenMoeConfig
    # llama.cpp hard-codes top-k weight normalisation per family; configs must agree.
    norm_topk: bool

    def validate(self) -> None:
        c = self.config
        if c.norm_topk_prob != self.norm_topk:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: norm_topk_prob={c.raw.get('norm_topk_prob')} is not what "
                f"llama.cpp's {self.gguf_arch.name.lower()} graph computes ({self.norm_topk})"
            )
        if c.mlp_only_layers or c.decoder_sparse_step != 1:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: dense layers between MoE layers (mlp_only_layers / "
                "decoder_sparse_step) are not supported by llama.cpp"
            )

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        c = self.config
        w.add_expert_feed_forward_length(c.require(c.moe_intermediate_size,
                                                   "moe_intermediate_size"))  # fmt: skip


class Qwen2MoeGGUF(_QwenMoE):
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE
    norm_topk = False

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        if shared := self.config.shared_expert_intermediate_size:
            w.add_expert_shared_feed_forward_length(shared)


class Qwen3MoeGGUF(_QwenMoE):
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
    norm_topk = True

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        head_dim = self.config.head_dim
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
