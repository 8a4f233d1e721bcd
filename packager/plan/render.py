"""A plan as the plain-text table `edgemoe plan` prints, then its rationale and suggestions."""

from __future__ import annotations

from packager.plan.result import Plan
from packager.plan.sizes import gib


def render_plan(plan: Plan) -> str:
    """The plan as a plain-text table, then its rationale and suggestions."""
    n_hot = sum(len(v) for v in plan.hot_experts.values())
    n_all = len(plan.expert_bytes_per_layer)
    quant = (plan.quant_experts if plan.quant_dense == plan.quant_experts
             else f"{plan.quant_experts} experts, {plan.quant_dense} dense")
    state = ("fits, every expert resident" if plan.resident else
             "fits, streams experts from storage" if plan.fits else "does NOT fit")
    rows = [
        ("profile", f"{plan.profile}: {state}"),
        ("quant", quant),
        ("budget", gib(plan.budget_bytes)),
        ("dense weights", gib(plan.dense_bytes)),
        ("KV cache", f"{gib(plan.kv_bytes)} (context {plan.context_length})"),
        ("experts (all)", f"{gib(plan.expert_bytes_total)} in {n_all} MoE layers"),
        ("hot experts", f"{gib(plan.hot_bytes)} ({n_hot} experts)"),
        ("stream buffer", gib(plan.stream_bytes)),
        ("total", f"{gib(plan.total_bytes)} of {gib(plan.budget_bytes)}"),
        ("hit rate (est.)", f"{plan.expected_hit_rate:.1%}"),
        ("decode (est.)", f"{plan.est_decode_tok_s:.1f} tok/s"),
        ("prefill (est.)", f"{plan.est_prefill_tok_s:.1f} tok/s"),
    ]
    if plan.prune_fraction:
        rows.append(("pruned", f"{plan.prune_fraction:.1%} of experts per layer"))
    rows += [("tensor types", f"{k} -> {v}") for k, v in plan.tensor_types.items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["", "why:"] + [f"  - {r}" for r in plan.rationale]
    if plan.suggestions:
        lines += ["", "suggestions:"] + [f"  - {s}" for s in plan.suggestions]
    return "\n".join(lines) + "\n"
