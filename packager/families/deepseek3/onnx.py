"""DeepSeek-V3 in ONNX: V2's MLA attention and shared experts with V3's router.

The router is transformers' noaux_tc: sigmoid scores; the selection bias added for choosing
only; groups ranked by the sum of their two best biased scores, all but the best `topk_group`
masked to -inf; top-k of what is left; the chosen experts' unbiased scores renormalised (when
`norm_topk_prob`) and multiplied by `routed_scaling_factor`.
"""

from __future__ import annotations

from onnx import TensorProto

from packager.families.config import ModelConfig
from packager.families.deepseek2.onnx import DeepseekV2Onnx
from packager.families.deepseek3.config import DeepseekV3Config
from packager.onnx_export.blocks import Context, RopeSpec
from packager.onnx_export.graph import Scope
from packager.onnx_export.moe import topk


class DeepseekV3Onnx(DeepseekV2Onnx):
    config: DeepseekV3Config
    genai_type = "deepseek_v3"

    def validate_router(self) -> None:
        c = self.config
        if c.scoring_func != "sigmoid":
            self.refuse(f"scoring_func '{c.scoring_func}' (transformers' V3 router is sigmoid)")
        if c.topk_method != "noaux_tc":
            self.refuse(f"topk_method '{c.topk_method}' (transformers' V3 router is noaux_tc)")
        if c.attention_bias:
            self.refuse("attention_bias=true (q_a/kv_a/o biases are not exported)")
        groups = c.require(c.n_group, "n_group")
        if groups < 1 or self.n_experts % groups or self.n_experts // groups < 2:
            self.refuse(f"n_group={groups} does not split {self.n_experts} experts into "
                        "groups of 2 or more")

    def rope(self) -> RopeSpec:
        spec = super().rope()
        return RopeSpec(spec.inv_freq, spec.attention_scaling,
                        interleaved=self.config.rope_interleave)  # fmt: skip

    def route(self, ctx: Context, s: Scope, i: int, logits: str) -> tuple[str, str]:
        c = self.config
        bias = ctx.weights.vector(f"{self.moe_prefix(i)}.gate.e_score_correction_bias")
        factor = c.routed_scaling_factor if c.routed_scaling_factor is not None else 1.0
        return sigmoid_group_route(s, logits, bias, c, self.top_k, float(factor))


def sigmoid_group_route(
    s: Scope, logits: str, bias: str, c: ModelConfig, top_k: int, factor: float
) -> tuple[str, str]:
    """(weights, ids) of transformers' noaux_tc router (DeepSeek-V3, GLM-4.5) from its logits,
    selection bias and routed scaling `factor`; `c` gives the expert and group counts and
    norm_topk_prob."""
    n = c.n_experts
    groups, per_group = int(c.n_group or 1), n // int(c.n_group or 1)
    scores = s.op("Sigmoid", [logits], "Sigmoid")
    biased = s.op("Add", [scores, bias], "SelectionBias")
    grouped = s.reshape(biased, [0, groups, per_group], "Groups")
    best2, _ = topk(s, grouped, 2, "GroupTop2")
    group_score = s.op("ReduceSum", [best2, s.const([-1])], "GroupScore", keepdims=0)
    _, gidx = topk(s, group_score, int(c.topk_group or groups), "GroupTopK")
    onehot = s.op("OneHot", [gidx, s.const(groups), s.const([0, 1])], "GroupOneHot", axis=-1)
    keep = s.op("ReduceMax", [onehot, s.const([1])], "GroupKeep", keepdims=1)
    keep = s.op("Cast", [s.transpose(keep, [0, 2, 1], "GroupKeepT")], "GroupKeepBool",
                to=TensorProto.BOOL)  # fmt: skip
    masked = s.op("Where", [keep, grouped, s.f32(float("-inf"))], "MaskGroups")
    _, ids = topk(s, s.reshape(masked, [0, n], "Ungroup"), top_k)
    weights = s.op("GatherElements", [scores, ids], "ChosenScores", axis=-1)
    if c.norm_topk_prob:
        total = s.op("ReduceSum", [weights, s.const([-1])], "TopKSum", keepdims=1)
        weights = s.op("Div", [weights, s.op("Add", [total, s.f32(1e-20)], "TopKSumEps")],
                       "Renormalize")  # fmt: skip
    if factor != 1.0:
        weights = s.op("Mul", [weights, s.f32(factor)], "RoutedScaling")
    return weights, ids
