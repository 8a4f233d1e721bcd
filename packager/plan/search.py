"""The plan search: walk the profile's quant preferences, pick the first that fits well enough,
spend leftover budget on dense precision, and say what would make a failing plan fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contract.quant_types import (
    QUANT_TYPES,
    QuantType,
    QuantTypeError,
    get_quant,
    ggml_type_name,
    stored_type,
)
from device_profiles import DeviceProfile
from packager.plan.errors import PlanError
from packager.plan.expert_usage import ExpertUsage
from packager.plan.forecast import (
    HotSet,
    decode_seconds,
    estimates,
    hot_set,
    kept_shares,
    pruned_set,
)
from packager.plan.result import DENSE_TENSORS, Plan, Suggestion
from packager.plan.shape import ModelShape
from packager.plan.sizes import Sizes, gib, kv_cache_bytes, sizes_for

# A streaming plan is acceptable while misses at most double its decode time compared with the
# same quant fully resident; otherwise the planner keeps stepping down the preferences.
MAX_STREAM_SLOWDOWN = 2.0


@dataclass(frozen=True)
class _Ctx:
    """Everything fixed for one make_plan call."""

    shape: ModelShape
    profile: DeviceProfile
    usage: ExpertUsage | None
    budget: int
    ctx: int
    kv: int
    kept: int
    shares: dict[int, dict[int, float]]

    def sizes(self, q: QuantType, dense: QuantType | None = None,
              kept: int | None = None) -> Sizes:
        return sizes_for(self.shape, dense or q, q, self.kept if kept is None else kept, self.kv)

    def hot(self, s: Sizes) -> HotSet:
        return hot_set(s, self.budget, self.shares, self.usage is not None)

    def decode(self, s: Sizes) -> float:
        return 1.0 / sum(decode_seconds(self.shape, self.profile, s, self.hot(s)))

    def slowdown(self, s: Sizes) -> float:
        """Decode time with misses over decode time with every expert resident."""
        memory, storage = decode_seconds(self.shape, self.profile, s, self.hot(s))
        return 1.0 + storage / memory


def _choose(c: _Ctx, candidates: Sequence[QuantType], why: list[str]) -> tuple[Sizes, bool]:
    """The first candidate that is fully resident or streams with at most MAX_STREAM_SLOWDOWN;
    else the streaming one with the best decode estimate; (the last, False) if none fits even
    one token's experts."""
    streaming: list[Sizes] = []
    for q in candidates:
        s = c.sizes(q)
        head = (f"{q.name}: dense {gib(s.dense)} + KV {gib(s.kv)} + all experts "
                f"{gib(s.experts_total)} = {gib(s.resident)}")
        if s.resident <= c.budget:
            why.append(f"{head} <= budget: every expert resident")
            return s, True
        if s.minimum > c.budget:
            why.append(f"{head}; even one token's experts ({gib(s.stream)}) need "
                       f"{gib(s.minimum)} > budget")
            continue
        slow = c.slowdown(s)
        why.append(f"{head} > budget; streams experts: hit rate {c.hot(s).hit_rate:.0%}, "
                   f"misses make decode {slow:.1f}x slower")
        if slow <= MAX_STREAM_SLOWDOWN or len(candidates) == 1:
            return s, True
        streaming.append(s)
    if streaming:
        best = max(streaming, key=c.decode)
        why.append(f"every candidate streams more than {MAX_STREAM_SLOWDOWN:.0f}x slower; "
                   f"{best.q_experts.name} has the best decode estimate")
        return best, True
    return c.sizes(candidates[-1]), False


def _upgrade_dense(c: _Ctx, s: Sizes, why: list[str]) -> Sizes:
    """Spend leftover budget of a fully resident plan on higher-precision dense weights
    (touched every token); only over a quantized file type, where tt_overrides apply."""
    if not s.q_experts.is_quantized:
        return s
    for name in c.profile.quant_preferences:
        q = get_quant(name)
        if q.bits_per_weight <= s.q_experts.bits_per_weight:
            break
        up = c.sizes(s.q_experts, dense=q)
        if up.resident <= c.budget:
            why.append(f"dense weights kept at {q.name} ({gib(up.dense)}): the budget has room")
            return up
    return s


