"""DeepSeek-V2: multi-head latent attention (MLA), shared experts, leading dense layers."""

from __future__ import annotations

import gguf
import numpy as np

from packager.archs import register
from packager.archs.base import ArchAdapter, MoEInfo, PlannedTensor, Reader
from packager.errors import UnsupportedArchitectureError

_GATING = {
    "softmax": gguf.ExpertGatingFuncType.SOFTMAX,
    "sigmoid": gguf.ExpertGatingFuncType.SIGMOID,
}


@register
class DeepseekV2Adapter(ArchAdapter):
    hf_architectures = ("DeepseekV2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.DEEPSEEK2

    def validate(self) -> None:
        c = self.config
        if c.get("q_lora_rank") is None and self.n_layers != 27:
            # llama.cpp infers "Lite" (no q compression) from the layer count alone.
            raise UnsupportedArchitectureError(
                "DeepseekV2ForCausalLM without q_lora_rank is only recognised by llama.cpp at "
                f"27 layers (DeepSeek-V2-Lite); this checkpoint has {self.n_layers}"
            )
        if int(c.get("moe_layer_freq", 1)) != 1:
            raise UnsupportedArchitectureError("DeepseekV2ForCausalLM: moe_layer_freq != 1")
        if c.get("scoring_func", "softmax") not in _GATING:
            raise UnsupportedArchitectureError(
                f"DeepseekV2ForCausalLM: scoring_func '{c.get('scoring_func')}' is not supported"
            )

    def moe(self) -> MoEInfo:
        c = self.config
        first = int(c.get("first_k_dense_replace", 0))
        return MoEInfo(
            n_experts=int(self.find("n_routed_experts", "num_local_experts", "num_experts")),
            top_k=int(c["num_experts_per_tok"]),
            n_shared_experts=int(c.get("n_shared_experts") or 0),
            moe_layers=tuple(range(first, self.n_layers)),
        )

    def n_head_kv(self) -> int:
        return 1

    def kv_dims(self) -> tuple[int, int, int]:
        # MLA caches the compressed latent plus the rope part of the key, once per token.
        c = self.config
        kv_lora = int(c["kv_lora_rank"])
        return 1, kv_lora + int(c["qk_rope_head_dim"]), kv_lora

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        # MLA is stored as multi-query attention over the compressed KV (one KV head).
        super().write_hparams(w)
        rope, nope, v = int(c["qk_rope_head_dim"]), int(c["qk_nope_head_dim"]), int(c["v_head_dim"])
        kv_lora = int(c["kv_lora_rank"])
        w.add_vocab_size(int(c["vocab_size"]))
        w.add_leading_dense_block_count(int(c.get("first_k_dense_replace", 0)))
        if c.get("q_lora_rank") is not None:
            w.add_q_lora_rank(int(c["q_lora_rank"]))
        w.add_kv_lora_rank(kv_lora)
        w.add_key_length(kv_lora + rope)
        w.add_value_length(kv_lora)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(v)
        w.add_expert_feed_forward_length(int(c["moe_intermediate_size"]))
        w.add_expert_shared_count(int(c.get("n_shared_experts") or 0))
        if c.get("routed_scaling_factor") is not None:
            w.add_expert_weights_scale(float(c["routed_scaling_factor"]))
        if c.get("norm_topk_prob"):
            w.add_expert_weights_norm(True)
        w.add_expert_gating_func(_GATING[c.get("scoring_func", "softmax")])
        if c.get("n_group") is not None:
            w.add_expert_group_count(int(c["n_group"]))
        if c.get("topk_group") is not None:
            w.add_expert_group_used_count(int(c["topk_group"]))
        w.add_rope_dimension_count(rope)

    def expand(self, hf_name: str, shape: tuple[int, ...], read: Reader) -> list[PlannedTensor]:
        if not hf_name.endswith("kv_b_proj.weight"):
            return super().expand(hf_name, shape, read)
        # llama.cpp's MLA "absorption" wants kv_b split into k_b (transposed) and v_b.
        c = self.config
        n_head, nope, v = (
            int(c["num_attention_heads"]),
            int(c["qk_nope_head_dim"]),
            int(c["v_head_dim"]),
        )
        kv_lora = shape[1]
        k_name = self.gguf_name(hf_name.replace("kv_b_proj", "k_b_proj"))
        v_name = self.gguf_name(hf_name.replace("kv_b_proj", "v_b_proj"))

        def split() -> tuple[np.ndarray, np.ndarray]:
            kv_b = read(hf_name).reshape(n_head, nope + v, kv_lora)
            return kv_b[:, :nope, :], kv_b[:, nope:, :]

        return [
            PlannedTensor(k_name, (n_head, kv_lora, nope), lambda: split()[0].transpose(0, 2, 1)),
            PlannedTensor(v_name, (n_head, v, kv_lora), lambda: split()[1]),
        ]
