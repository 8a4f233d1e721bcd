"""What fits where: published MoE configurations against the named device profiles.

One row per model (the model card's total and active parameters, experts and top-k, the size of
its experts and dense weights at a few quants, the smallest budget the runtime accepts, the
values no public source confirmed) and one
planner verdict per (model, profile): the quant the profile's preferences choose, how much of the
experts stay resident, and the forecast decode and prefill speeds. `edgemoe fits` prints it;
README's "What fits where" is its output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contract.quant_types import get_quant
from device_profiles import DeviceProfile
from packager.plan.known import KnownModel
from packager.plan.result import Plan
from packager.plan.search import make_plan
from packager.plan.sizes import kv_cache_bytes, sizes_for

SIZE_QUANTS = ("Q8_0", "Q4_K_M", "Q2_K")
MIN_CONTEXT, MIN_KV_TYPE = 4096, "f16"  # the context the minimum-budget column assumes


@dataclass(frozen=True)
class FitRow:
    model: KnownModel
    sizes: dict[str, int]  # quant -> bytes of every weight
    minimum: dict[str, int]  # quant -> dense + KV (profile context) + one token's experts
    plans: dict[str, Plan]  # profile name -> plan


def fit_rows(models: Sequence[KnownModel], profiles: Sequence[DeviceProfile],
             quant: str | None = None, budget: str | None = None) -> list[FitRow]:
    from packager.plan.budget_fit import budget_plan

    rows = []
    for m in models:
        shape = m.estimate().shape
        kv = kv_cache_bytes(shape, MIN_CONTEXT, MIN_KV_TYPE)
        sizes, minimum = {}, {}
        for name in SIZE_QUANTS:
            s = sizes_for(shape, get_quant(name), get_quant(name), shape.n_experts, kv)
            sizes[name], minimum[name] = s.dense + s.experts_total, s.minimum
        plans = {p.name: budget_plan(shape, p, budget, quant=quant) if budget else
                 make_plan(shape, p, quant=quant) for p in profiles}
        rows.append(FitRow(m, sizes, minimum, plans))
    return rows


def param_count(n: float) -> str:
    """'20.9B', '1T': three significant digits, trillions past 999B."""
    return f"{n / 1e12:.3g}T" if n >= 999.5e9 else f"{n / 1e9:.3g}B"


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f}" if n >= 2**30 else f"{n / 2**30:.2f}"


def _cell(p: Plan) -> str:
    if not p.fits:
        return "no"
    where = ("all" if p.resident else
             f"{p.hot_bytes / max(p.expert_bytes_total, 1):.0%}")
    return (f"{p.quant_experts} {where} {p.est_decode_tok_s:.3g} / "
            f"{p.est_prefill_tok_s:.3g}")


def render_markdown(rows: Sequence[FitRow], profiles: Sequence[DeviceProfile]) -> str:
    """Two tables: the models, then each model's verdict per profile."""
    out = ["| model | total / active (card) | experts, top-k | GiB at "
           + " / ".join(SIZE_QUANTS) + f" | minimum budget, GiB ({MIN_CONTEXT // 1024}k "
           f"{MIN_KV_TYPE} KV) | unverified values |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        m, s = r.model, r.model.estimate().shape
        out.append(f"| {m.name} | {param_count(m.total_params)} / {param_count(m.active_params)} | "
                   f"{s.n_experts}, {s.top_k} | "
                   + " / ".join(_gb(r.sizes[q]) for q in SIZE_QUANTS)
                   + " | " + " / ".join(_gb(r.minimum[q]) for q in SIZE_QUANTS)
                   + f" | {', '.join(m.unverified) or 'none'} |")
    out += ["", "| model | " + " | ".join(p.name for p in profiles) + " |",
            "| --- |" + " --- |" * len(profiles)]
    for r in rows:
        out.append(f"| {r.model.name} | "
                   + " | ".join(_cell(r.plans[p.name]) for p in profiles) + " |")
    return "\n".join(out) + "\n"


def render_text(rows: Sequence[FitRow], profiles: Sequence[DeviceProfile]) -> str:
    lines = []
    for r in rows:
        unverified = f" (unverified: {', '.join(r.model.unverified)})" if r.model.unverified \
            else ""
        lines.append(f"{r.model.name} ({r.model.hub_id}): "
                     + ", ".join(f"{q} {_gb(r.sizes[q])} GiB" for q in SIZE_QUANTS) + unverified)
        for p in profiles:
            lines.append(f"  {p.name:<15} {_cell(r.plans[p.name])}")
    return "\n".join(lines) + "\n"
