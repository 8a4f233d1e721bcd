"""LFM2-MoE as llama.cpp's `lfm2moe` (src/models/lfm2moe.cpp, the graph in lfm2.cpp;
conversion/lfm2.py for what its converter writes).

Convolution layers are the ones whose `attention.head_count_kv` entry is 0 (llama.cpp reads the
pattern from that array); the kernel length is `shortconv.l_cache`; leading dense layers are
`leading_dense_block_count`; the router is a sigmoid (`expert_gating_func`) with the selection
bias `blk.N.exp_probs_b.bias` and top-k weights renormalised (hard-coded in the graph). It reads
no expert weight scale, so a `routed_scaling_factor` other than 1 is refused. The conv kernel is
stored without its singleton axis; transformers' final `embedding_norm` is llama.cpp's
`token_embd_norm`, applied after the last layer as well.
"""

from __future__ import annotations

import gguf

from packager.errors import UnsupportedArchitectureError
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader
from packager.families.lfm2moe.config import ATTENTION, CONV, Lfm2MoeConfig


class Lfm2MoeGGUF(GGUFAdapter):
    gguf_arch = gguf.MODEL_ARCH.LFM2MOE
    config: Lfm2MoeConfig
    expert_proj = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj",
                   "gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}

    def validate(self) -> None:
        c = self.config
        if len(c.layer_types) != c.n_layers or set(c.layer_types) - {CONV, ATTENTION}:
            raise UnsupportedArchitectureError(
                f"config.json: 'layer_types' (or 'full_attn_idxs') must give {c.n_layers} layers "
                f"of '{CONV}' or '{ATTENTION}' for {self.architecture}, got {list(c.layer_types)}"
            )
        if c.conv_bias:
            self._refuse("conv_bias", True, "false: llama.cpp's short convolution has no bias")
        if not c.norm_topk_prob:
            self._refuse("norm_topk_prob", False, "true: llama.cpp renormalises the top-k")
        if not c.use_expert_bias:
            self._refuse("use_expert_bias", False, "true: llama.cpp's lfm2moe needs the bias")
        if c.routed_scaling_factor != 1.0:
            self._refuse("routed_scaling_factor", c.routed_scaling_factor,
                         "1.0: llama.cpp's lfm2moe reads no expert weight scale")
        if c.conv_cache < 2:
            self._refuse("conv_L_cache", c.conv_cache, "at least 2")
        if not 0 <= c.n_dense_layers < c.n_layers:
            self._refuse("num_dense_layers", c.n_dense_layers, f"below {c.n_layers}")

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        w.add_context_length(c.context_length)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(self.n_layers)
        w.add_feed_forward_length(c.require(c.intermediate_size, "intermediate_size"))
        w.add_head_count(c.n_heads)
        w.add_head_count_kv([c.n_kv_heads if k == ATTENTION else 0 for k in c.layer_types])
        w.add_rope_freq_base(c.rope.theta)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_vocab_size(c.vocab_size)
        w.add_expert_count(c.n_experts)
        w.add_expert_used_count(c.top_k)
        w.add_expert_feed_forward_length(c.require(c.moe_intermediate_size,
                                                   "moe_intermediate_size"))  # fmt: skip
        w.add_leading_dense_block_count(c.n_dense_layers)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_shortconv_l_cache(c.conv_cache)
        self.write_rope_scaling(w)

    def kv_layers(self) -> int:
        return self.config.n_layers - len(self.config.conv_layers)

    def recurrent_state_values(self) -> int:
        # llama.cpp's n_embd_r: the last (L_cache - 1) inputs of every channel, per conv layer.
        c = self.config
        return len(c.conv_layers) * c.hidden_size * (c.conv_cache - 1)

    def gguf_name(self, hf_name: str) -> str:
        # The selection bias is a buffer without a suffix; pruning finds it by this name too.
        if hf_name.endswith("feed_forward.expert_bias"):
            return f"blk.{hf_name.split('.')[2]}.exp_probs_b.bias"
        return super().gguf_name(hf_name)

    def expand(self, hf_name: str, shape: tuple[int, ...], read: Reader) -> list[PlannedTensor]:
        if hf_name == "lm_head.weight":
            return [PlannedTensor("output.weight", shape, lambda: read(hf_name))]
        new = self.gguf_name(hf_name)
        if hf_name.endswith("conv.conv.weight"):  # [channels, 1, L] -> ggml_ssm_conv's 2-D kernel
            return [PlannedTensor(new, (shape[0], shape[-1]),
                                  lambda: read(hf_name).reshape(shape[0], -1))]
        return [PlannedTensor(new, shape, lambda: read(hf_name))]

    def keep_f32(self, gguf_name: str) -> bool:
        return super().keep_f32(gguf_name) or gguf_name.endswith(
            ("shortconv.conv.weight", "exp_probs_b.bias")
        )
