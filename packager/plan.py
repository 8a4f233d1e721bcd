"""The packing planner: which quant, which experts stay hot, and whether a model fits a device.

Pure arithmetic over plain data (a ModelShape, a DeviceProfile, optional routing statistics);
no engine, no weights. Sizes come from `contract.quant_types` estimates, so a plan is a forecast:
the bundle's real layout is measured on the quantized file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from contract.quant_types import (
    QUANT_TYPES,
    QuantType,
    QuantTypeError,
    bytes_for,
    get_quant,
    ggml_type_name,
    kv_bytes_per_element,
    stored_type,
)
from device_profiles import DeviceProfile
from packager.errors import PackError

# GGUF names of the dense weight matrices (attention, dense and shared-expert FFNs, embeddings),
# written so a routed-expert tensor (`ffn_*_exps`) never matches. llama.cpp applies the first
# matching tt_override, and only when the file type itself is quantized.
DENSE_TENSORS = r"^(token_embd|output)\.weight$|\.attn_|\.ffn_(gate|up|down)(_shexp)?\.weight$"
# A streaming plan is acceptable while misses at most double its decode time compared with the
# same quant fully resident; otherwise the planner keeps stepping down the preferences.
MAX_STREAM_SLOWDOWN = 2.0
PREFILL_BATCH = 512  # llama.cpp's default micro-batch
_LAYER = re.compile(r"(?:^|\.)(?:blk|layers)\.(\d+)\.")


class PlanError(PackError, ValueError):
    """Inputs the planner cannot use; the message names the field and what was expected."""


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model; parameter counts, not bytes."""

    n_layers: int
    moe_layers: tuple[int, ...]
    n_experts: int
    top_k: int
    hidden_size: int
    vocab_size: int
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    dense_params: int  # every weight outside the routed experts (embeddings, attention, shared)
    expert_params_per_layer: dict[int, int]  # params of ONE routed expert in that layer
    expert_row_len: int  # row length of ffn_down_exps (the expert's intermediate size)

    def validate(self) -> None:
        positive = ("n_layers", "n_experts", "top_k", "hidden_size", "vocab_size", "n_kv_heads",
                    "head_dim_k", "head_dim_v", "dense_params", "expert_row_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise PlanError(f"ModelShape.{name} must be a positive integer, got {value!r}")
        if self.top_k > self.n_experts:
            raise PlanError(f"ModelShape.top_k must be <= n_experts ({self.n_experts}), "
                            f"got {self.top_k}")
        bad = [x for x in self.moe_layers if not 0 <= x < self.n_layers]
        if not self.moe_layers or bad:
            raise PlanError(f"ModelShape.moe_layers must be non-empty layer indices in "
                            f"0..{self.n_layers - 1}, got {list(self.moe_layers)}")
        down = self.hidden_size * self.expert_row_len
        if set(self.expert_params_per_layer) != set(self.moe_layers) or any(
            v < down for v in self.expert_params_per_layer.values()
        ):
            raise PlanError("ModelShape.expert_params_per_layer must give, for exactly the "
                            f"moe_layers {list(self.moe_layers)}, at least hidden_size x "
                            f"expert_row_len ({down}) params (the down projection)")

    @property
    def active_params(self) -> int:
        """Weights one token multiplies: dense plus top_k experts in every MoE layer."""
        return self.dense_params + self.top_k * sum(self.expert_params_per_layer.values())


def shape_from_tensors(
    tensors: Iterable[tuple[str, Sequence[int], bool]], *, n_layers: int,
    moe_layers: Sequence[int], n_experts: int, top_k: int, hidden_size: int, vocab_size: int,
    n_kv_heads: int, head_dim_k: int, head_dim_v: int,
) -> ModelShape:
    """Build a ModelShape from (name, numpy-order shape, is_expert) triples, e.g. an adapter's
    planned tensors: GGUF names (`blk.N.ffn_down_exps.weight`), experts stacked as
    (n_experts, rows, row_len)."""
    dense, per_layer, rows = 0, dict.fromkeys(moe_layers, 0), 0
    for name, shape, is_expert in tensors:
        n = math.prod(shape)
        if not is_expert:
            dense += n
            continue
        m = _LAYER.search(name)
        if not m or int(m.group(1)) not in per_layer:
            raise PlanError(f"expert tensor '{name}' names no MoE layer of {list(moe_layers)}")
        per_layer[int(m.group(1))] += n // n_experts
        if "down" in name:
            rows = int(shape[-1])
    shape = ModelShape(n_layers, tuple(moe_layers), n_experts, top_k, hidden_size, vocab_size,
                       n_kv_heads, head_dim_k, head_dim_v, dense, per_layer, rows or hidden_size)
    shape.validate()
    return shape


@dataclass(frozen=True)
class ExpertUsage:
    """Measured routing: per_layer[l][e] is the fraction of tokens that selected expert e in
    layer l, so each layer sums to top_k (every token picks top_k experts). Only the shares
    within a layer matter, so raw counts or per-token-normalised values work too."""

    per_layer: dict[int, tuple[float, ...]]
    n_tokens: int = 0  # how many tokens were measured; 0 when unknown

    @classmethod
    def from_counts(cls, counts: Mapping[int, Sequence[int]], n_tokens: int) -> ExpertUsage:
        if n_tokens <= 0:
            raise PlanError(f"ExpertUsage.n_tokens must be positive, got {n_tokens}")
        return cls({int(k): tuple(c / n_tokens for c in v) for k, v in counts.items()}, n_tokens)

    def shares(self, layer: int, n_experts: int) -> tuple[float, ...]:
        """Each expert's share of the layer's selections (sums to 1; uniform if unmeasured)."""
        freq = self.per_layer.get(layer)
        total = sum(freq) if freq else 0.0
        if not total:
            return (1.0 / n_experts,) * n_experts
        return tuple(f / total for f in freq)

    def validate(self, shape: ModelShape) -> None:
        for layer, freq in self.per_layer.items():
            where = f"ExpertUsage.per_layer[{layer}]"
            if layer not in shape.moe_layers:
                raise PlanError(f"{where}: layer is not an MoE layer {list(shape.moe_layers)}")
            if len(freq) != shape.n_experts:
                raise PlanError(f"{where}: expected {shape.n_experts} frequencies, got {len(freq)}")
            if any(not math.isfinite(f) or f < 0 for f in freq):
                raise PlanError(f"{where}: frequencies must be finite and >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"per_layer": {str(k): list(v) for k, v in self.per_layer.items()},
                "n_tokens": self.n_tokens}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExpertUsage:
        try:
            per = {int(k): tuple(float(x) for x in v) for k, v in d["per_layer"].items()}
            return cls(per, int(d.get("n_tokens", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanError(
                f"usage: expected {{'per_layer': {{layer: [freq, ...]}}}}: {e}"
            ) from None


@dataclass(frozen=True)
class Suggestion:
    """One change that would make a plan fit (or stream less); `text` is what users read."""

    kind: str  # "quant", "context" or "prune"
    text: str
    quant: str | None = None
    context_length: int | None = None
    prune_fraction: float | None = None

    def kwargs(self) -> dict[str, Any]:
        """make_plan keyword arguments that apply this suggestion."""
        out = {"quant": self.quant, "context_length": self.context_length,
               "prune_fraction": self.prune_fraction}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Plan:
    """A packing plan. The packager quantizes with file type `quant_experts` plus the
    `tensor_types` overrides and records `hot_experts`; the runtime pins those experts."""

    profile: str
    quant_dense: str
    quant_experts: str  # the llama.cpp file type to quantize with
    tensor_types: dict[str, str]  # regex -> ggml type (llama.cpp tt_overrides), dense upgrades
    context_length: int
    dense_bytes: int
    expert_bytes_per_layer: dict[int, int]  # one expert
    expert_bytes_total: int  # every kept expert of every layer
    kv_bytes: int
    stream_bytes: int  # reserved for one token's experts when not every expert is resident
    budget_bytes: int
    hot_experts: dict[int, tuple[int, ...]]
    hot_bytes: int
    pruned_experts: dict[int, tuple[int, ...]]
    expected_hit_rate: float
    est_decode_tok_s: float
    est_prefill_tok_s: float
    fits: bool
    resident: bool  # every kept expert stays in memory; nothing streams from storage
    prune_fraction: float
    suggestions: tuple[str, ...]
    rationale: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        return self.dense_bytes + self.kv_bytes + self.hot_bytes + self.stream_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("hot_experts", "pruned_experts", "expert_bytes_per_layer"):
            d[key] = {str(k): (list(v) if isinstance(v, tuple) else v)
                      for k, v in getattr(self, key).items()}
        d["suggestions"], d["rationale"] = list(self.suggestions), list(self.rationale)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "plan") -> Plan:
        if not isinstance(d, Mapping):
            raise PlanError(f"{where}: a plan must be an object")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise PlanError(f"{where}: missing field(s) {', '.join(missing)}")
        for f in fields(cls):
            want = _SCALARS.get(str(f.type))
            value = d[f.name]
            if want and (not isinstance(value, want) or (want is not bool
                                                          and isinstance(value, bool))):
                raise PlanError(f"{where}: field '{f.name}' must be {f.type}, got {value!r}")
        try:
            v = {n: d[n] for n in names}
            for key in ("hot_experts", "pruned_experts"):
                v[key] = {int(k): tuple(int(e) for e in x) for k, x in d[key].items()}
            v["expert_bytes_per_layer"] = {int(k): int(x)
                                           for k, x in d["expert_bytes_per_layer"].items()}
            v["tensor_types"] = {str(k): str(x) for k, x in d["tensor_types"].items()}
            v["suggestions"], v["rationale"] = tuple(d["suggestions"]), tuple(d["rationale"])
        except (TypeError, ValueError, AttributeError) as e:
            raise PlanError(f"{where}: malformed field value: {e}") from None
        return cls(**v)


_SCALARS: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "bool": bool, "float": (int, float)}


@dataclass(frozen=True)
class _Sizes:
    """Byte budget of one (dense quant, expert quant) choice."""

    q_dense: QuantType
    q_experts: QuantType
    dense: int
    expert: dict[int, int]
    kept: int
    kv: int
    top_k: int

    @property
    def experts_total(self) -> int:
        return self.kept * sum(self.expert.values())

    @property
    def stream(self) -> int:
        return self.top_k * sum(self.expert.values())

    @property
    def minimum(self) -> int:
        return self.dense + self.kv + self.stream

    @property
    def resident(self) -> int:
        return self.dense + self.kv + self.experts_total


def _sizes(shape: ModelShape, q_dense: QuantType, q_experts: QuantType, kept: int,
           kv: int) -> _Sizes:
    return _Sizes(q_dense, q_experts, bytes_for(shape.dense_params, shape.hidden_size, q_dense),
                  expert_bytes(shape, q_experts), kept, kv, shape.top_k)


def expert_bytes(shape: ModelShape, q: QuantType) -> dict[int, int]:
    """Bytes of one expert per MoE layer: the down projection has rows of expert_row_len, the
    other projections (gate, up) rows of hidden_size; each may hit llama.cpp's block fallback."""
    down = shape.hidden_size * shape.expert_row_len
    return {layer: bytes_for(n - down, shape.hidden_size, q)
            + bytes_for(down, shape.expert_row_len, q)
            for layer, n in sorted(shape.expert_params_per_layer.items())}


def kv_cache_bytes(shape: ModelShape, context_length: int, cache_type: str) -> int:
    """K and V for every layer: n_layers x n_kv_heads x (head_dim_k + head_dim_v) x context."""
    per_token = shape.n_layers * shape.n_kv_heads * (shape.head_dim_k + shape.head_dim_v)
    return math.ceil(per_token * context_length * kv_bytes_per_element(cache_type))


def _gib(n: float) -> str:
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


def _pruned(shape: ModelShape, usage: ExpertUsage | None, n_prune: int) -> dict[int, tuple]:
    """The least-used experts of each layer (highest ids first without usage: arbitrary)."""
    if not n_prune:
        return {}
    out = {}
    for layer in shape.moe_layers:
        shares = usage.shares(layer, shape.n_experts) if usage else (0.0,) * shape.n_experts
        order = sorted(range(shape.n_experts), key=lambda e: (shares[e], -e))
        out[layer] = tuple(sorted(order[:n_prune]))
    return out


@dataclass(frozen=True)
class _HotSet:
    experts: dict[int, tuple[int, ...]]
    bytes: int
    hit_per_layer: dict[int, float]

    @property
    def hit_rate(self) -> float:
        return sum(self.hit_per_layer.values()) / len(self.hit_per_layer)


def _kept_shares(shape: ModelShape, usage: ExpertUsage | None,
                 pruned: dict[int, tuple]) -> dict[int, dict[int, float]]:
    """Per layer, each surviving expert's share of selections, renormalised over survivors
    (assumes the router spreads a pruned expert's tokens like the rest)."""
    out = {}
    for layer in shape.moe_layers:
        shares = (usage or ExpertUsage({})).shares(layer, shape.n_experts)
        kept = [e for e in range(shape.n_experts) if e not in pruned.get(layer, ())]
        total = sum(shares[e] for e in kept) or 1.0
        out[layer] = {e: shares[e] / total for e in kept}
    return out


def _hot_set(s: _Sizes, budget: int, shares: dict[int, dict[int, float]],
             measured: bool) -> _HotSet:
    """Every expert if all fit; else, with usage, the best selection-share per byte first
    (greedy, across layers) until the room is filled; without usage the same count per layer."""
    if s.resident <= budget:
        hot = {layer: tuple(sorted(sh)) for layer, sh in shares.items()}
        return _HotSet(hot, s.experts_total, dict.fromkeys(shares, 1.0))
    room = budget - s.minimum
    hot: dict[int, list[int]] = {layer: [] for layer in shares}
    used = 0
    if measured and room > 0:
        ranked = sorted(((sh / s.expert[layer], layer, e) for layer, d in shares.items()
                         for e, sh in d.items()), key=lambda t: (-t[0], t[1], t[2]))
        for _, layer, e in ranked:
            if used + s.expert[layer] <= room:
                hot[layer].append(e)
                used += s.expert[layer]
    elif room > 0:
        per_layer = min(s.kept, room // sum(s.expert.values()))
        for layer, d in shares.items():
            hot[layer] = sorted(d)[:per_layer]
        used = per_layer * sum(s.expert.values())
    experts = {layer: tuple(sorted(v)) for layer, v in hot.items() if v}
    hit = {layer: sum(shares[layer][e] for e in hot[layer]) for layer in shares}
    return _HotSet(experts, used, hit)


def _estimates(shape: ModelShape, profile: DeviceProfile, s: _Sizes, hot: _HotSet,
               ctx: int) -> tuple[float, float]:
    """Roofline estimates (tokens/s) for decode and prefill.

    decode: t = (dense + top_k experts per layer + KV at half context) / memory_bandwidth
                + sum_l top_k * (1 - hit_l) * expert_bytes_l / storage_read
    prefill (batches of B=512): t = max(2 * active_params * B / compute, all weights /
                memory_bandwidth) + cold (non-hot) expert bytes / storage_read, since a batch
                touches nearly every expert; tok/s = B / t.
    Both count the token-embedding table as read, so they err low.
    """
    bw, disk = profile.memory_bandwidth_gb_s * 1e9, profile.storage_read_mb_s * 1e6
    decode = 1.0 / sum(_decode_seconds(shape, profile, s, hot))
    batch = min(PREFILL_BATCH, ctx)
    compute = 2 * shape.active_params * batch / (profile.compute_gflops * 1e9)
    memory = (s.dense + s.experts_total) / bw
    cold = (s.experts_total - hot.bytes) / disk
    return decode, batch / (max(compute, memory) + cold)


def _decode_seconds(shape: ModelShape, profile: DeviceProfile, s: _Sizes,
                    hot: _HotSet) -> tuple[float, float]:
    """(memory time, storage time) of one decoded token; see `_estimates`."""
    touched = s.dense + s.stream + s.kv / 2
    miss = sum(shape.top_k * (1 - hot.hit_per_layer[layer]) * b for layer, b in s.expert.items())
    return (touched / (profile.memory_bandwidth_gb_s * 1e9),
            miss / (profile.storage_read_mb_s * 1e6))


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
              kept: int | None = None) -> _Sizes:
        return _sizes(self.shape, dense or q, q, self.kept if kept is None else kept, self.kv)

    def hot(self, s: _Sizes) -> _HotSet:
        return _hot_set(s, self.budget, self.shares, self.usage is not None)

    def decode(self, s: _Sizes) -> float:
        return 1.0 / sum(_decode_seconds(self.shape, self.profile, s, self.hot(s)))

    def slowdown(self, s: _Sizes) -> float:
        """Decode time with misses over decode time with every expert resident."""
        memory, storage = _decode_seconds(self.shape, self.profile, s, self.hot(s))
        return 1.0 + storage / memory


def _choose(c: _Ctx, candidates: Sequence[QuantType], why: list[str]) -> tuple[_Sizes, bool]:
    """The first candidate that is fully resident or streams with at most MAX_STREAM_SLOWDOWN;
    else the streaming one with the best decode estimate; (the last, False) if none fits even
    one token's experts."""
    streaming: list[_Sizes] = []
    for q in candidates:
        s = c.sizes(q)
        head = (f"{q.name}: dense {_gib(s.dense)} + KV {_gib(s.kv)} + all experts "
                f"{_gib(s.experts_total)} = {_gib(s.resident)}")
        if s.resident <= c.budget:
            why.append(f"{head} <= budget: every expert resident")
            return s, True
        if s.minimum > c.budget:
            why.append(f"{head}; even one token's experts ({_gib(s.stream)}) need "
                       f"{_gib(s.minimum)} > budget")
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


def _upgrade_dense(c: _Ctx, s: _Sizes, why: list[str]) -> _Sizes:
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
            why.append(f"dense weights kept at {q.name} ({_gib(up.dense)}): the budget has room")
            return up
    return s


def _suggest(c: _Ctx, s: _Sizes, fits: bool) -> list[Suggestion]:
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
            out.append(Suggestion("quant", f"quant {q.name}{note}: {_gib(need)} of "
                                  f"{_gib(c.budget)}, {what}", quant=q.name))
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
    per_token = kv_cache_bytes(c.shape, 1, c.profile.kv_cache_type)
    n = (c.budget - s.dense - s.stream) // per_token // 256 * 256
    if n < 256 or n >= c.ctx:
        return None
    kv = kv_cache_bytes(c.shape, n, c.profile.kv_cache_type)
    return Suggestion("context", f"quant {q.name} with context_length {n}: KV cache "
                      f"{_gib(c.kv)} -> {_gib(kv)}, {_gib(s.minimum - s.kv + kv)} of "
                      f"{_gib(c.budget)}", quant=q.name, context_length=n)


def _prune_fix(c: _Ctx, s: _Sizes) -> Suggestion | None:
    """The fewest experts per layer to drop (beyond those already pruned) so every remaining
    expert is resident at s's quant."""
    n = c.shape.n_experts
    for k in range(n - c.kept + 1, n - c.shape.top_k + 1):
        t = c.sizes(s.q_experts, kept=n - k)
        if t.resident <= c.budget:
            blind = "" if c.usage else "; without usage data the dropped experts are arbitrary"
            return Suggestion("prune", f"quant {s.q_experts.name} with prune_fraction "
                              f"{k / n:.3f} (drop {k} of {n} experts per layer): every expert "
                              f"resident, {_gib(t.resident)} of {_gib(c.budget)}{blind}",
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
    budget on higher-precision dense weights (tensor_types). `_hot_set` picks hot experts;
    `_estimates` documents the speed formulas.
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
    pruned = _pruned(shape, usage, n_prune)
    c = _Ctx(shape, profile, usage, profile.model_memory_bytes, ctx,
             kv_cache_bytes(shape, ctx, profile.kv_cache_type), shape.n_experts - n_prune,
             _kept_shares(shape, usage, pruned))
    why = [f"budget {_gib(c.budget)} ({profile.name} model_memory); context {ctx}, KV cache "
           f"{profile.kv_cache_type}: {_gib(c.kv)}"]
    s, fits = _choose(c, candidates, why)
    if fits and quant is None and s.resident <= c.budget:
        s = _upgrade_dense(c, s, why)
    resident = fits and s.resident <= c.budget
    hot = c.hot(s) if fits else _HotSet({}, 0, dict.fromkeys(shape.moe_layers, 0.0))
    decode, prefill = _estimates(shape, profile, s, hot, ctx) if fits else (0.0, 0.0)
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
        suggestions=tuple(t.text for t in tips), rationale=tuple(why),
    )
    return plan, tips


def _explain(c: _Ctx, s: _Sizes, hot: _HotSet, fits: bool, resident: bool,
             n_prune: int) -> list[str]:
    why = []
    rows = {"ffn_down_exps": (c.shape.expert_row_len, s.q_experts),
            "ffn_gate/up_exps": (c.shape.hidden_size, s.q_experts),
            "dense weights": (c.shape.hidden_size, s.q_dense)}
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
        why.append(f"hot set: {n_hot} of {total} experts ({_gib(hot.bytes)}), {basis}; "
                   f"{_gib(s.stream)} kept for streaming one token's experts")
    return why


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
        ("budget", _gib(plan.budget_bytes)),
        ("dense weights", _gib(plan.dense_bytes)),
        ("KV cache", f"{_gib(plan.kv_bytes)} (context {plan.context_length})"),
        ("experts (all)", f"{_gib(plan.expert_bytes_total)} in {n_all} MoE layers"),
        ("hot experts", f"{_gib(plan.hot_bytes)} ({n_hot} experts)"),
        ("stream buffer", _gib(plan.stream_bytes)),
        ("total", f"{_gib(plan.total_bytes)} of {_gib(plan.budget_bytes)}"),
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
