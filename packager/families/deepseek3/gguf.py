"""DeepSeek-V3 as llama.cpp's `deepseek2` (the V2 graph with V3's router).

llama.cpp (src/models/deepseek2.cpp, llama-graph.cpp `build_moe_ffn`) reads the router from
hyper-parameters: gating function sigmoid, `expert_group_count` / `expert_group_used_count`
(groups ranked by the sum of their two best biased scores, as transformers' noaux_tc),
`expert_weights_norm`, `expert_weights_scale`; and the selection bias from the tensor
`blk.N.exp_probs_b.bias`. YaRN adds `rope.scaling.yarn_log_multiplier` = 0.1 * mscale_all_dim,
as llama.cpp's own converter writes it. Multi-token-prediction layers (stored after the main
layers) are not written: llama.cpp runs the main model, and the runtime does not draft with them.
"""

from __future__ import annotations

import gguf

from packager.families.deepseek2.gguf import DeepseekV2GGUF
from packager.families.deepseek3.config import DeepseekV3Config
from packager.families.expert_groups import check_groups
from packager.families.gguf_adapter import PlannedTensor, Reader
from packager.families.mtp import main_layers

_BIAS = "e_score_correction_bias"


class DeepseekV3GGUF(DeepseekV2GGUF):
    config: DeepseekV3Config

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c.scoring_func != "sigmoid":
            self._refuse("scoring_func", c.scoring_func, "sigmoid")
        if c.topk_method != "noaux_tc":
            self._refuse("topk_method", c.topk_method, "noaux_tc")
        if not c.rope_interleave:
            self._refuse("rope_interleave", False, "true: llama.cpp rotates adjacent pairs")
        if c.attention_bias:
            self._refuse("attention_bias", True, "false: llama.cpp's deepseek2 has none")
        check_groups(c)

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        rope = self.config.rope
        if rope.kind == "yarn":
            for value, add in (
                (rope.beta_fast, w.add_rope_scaling_yarn_beta_fast),
                (rope.beta_slow, w.add_rope_scaling_yarn_beta_slow),
                (rope.attention_factor, w.add_rope_scaling_yarn_attn_factor),
            ):
                if value is not None:
                    add(value)
            if rope.mscale_all_dim is not None:
                # llama.cpp divides this by 0.1 again when loading (its converter's convention).
                w.add_rope_scaling_yarn_log_mul(0.1 * rope.mscale_all_dim)

    def gguf_name(self, hf_name: str) -> str:
        # gguf's name map knows the selection bias as `...gate.e_score_correction` + `.bias`.
        if hf_name.endswith(_BIAS):
            hf_name = hf_name[: -len(_BIAS)] + "e_score_correction.bias"
        return super().gguf_name(hf_name)

    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        c = self.config
        main = main_layers(shapes, self.n_layers, c.mtp_layers, c.mtp_key, self.architecture)
        return super().plan(main, read)
