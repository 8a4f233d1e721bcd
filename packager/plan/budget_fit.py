"""A plan at a runtime expert budget: "does this fit phone-8gb at Q4_K_M with a 25 % budget?"

`edgemoe run --budget 25%` keeps dense weights, the KV cache and 25 % of the expert bytes
resident (runtime/budget.py). This resolves such a budget against the model at one quant, the
same way, and asks two things: whether the runtime would accept it (at least dense + KV + one
token's experts) and whether it fits the profile's model memory. The hot set, hit rate and
speed are then the planner's forecast at that budget (packager/plan/forecast.py).
"""

from __future__ import annotations

from dataclasses import replace

from contract.quant_types import QuantTypeError, get_quant
from device_profiles import DeviceProfile
from packager.plan.errors import PlanError
from packager.plan.expert_usage import ExpertUsage
from packager.plan.result import Plan
from packager.plan.search import make_plan
from packager.plan.shape import ModelShape
from packager.plan.sizes import gib, kv_cache_bytes, sizes_for
from runtime.budget import parse_budget, plan_budget
from runtime.errors import BudgetError


def budget_plan(shape: ModelShape, profile: DeviceProfile, budget: str,
                usage: ExpertUsage | None = None, *, quant: str | None = None,
                context_length: int | None = None) -> Plan:
    """The plan the runtime would run at `budget` ('25%', '1.5GB'), at `quant` (default: the
    profile's); `fits` is False when the budget is under the runtime's minimum or over the
    profile's model memory, and the rationale says which."""
    try:
        spec = parse_budget(budget)
        q = get_quant(quant or profile.default_quant)
    except (BudgetError, QuantTypeError) as e:
        raise PlanError(str(e)) from None
    if spec is None:
        raise PlanError("budget: expected a percentage ('25%'), a size ('1.5GB') or bytes")
    ctx = context_length or profile.context_length
    s = sizes_for(shape, q, q, shape.n_experts, kv_cache_bytes(shape, ctx, profile.kv_cache_type))
    try:  # the runtime's own split of a budget, on the planner's sizes
        bp = plan_budget(spec, dense_bytes=s.dense, kv_bytes=s.kv,
                         expert_bytes_total=s.experts_total, one_token_expert_bytes=s.stream)
    except BudgetError as e:
        plan = make_plan(shape, profile, usage, quant=q.name, context_length=ctx)
        why = f"at {q.name}: {e}"
        return replace(plan, fits=False, resident=False, rationale=(why, *plan.rationale))
    total, limit = bp.budget_bytes, profile.model_memory_bytes
    head = (f"budget {spec.describe()} at {q.name}: dense "
            f"{gib(s.dense)} + KV {gib(s.kv)} + experts {gib(bp.expert_capacity_bytes)} of "
            f"{gib(s.experts_total)} = {gib(total)}")
    at_budget = replace(profile, model_memory_bytes=total)
    plan = make_plan(shape, at_budget, usage, quant=q.name, context_length=ctx)
    fits = plan.fits and total <= limit
    verdict = (f"fits {profile.name}'s model memory {gib(limit)}" if total <= limit else
               f"does NOT fit {profile.name}'s model memory {gib(limit)}")
    return replace(plan, profile=profile.name, fits=fits, resident=plan.resident and fits,
                   rationale=(f"{head}: {verdict}", *plan.rationale[1:]))