def _suggest(c: _Ctx, s: Sizes, fits: bool) -> list[Suggestion]:
    """What would make the plan fit (a smaller quant, a shorter context) or stop it streaming
    (a smaller quant, pruning). Every suggestion names its quant, so applying its `kwargs()`
    to make_plan reproduces the numbers quoted."""
    smaller = sorted((q for q in QUANT_TYPES.values()
                      if q.bits_per_weight < s.q_experts.bits_per_weight),
                     key=lambda q: -q.bits_per_weight)
    goal = "resident" if fits else "minimum"
    out: list[Suggestion] = []
    for q in smaller:
        t = c.sizes(q)
        need = getattr(t, goal)
        if need <= c.budget:
            what = "keeps every expert resident" if fits else "fits, streaming experts"
            note = " (needs an importance matrix)" if q.needs_imatrix else ""
            out.append(Suggestion("quant", f"quant {q.name}{note}: {gib(need)} of "
                                  f"{gib(c.budget)}, {what}", quant=q.name))
            break
    if not fits:
        fix = next(filter(None, (_context_fix(c, q) for q in [s.q_experts, *smaller])), None)
        if fix:
            out.append(fix)
    base = c.sizes(get_quant(out[0].quant)) if out else s
    if base.minimum <= c.budget:
        prune = _prune_fix(c, base)
        if prune:
            out.append(prune)
    return out


def _context_fix(c: _Ctx, q: QuantType) -> Suggestion | None:
    """The longest context (a multiple of 256) at which quant q fits one token's experts."""
    s = c.sizes(q)
    fixed = kv_cache_bytes(c.shape, 0, c.profile.kv_cache_type)  # recurrent state, if any
    per_token = kv_cache_bytes(c.shape, 1, c.profile.kv_cache_type) - fixed
    if per_token <= 0:
        return None
    n = (c.budget - s.dense - s.stream - fixed) // per_token // 256 * 256
    if n < 256 or n >= c.ctx:
        return None
    kv = kv_cache_bytes(c.shape, n, c.profile.kv_cache_type)
    return Suggestion("context", f"quant {q.name} with context_length {n}: KV cache "
                      f"{gib(c.kv)} -> {gib(kv)}, {gib(s.minimum - s.kv + kv)} of "
                      f"{gib(c.budget)}", quant=q.name, context_length=n)


def _prune_fix(c: _Ctx, s: Sizes) -> Suggestion | None:
    """The fewest experts per layer to drop (beyond those already pruned) so every remaining
    expert is resident at s's quant."""
    n = c.shape.n_experts
    for k in range(n - c.kept + 1, n - c.shape.top_k + 1):
        t = c.sizes(s.q_experts, kept=n - k)
        if t.resident <= c.budget:
            blind = "" if c.usage else "; without usage data the dropped experts are arbitrary"
            return Suggestion("prune", f"quant {s.q_experts.name} with prune_fraction "
                              f"{k / n:.3f} (drop {k} of {n} experts per layer): every expert "
                              f"resident, {gib(t.resident)} of {gib(c.budget)}{blind}",
                              quant=s.q_experts.name, prune_fraction=k / n)
    return None


def _check(shape: ModelShape, profile: DeviceProfile, usage: ExpertUsage | None,
           prune_fraction: float, context_length: int | None) -> int:
    """Validate the inputs; returns how many experts per layer pruning drops."""
    shape.validate()
    if usage is not None:
        usage.validate(shape)
    if not 0.0 <= prune_fraction < 1.0:
        raise PlanError(f"prune_fraction must be in [0, 1), got {prune_fraction}")
    n_prune = round(prune_fraction * shape.n_experts)
    if shape.n_experts - n_prune < shape.top_k:
        raise PlanError(f"prune_fraction {prune_fraction} leaves {shape.n_experts - n_prune} "
                        f"experts per layer, fewer than top_k ({shape.top_k})")
    if context_length is not None and context_length < 1:
        raise PlanError(f"context_length must be positive, got {context_length}")
    return n_prune


def make_plan(shape: ModelShape, profile: DeviceProfile, usage: ExpertUsage | None = None, *,
              quant: str | None = None, prune_fraction: float = 0.0,
              context_length: int | None = None) -> Plan:
    """Plan a bundle for `profile`: quant types, hot experts, and estimates.

    The budget is the profile's model_memory. Walking the profile's quant_preferences best
    first (or only `quant`), a quant is usable when dense + KV(context) + one token's experts
    (top_k per MoE layer, the streaming buffer) fit. The first quant that keeps every expert
    resident, or whose misses slow decode by at most MAX_STREAM_SLOWDOWN, wins; else the usable
    one with the best decode estimate. A resident plan chosen from the preferences spends leftover
    budget on higher-precision dense weights (tensor_types). `forecast.hot_set` picks hot
    experts; `forecast.estimates` documents the speed formulas.
    """
    return _build(shape, profile, usage, quant, prune_fraction, context_length)[0]


