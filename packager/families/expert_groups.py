"""Group-limited top-k routing (DeepSeek-V3's noaux_tc, GLM-4.5): what llama.cpp can run.

Experts are split into `n_group` equal groups; each group is scored by the sum of its two best
biased scores, the best `topk_group` groups stay and top-k is taken among their experts.
llama.cpp computes the same in `build_moe_ffn` from `expert_group_count` and
`expert_group_used_count`, but asserts fewer used groups than groups: a config that keeps every
group (a no-op in transformers) is written without the keys.
"""

from __future__ import annotations

import gguf

from packager.errors import UnsupportedArchitectureError
from packager.families.config import ModelConfig


def refuse_field(
    c: ModelConfig, key: str, got: object, expected: str
) -> UnsupportedArchitectureError:
    """The one-line error for a config field whose value the GGUF cannot carry."""
    return UnsupportedArchitectureError(
        f"config.json: '{key}' is {got!r} for {c.architecture}; expected {expected}"
    )


def check_groups(c: ModelConfig) -> None:
    """Refuse a grouping llama.cpp's graph cannot reproduce, naming the field."""
    groups = c.require(c.n_group, "n_group")
    if groups < 1 or c.n_experts % groups or c.n_experts // groups < 2:
        raise UnsupportedArchitectureError(
            f"{c.architecture}: n_group={groups} must split the {c.n_experts} experts "
            "into equal groups of at least 2 (groups are ranked by their two best scores)"
        )
    if not 1 <= c.require(c.topk_group, "topk_group") <= groups:
        raise refuse_field(c, "topk_group", c.topk_group, f"between 1 and n_group={groups}")
    if c.top_k > c.topk_group * (c.n_experts // groups):
        raise refuse_field(c, "num_experts_per_tok", c.top_k,
                           "at most the experts of topk_group groups")


def limits_groups(c: ModelConfig) -> bool:
    """Whether the grouping changes which experts are chosen (more than one group, not all)."""
    return (c.n_group or 1) > 1 and (c.topk_group or 0) < (c.n_group or 1)


def write_groups(w: gguf.GGUFWriter, c: ModelConfig) -> None:
    if limits_groups(c):
        w.add_expert_group_count(int(c.n_group or 1))
        w.add_expert_group_used_count(int(c.topk_group or 1))


def check_prune(c: ModelConfig, n_keep: int) -> None:
    """A pruned copy must leave every group two experts: transformers ranks groups by their two
    best scores even when there is one group."""
    groups = c.n_group or 1
    if n_keep // groups < 2:
        raise c.refuse(
            f"keeping {n_keep} experts leaves {n_keep // groups} per group of n_group="
            f"{groups}; the router ranks groups by their two best experts (keep 2+ each)"
        )
