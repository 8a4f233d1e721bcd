"""Qwen2-MoE (shared expert with a sigmoid gate) and Qwen3-MoE (q/k norms, normalised top-k)."""

from __future__ import annotations

import gguf

from packager.archs import register
from packager.archs.base import ArchAdapter, MoEInfo
from packager.errors import UnsupportedArchitectureError


class _QwenMoE(ArchAdapter):
    # llama.cpp hard-codes top-k weight normalisation per family; configs must agree.
    norm_topk: bool

    def validate(self) -> None:
        c = self.config
        if bool(c.get("norm_topk_prob", False)) != self.norm_topk:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: norm_topk_prob={c.get('norm_topk_prob')} is not what "
                f"llama.cpp's {self.gguf_arch.name.lower()} graph computes ({self.norm_topk})"
            )
        if c.get("mlp_only_layers") or int(c.get("decoder_sparse_step", 1)) != 1:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: dense layers between MoE layers (mlp_only_layers / "
                "decoder_sparse_step) are not supported by llama.cpp"
            )

    def moe(self) -> MoEInfo:
        c = self.config
        shared = 1 if int(c.get("shared_expert_intermediate_size") or 0) > 0 else 0
        return MoEInfo(
            n_experts=int(self.find("num_experts", "num_local_experts")),
            top_k=int(c["num_experts_per_tok"]),
            n_shared_experts=shared,
            moe_layers=tuple(range(self.n_layers)),
        )

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_expert_feed_forward_length(int(self.config["moe_intermediate_size"]))


@register
class Qwen2MoeAdapter(_QwenMoE):
    hf_architectures = ("Qwen2MoeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE
    norm_topk = False

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        if shared := self.config.get("shared_expert_intermediate_size"):
            w.add_expert_shared_feed_forward_length(int(shared))


@register
class Qwen3MoeAdapter(_QwenMoE):
    hf_architectures = ("Qwen3MoeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
    norm_topk = True

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        c = self.config
        head_dim = int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