def suggest(shape: ModelShape, profile: DeviceProfile, usage: ExpertUsage | None = None, *,
            quant: str | None = None, prune_fraction: float = 0.0,
            context_length: int | None = None) -> tuple[Suggestion, ...]:
    """make_plan(...).suggestions in structured form: `make_plan(shape, profile, usage,
    **suggestion.kwargs())` applies one."""
    return _build(shape, profile, usage, quant, prune_fraction, context_length)[1]


def _build(shape: ModelShape, profile: DeviceProfile, usage: ExpertUsage | None,
           quant: str | None, prune_fraction: float,
           context_length: int | None) -> tuple[Plan, tuple[Suggestion, ...]]:
    n_prune = _check(shape, profile, usage, prune_fraction, context_length)
    try:
        candidates = [get_quant(q) for q in ([quant] if quant else profile.quant_preferences)]
    except QuantTypeError as e:
        raise PlanError(f"quant: {e}") from None
    ctx = context_length or profile.context_length
    pruned = pruned_set(shape, usage, n_prune)
    c = _Ctx(shape, profile, usage, profile.model_memory_bytes, ctx,
             kv_cache_bytes(shape, ctx, profile.kv_cache_type), shape.n_experts - n_prune,
             kept_shares(shape, usage, pruned))
    why = [f"budget {gib(c.budget)} ({profile.name} model_memory); context {ctx}, KV cache "
           f"{profile.kv_cache_type}: {gib(c.kv)}"]
    s, fits = _choose(c, candidates, why)
    if fits and quant is None and s.resident <= c.budget:
        s = _upgrade_dense(c, s, why)
    resident = fits and s.resident <= c.budget
    hot = c.hot(s) if fits else HotSet({}, 0, dict.fromkeys(shape.moe_layers, 0.0))
    decode, prefill = estimates(shape, profile, s, hot, ctx) if fits else (0.0, 0.0)
    why.extend(_explain(c, s, hot, fits, resident, n_prune))
    tips = () if resident else tuple(_suggest(c, s, fits))
    plan = Plan(
        profile=profile.name, quant_dense=s.q_dense.name, quant_experts=s.q_experts.name,
        tensor_types={DENSE_TENSORS: s.q_dense.ggml_name} if s.q_dense != s.q_experts else {},
        context_length=ctx, dense_bytes=s.dense, expert_bytes_per_layer=dict(s.expert),
        expert_bytes_total=s.experts_total, kv_bytes=s.kv,
        stream_bytes=0 if resident else s.stream, budget_bytes=c.budget,
        hot_experts=hot.experts, hot_bytes=hot.bytes, pruned_experts=pruned,
        expected_hit_rate=hot.hit_rate, est_decode_tok_s=decode, est_prefill_tok_s=prefill,
        fits=fits, resident=resident, prune_fraction=prune_fraction,
        suggestions=tuple(t.text for t in tips), rationale=tuple(why), hot_shares=hot.shares,
    )
    return plan, tips


def _explain(c: _Ctx, s: Sizes, hot: HotSet, fits: bool, resident: bool,
             n_prune: int) -> list[str]:
    why = []
    rows = {"ffn_down_exps": (c.shape.expert_row_len, s.q_experts),
            "ffn_gate/up_exps": (c.shape.hidden_size, s.q_experts),
            "dense weights": (c.shape.hidden_size, s.q_dense)}
    if c.shape.expert_storage is not None:
        rows = {"dense weights": rows["dense weights"]}
        why.append(f"experts stay {c.shape.expert_storage}, as the checkpoint stores them; "
                   f"{s.q_experts.name} applies to the rest")
    for what, (row, q) in rows.items():
        stored = stored_type(q, row)
        if stored != q.ggml:
            why.append(f"{what}: rows of {row} do not divide into {q.ggml_name} blocks, so "
                       f"llama.cpp stores {ggml_type_name(stored.name)} there; sizes count it")
    if n_prune:
        why.append(f"pruning {n_prune} of {c.shape.n_experts} experts per layer "
                   f"({'least used' if c.usage else 'arbitrary: no usage data'})")
    if not fits:
        why.append("nothing fits: dense weights, KV cache and one token's experts exceed the "
                   "budget at every candidate quant")
    elif not resident:
        n_hot = sum(len(v) for v in hot.experts.values())
        total = c.kept * len(c.shape.moe_layers)
        basis = ("by measured routing share per byte" if c.usage else
                 "the same count in every layer (no usage data: routing assumed uniform, "
                 "expert ids arbitrary; calibrate to choose them)")
        why.append(f"hot set: {n_hot} of {total} experts ({gib(hot.bytes)}), {basis}; "
                   f"{gib(s.stream)} kept for streaming one token's experts")
    return why
