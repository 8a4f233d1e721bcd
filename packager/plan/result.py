"""What the planner returns: a Plan (stored in the manifest) and structured Suggestions.

Plan round-trips through JSON with typed checks, because a manifest written by one version may be
read by another; errors name the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from packager.plan.errors import PlanError

# GGUF names of the dense weight matrices (attention, dense and shared-expert FFNs, embeddings),
# written so a routed-expert tensor (`ffn_*_exps`) never matches. llama.cpp applies the first
# matching tt_override, and only when the file type itself is quantized.
DENSE_TENSORS = r"^(token_embd|output)\.weight$|\.attn_|\.ffn_(gate|up|down)(_shexp)?\.weight$"


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
    # Each hot expert's share of its layer's routings, in hot_experts' order (hottest first);
    # empty without usage. Plans written before it was recorded read as empty.
    hot_shares: dict[int, tuple[float, ...]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.dense_bytes + self.kv_bytes + self.hot_bytes + self.stream_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("hot_experts", "pruned_experts", "expert_bytes_per_layer", "hot_shares"):
            d[key] = {str(k): (list(v) if isinstance(v, tuple) else v)
                      for k, v in getattr(self, key).items()}
        d["suggestions"], d["rationale"] = list(self.suggestions), list(self.rationale)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "plan") -> Plan:
        if not isinstance(d, Mapping):
            raise PlanError(f"{where}: a plan must be an object")
        names = [f.name for f in fields(cls)]
        missing = [f.name for f in fields(cls)
                   if f.name not in d and f.default_factory is MISSING]
        if missing:
            raise PlanError(f"{where}: missing field(s) {', '.join(missing)}")
        for f in fields(cls):
            want = _SCALARS.get(str(f.type))
            value = d.get(f.name)
            if want and (not isinstance(value, want) or (want is not bool
                                                          and isinstance(value, bool))):
                raise PlanError(f"{where}: field '{f.name}' must be {f.type}, got {value!r}")
        try:
            v = {n: d[n] for n in names if n in d}
            v["hot_shares"] = {int(k): tuple(float(s) for s in x)
                               for k, x in d.get("hot_shares", {}).items()}
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
