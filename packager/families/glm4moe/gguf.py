"""GLM-4.5 MoE as llama.cpp's `glm4moe`.

llama.cpp (src/models/glm4-moe.cpp, llama-graph.cpp `build_moe_ffn`) runs GQA attention with
q/k/v biases and optional per-head q/k norms, NeoX rotary over the first `rope.dimension_count`
dims of each head (transformers' rotate-half on `partial_rotary_factor` of the head), leading
dense layers (`leading_dense_block_count`), then a sigmoid router whose selection bias is the
tensor `blk.N.exp_probs_b.bias`, `expert_weights_norm`, `expert_weights_scale`, the generic
expert groups, and one shared expert of `expert_shared_count` x the expert width added to the
routed output. The NextN (MTP) block, stored after the main layers, is not written: llama.cpp
runs the main model without it, and the runtime drafts with n-grams or a second bundle.
"""

from __future__ import annotations

import gguf

from packager.errors import UnsupportedArchitectureError
from packager.families.expert_groups import check_groups, refuse_field, write_groups
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader
from packager.families.glm4moe.config import Glm4MoeConfig
from packager.families.mtp import main_layers

_BIAS = "e_score_correction_bias"


class Glm4MoeGGUF(GGUFAdapter):
    config: Glm4MoeConfig
    gguf_arch = gguf.MODEL_ARCH.GLM4_MOE

    def validate(self) -> None:
        c = self.config
        if c.n_shared_experts < 1:
            raise refuse_field(c, "n_shared_experts", c.n_shared_experts,
                               "1 or more: llama.cpp's glm4moe always adds the shared expert")
        if not 0 < c.rotary_dim <= c.head_dim or c.rotary_dim % 2:
            raise UnsupportedArchitectureError(
                f"{c.architecture}: partial_rotary_factor={c.partial_rotary_factor} gives "
                f"{c.rotary_dim} rotary dims of a {c.head_dim}-dim head; expected an even "
                "number between 2 and the head size"
            )
        if not 0 <= c.first_k_dense_replace < c.n_layers:
            raise refuse_field(c, "first_k_dense_replace", c.first_k_dense_replace,
                               f"fewer than num_hidden_layers={c.n_layers}")
        check_groups(c)

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        c = self.config
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_dimension_count(c.rotary_dim)
        w.add_expert_feed_forward_length(c.require(c.moe_intermediate_size,
                                                   "moe_intermediate_size"))  # fmt: skip
        w.add_expert_shared_count(c.n_shared_experts)
        w.add_leading_dense_block_count(c.first_k_dense_replace)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_scale(c.routed_scaling_factor)
        w.add_expert_weights_norm(c.norm_topk_prob)
        write_groups(w, c)

    def gguf_name(self, hf_name: str) -> str:
        # gguf's name map knows the selection bias as `...gate.e_score_correction` + `.bias`.
        if hf_name.endswith(_BIAS):
            hf_name = hf_name[: -len(_BIAS)] + "e_score_correction.bias"
        return super().gguf_name(hf_name)

    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        c = self.config
        main = main_layers(shapes, self.n_layers, c.mtp_layers, c.mtp_key, self.architecture)
        return super().plan(main, read)
