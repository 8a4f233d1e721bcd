"""One memory budget for a target model and its draft: both models' dense weights and KV caches
come off the top, and the rest is expert capacity kept at the same fraction for both.

Pure arithmetic over the budget inputs of each bundle (`runtime.footprint.budget_inputs`), so it is
tested without a model. Why one fraction: a draft is the same checkpoint built smaller, so its
routing follows the target's and both caches miss on the same tokens; starving either one
would turn the draft's saving into storage reads. "50%" therefore keeps half of each model's
experts; a byte budget B gives both the fraction (B - dense and KV of both) / (experts of both).
"""

from __future__ import annotations

from collections.abc import Mapping

from runtime.budget import BudgetPlan, BudgetSpec, plan_budget
from runtime.errors import BudgetError

# dense_bytes, kv_bytes, expert_bytes_total, one_token_expert_bytes
# (runtime.footprint.budget_inputs)
BudgetInputs = Mapping[str, int]


def _fixed(b: BudgetInputs) -> int:
    return b["dense_bytes"] + b["kv_bytes"]


def minimum_total(target: BudgetInputs, draft: BudgetInputs) -> int:
    """The smallest byte budget both models fit at one fraction: each keeps one token's
    experts, so the fraction is the larger of the two models' one-token shares."""
    experts = target["expert_bytes_total"] + draft["expert_bytes_total"]
    need = max(
        -(-b["one_token_expert_bytes"] * experts // max(b["expert_bytes_total"], 1))
        for b in (target, draft)
    )
    return _fixed(target) + _fixed(draft) + need


def split_budget(
    spec: BudgetSpec | None, target: BudgetInputs, draft: BudgetInputs
) -> tuple[BudgetPlan, BudgetPlan]:
    """(target plan, draft plan) sharing `spec`; None: everything resident for both."""
    if spec is None:
        return plan_budget(None, **target), plan_budget(None, **draft)
    if spec.fraction is not None:
        try:
            return plan_budget(spec, **target), plan_budget(spec, **draft)
        except BudgetError:
            raise _too_small(spec, target, draft) from None
    total = int(spec.total_bytes or 0)
    if total < minimum_total(target, draft):
        raise _too_small(spec, target, draft)
    avail = total - _fixed(target) - _fixed(draft)
    experts = target["expert_bytes_total"] + draft["expert_bytes_total"]
    plans = []
    for b in (target, draft):
        capacity = min(b["expert_bytes_total"], avail * b["expert_bytes_total"] // experts)
        plans.append(plan_budget(BudgetSpec(total_bytes=_fixed(b) + capacity), **b))
    return plans[0], plans[1]


def _too_small(spec: BudgetSpec, target: BudgetInputs, draft: BudgetInputs) -> BudgetError:
    minimum = minimum_total(target, draft)
    share = max(
        b["one_token_expert_bytes"] / max(b["expert_bytes_total"], 1) for b in (target, draft)
    )
    return BudgetError(
        f"budget {spec.describe()} is below the minimum of {minimum:,} bytes for the model and "
        f"its draft (dense weights {target['dense_bytes']:,} + {draft['dense_bytes']:,}, KV "
        f"caches {target['kv_bytes']:,} + {draft['kv_bytes']:,}, and one token's experts of "
        f"each at one fraction; as a fraction: {100 * share:.1f}%)"
    )
