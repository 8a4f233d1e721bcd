"""DeepSeek-V2 as llama.cpp's `deepseek2`: multi-head latent attention (MLA), shared experts,
leading dense layers."""

from __future__ import annotations

import gguf
import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.deepseek2.config import DeepseekV2Config
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader

_GATING = {
    "softmax": gguf.ExpertGatingFuncType.SOFTMAX,
    "sigmoid": gguf.ExpertGatingFuncType.SIGMOID,
}


class DeepseekV2GGUF(GGUFAdapter):
    config: DeepseekV2Config
    gguf_arch = gguf.MODEL_ARCH.DEEPSEEK2

    def validate(self) -> None:
        c = self.config
        # llama.cpp infers "Lite" (no q compression) from the layer count (and vocabulary) alone.
        lite = self.n_layers in (26, 27) or (self.n_layers == 48 and c.vocab_size == 128256)
        if c.q_lora_rank is None and self.n_layers != 27:
            raise UnsupportedArchitectureError(
                f"{self.architecture} without q_lora_rank is only recognised by llama.cpp at "
                f"27 layers (DeepSeek-V2-Lite); this checkpoint has {self.n_layers}"
            )
        if c.q_lora_rank is not None and lite:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: llama.cpp takes a {self.n_layers}-layer deepseek2 for a "
                "Lite model without q_lora_rank, and this checkpoint has one"
            )
        if c.moe_layer_freq != 1:
            raise UnsupportedArchitectureError(f"{self.architecture}: moe_layer_freq != 1")
        if c.scoring_func not in _GATING:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: scoring_func '{c.scoring_func}' is not supported"
            )
        groups = c.n_group or 1
        if c.topk_method == "group_limited_greedy" and groups > 1 and not self._all_groups():
            # No GGUF key selects the ranking: build_moe_ffn always sums each group's top two.
            raise UnsupportedArchitectureError(
                f"config.json: 'topk_method' is 'group_limited_greedy' (n_group={groups}, "
                f"topk_group={c.topk_group}) for {self.architecture}: llama.cpp ranks expert "
                "groups by the sum of their two best scores, transformers' DeepSeek-V2 by the "
                "best one"
            )

    def _all_groups(self) -> bool:
        """Whether every group is kept (topk_group >= n_group): no group is masked."""
        c = self.config
        return c.topk_group is not None and c.topk_group >= (c.n_group or 1)

    def _write_groups(self) -> bool:
        """Whether llama.cpp should mask expert groups as this router does. It groups whenever
        expert_group_count > 1 (and aborts unless fewer groups are used than exist), so the
        keys go out only for a router that really limits groups the way llama.cpp ranks them
        (V3's noaux_tc); values of 1 change nothing and are written as read."""
        c = self.config
        if (c.n_group or 1) <= 1:
            return True
        return c.topk_method == "noaux_tc" and not self._all_groups()

    def n_head_kv(self) -> int:
        return 1

    def kv_dims(self) -> tuple[int, int, int]:
        # MLA caches the compressed latent plus the rope part of the key, once per token.
        c = self.config
        return 1, c.kv_lora_rank + c.qk_rope_head_dim, c.kv_lora_rank

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        # MLA is stored as multi-query attention over the compressed KV (one KV head).
        super().write_hparams(w)
        rope, nope, v = c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim
        kv_lora = c.kv_lora_rank
        w.add_vocab_size(c.vocab_size)
        w.add_leading_dense_block_count(c.first_k_dense_replace)
        if c.q_lora_rank is not None:
            w.add_q_lora_rank(c.q_lora_rank)
        w.add_kv_lora_rank(kv_lora)
        w.add_key_length(kv_lora + rope)
        w.add_value_length(kv_lora)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(v)
        w.add_expert_feed_forward_length(c.require(c.moe_intermediate_size,
                                                   "moe_intermediate_size"))  # fmt: skip
        w.add_expert_shared_count(c.n_shared_experts)
        if c.routed_scaling_factor is not None:
            w.add_expert_weights_scale(c.routed_scaling_factor)
        if c.norm_topk_prob:
            w.add_expert_weights_norm(True)
        w.add_expert_gating_func(_GATING[c.scoring_func])
        if self._write_groups():
            if c.n_group is not None:
                w.add_expert_group_count(c.n_group)
            if c.topk_group is not None:
                w.add_expert_group_used_count(c.topk_group)
        w.add_rope_dimension_count(rope)

    def expand(self, hf_name: str, shape: tuple[int, ...], read: Reader) -> list[PlannedTensor]:
        if not hf_name.endswith("kv_b_proj.weight"):
            return super().expand(hf_name, shape, read)
        # llama.cpp's MLA "absorption" wants kv_b split into k_b (transposed) and v_b.
        c = self.config
        n_head, nope, v = c.n_heads, c.qk_nope_head_dim, c.v_head_dim
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
