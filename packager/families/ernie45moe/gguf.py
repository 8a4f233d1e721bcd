"""ERNIE-4.5-MoE as llama.cpp's `ernie4_5-moe`.

llama.cpp (src/models/ernie4-5.cpp loads, ernie4-5-moe.cpp computes) runs GQA attention with
adjacent-pair rotary (transformers' ERNIE rotates interleaved pairs too, so q/k need no
reordering), leading dense layers (`leading_dense_block_count`), then a softmax router whose
selection bias is `blk.N.exp_probs_b.bias`, the chosen probabilities always renormalised, and
the shared experts as one MLP of `expert_shared_feed_forward_length`. Its loader makes every
layer after the dense lead an MoE layer, so only an interval of 1 running to the last layer
matches transformers. The multi-token-prediction weights (`model.mtp_*`) are not written.
The gating function is recorded (llama.cpp hard-codes softmax for this graph and ignores the
key) so pre-gating knows the bias is added to softmax probabilities, not to sigmoids.
"""

from __future__ import annotations

import re

import gguf
import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.ernie45moe.config import Ernie45MoeConfig
from packager.families.expert_groups import refuse_field
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader

_BIAS = "e_score_correction_bias"
_MTP = re.compile(r"^model\.mtp_")


class Ernie45MoeGGUF(GGUFAdapter):
    config: Ernie45MoeConfig
    gguf_arch = gguf.MODEL_ARCH.ERNIE4_5_MOE

    def validate(self) -> None:
        c = self.config
        if c.moe_layer_interval != 1:
            raise refuse_field(c, "moe_layer_interval", c.moe_layer_interval,
                               "1: llama.cpp's loader makes every layer after "
                               "moe_layer_start_index an MoE layer")  # fmt: skip
        if c.last_moe_layer != c.n_layers - 1:
            raise refuse_field(c, "moe_layer_end_index", c.moe_layer_end_index,
                               f"-1 or {c.n_layers - 1}: llama.cpp has no dense layers "
                               "after the MoE layers")  # fmt: skip
        if not 0 <= c.moe_layer_start_index < c.n_layers:
            raise refuse_field(c, "moe_layer_start_index", c.moe_layer_start_index,
                               f"below num_hidden_layers={c.n_layers}")
        if c.use_bias:
            raise refuse_field(c, "use_bias", True,
                               "false: llama.cpp's ernie4_5-moe has no MLP biases")
        if c.hidden_act != "silu":
            raise refuse_field(c, "hidden_act", c.hidden_act, "silu")

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        c = self.config
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_dimension_count(c.head_dim)
        w.add_interleave_moe_layer_step(c.moe_layer_interval)
        w.add_leading_dense_block_count(c.moe_layer_start_index)
        w.add_expert_feed_forward_length(c.require(c.moe_intermediate_size,
                                                   "moe_intermediate_size"))  # fmt: skip
        w.add_expert_shared_count(c.n_shared_experts)
        if c.n_shared_experts:
            w.add_expert_shared_feed_forward_length(c.shared_intermediate_size)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)

    def gguf_name(self, hf_name: str) -> str:
        # gguf's name map knows the selection bias as `...e_score_correction` + `.bias`.
        if hf_name.endswith(_BIAS):
            hf_name = hf_name[: -len(_BIAS)] + "e_score_correction.bias"
        return super().gguf_name(hf_name)

    def expand(self, hf_name: str, shape: tuple[int, ...], read: Reader) -> list[PlannedTensor]:
        if not hf_name.endswith(_BIAS):
            return super().expand(hf_name, shape, read)
        # moe_statics keeps one bias row per modality ([1, E] for text); llama.cpp wants [E].
        if len(shape) == 2 and shape[0] != 1:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: {hf_name} has {shape[0]} rows (one per modality); "
                "edgemoe packs text-only ERNIE checkpoints (one row)"
            )
        new = self.gguf_name(hf_name)
        n = shape[-1]
        return [PlannedTensor(new, (n,), lambda: np.asarray(read(hf_name)).reshape(n))]

    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        main = {n: s for n, s in shapes.items() if not _MTP.match(n)}
        if not any(n.startswith("model.layers.") for n in main):
            c = self.config
            raise UnsupportedArchitectureError(
                f"{self.architecture}: the checkpoint holds only multi-token-prediction "
                f"weights (model.mtp_*, num_nextn_predict_layers={c.mtp_layers}), not the "
                f"{c.n_layers} main layers edgemoe packs"
            )
        return super().plan(main, read)
