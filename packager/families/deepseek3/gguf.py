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

import re

import gguf

from packager.errors import UnsupportedArchitectureError
from packager.families.deepseek2.gguf import DeepseekV2GGUF
from packager.families.deepseek3.config import DeepseekV3Config
from packager.families.gguf_adapter import PlannedTensor, Reader

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
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
        groups = c.require(c.n_group, "n_group")
        if groups < 1 or c.n_experts % groups or c.n_experts // groups < 2:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: n_group={groups} must split the {c.n_experts} experts "
                "into equal groups of at least 2 (groups are ranked by their two best scores)"
            )
        if not 1 <= c.require(c.topk_group, "topk_group") <= groups:
            self._refuse("topk_group", c.topk_group, f"between 1 and n_group={groups}")
        if c.top_k > c.topk_group * (c.n_experts // groups):
            self._refuse("num_experts_per_tok", c.top_k, "at most the experts of topk_group groups")

    def _refuse(self, key: str, got: object, expected: str) -> None:
        raise UnsupportedArchitectureError(
            f"config.json: '{key}' is {got!r} for {self.architecture}; expected {expected}"
        )

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
        return super().plan(self._main_layers(shapes), read)

    def _main_layers(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The checkpoint without its MTP layers; refused when those are all it holds."""
        c, n = self.config, self.n_layers
        layer = {name: int(m.group(1)) for name in shapes if (m := _LAYER.match(name))}
        extra = sorted({i for i in layer.values() if i >= n})
        if extra and extra[-1] >= n + c.mtp_layers:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: the checkpoint has layer {extra[-1]} but config.json "
                f"declares num_hidden_layers={n} and {c.mtp_key}={c.mtp_layers}"
            )
        if not any(i < n for i in layer.values()):
            raise UnsupportedArchitectureError(
                f"{self.architecture}: the checkpoint holds only multi-token-prediction "
                f"weights ({c.mtp_key}={c.mtp_layers}, layers {n}+), not the "
                f"{n} main layers edgemoe packs"
            )
        return {name: s for name, s in shapes.items() if layer.get(name, 0) < n}
