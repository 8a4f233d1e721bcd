"""Expert usage profile: how often, how strongly and with whom each expert is routed to.

Pure data and arithmetic (numpy only): engines fill a `UsageAccumulator` chunk by chunk, the
profile is saved as JSON, and pruning, planning and heat maps read it back. Weights are router
probabilities of the chosen experts *before* any top-k renormalisation or scaling, so the
numbers mean the same thing for every family and for both engines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import atomic_write_text, read_json
from packager.errors import PackError

SCHEMA_VERSION = 1
SOURCES = ("llama.cpp", "transformers")
_FIELDS = (
    "schema_version", "n_experts", "top_k", "layers", "counts", "weight_sum", "coactivation",
    "n_tokens", "entropy", "source", "text_sha256",
)  # fmt: skip


class UsageError(PackError):
    """A usage profile that is malformed or inconsistent; the message names file and field."""


class _Inconsistent(UsageError):
    """A broken invariant; `detail` lets a file reader restate it with the file's name."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"usage profile: {detail}")
        self.detail = detail


@dataclass(frozen=True)
class UsageProfile:
    """Per MoE layer: times each expert was chosen, summed router weight, pair co-selection."""

    n_experts: int
    top_k: int
    layers: tuple[int, ...]
    counts: dict[int, tuple[int, ...]]
    weight_sum: dict[int, tuple[float, ...]]
    coactivation: dict[int, tuple[tuple[int, ...], ...]]  # symmetric, zero diagonal
    n_tokens: int
    entropy: dict[int, float]  # mean per-token entropy of the router distribution, nats
    source: str  # "llama.cpp" | "transformers"
    text_sha256: str

    def __post_init__(self) -> None:
        _validate(self)

    # --- derived views ---------------------------------------------------------------------
    def frequencies(self) -> dict[int, tuple[float, ...]]:
        """Times chosen per token; each layer sums to top_k."""
        n = max(self.n_tokens, 1)
        return {layer: tuple(c / n for c in self.counts[layer]) for layer in self.layers}

    def mean_weight(self) -> dict[int, tuple[float, ...]]:
        """Mean router probability when chosen (0 for an expert never chosen)."""
        out = {}
        for layer in self.layers:
            pairs = zip(self.weight_sum[layer], self.counts[layer], strict=True)
            out[layer] = tuple(w / c if c else 0.0 for w, c in pairs)
        return out

    def weight_share(self) -> dict[int, tuple[float, ...]]:
        """Router mass each expert received when chosen, per token (the pruning score)."""
        n = max(self.n_tokens, 1)
        return {layer: tuple(w / n for w in self.weight_sum[layer]) for layer in self.layers}

    def to_planner_usage(self) -> Any:
        """The planner's `ExpertUsage` (selection frequency per expert), imported lazily."""
        from packager.plan.expert_usage import ExpertUsage  # keeps this module planner-free

        return ExpertUsage.from_counts(self.counts, self.n_tokens)

    # --- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def keyed(d: Mapping[int, Any]) -> dict[str, Any]:
            return {str(k): _plain(v) for k, v in sorted(d.items())}

        return {
            "schema_version": SCHEMA_VERSION,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "layers": list(self.layers),
            "counts": keyed(self.counts),
            "weight_sum": keyed(self.weight_sum),
            "coactivation": keyed(self.coactivation),
            "n_tokens": self.n_tokens,
            "entropy": keyed(self.entropy),
            "source": self.source,
            "text_sha256": self.text_sha256,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "usage profile") -> UsageProfile:
        return _parse(data, where)

    def save(self, path: Path) -> Path:
        """Write JSON atomically (temp file in the same folder, then rename)."""
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        return atomic_write_text(Path(path), text)

    @classmethod
    def load(cls, path: Path) -> UsageProfile:
        path = Path(path)
        try:
            data = read_json(path, UsageError, "usage profile")
        except (ValueError, RecursionError) as e:
            # read_json leaves these: not UTF-8 (UnicodeDecodeError is a ValueError), numbers
            # past Python's 4,300-digit limit, nesting deeper than the parser's recursion.
            reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise UsageError(f"{path}: not a readable JSON usage profile ({reason})") from None
        return _parse(data, str(path))


@dataclass
class UsageAccumulator:
    """Running sums over routing decisions, so calibration never holds all tokens at once."""

    n_experts: int
    top_k: int
    counts: dict[int, np.ndarray] = field(default_factory=dict)
    weight_sum: dict[int, np.ndarray] = field(default_factory=dict)
    coactivation: dict[int, np.ndarray] = field(default_factory=dict)
    entropy_sum: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)

    def add(self, layer: int, ids: np.ndarray, probs: np.ndarray,
            weights: np.ndarray | None = None) -> None:
        """One batch of one layer: ids [n, top_k], probs [n, n_experts], weights [n, top_k]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1, self.top_k)
        probs = np.asarray(probs, dtype=np.float64).reshape(ids.shape[0], self.n_experts)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_experts):
            raise UsageError(f"layer {layer}: expert id outside 0..{self.n_experts - 1}")
        if weights is None:
            weights = np.take_along_axis(probs, ids, axis=1)
        weights = np.asarray(weights, dtype=np.float64).reshape(ids.shape)
        onehot = np.zeros((ids.shape[0], self.n_experts), dtype=np.int64)
        np.put_along_axis(onehot, ids, 1, axis=1)
        co = onehot.T @ onehot
        np.fill_diagonal(co, 0)
        weighted = np.zeros((ids.shape[0], self.n_experts))
        np.put_along_axis(weighted, ids, weights, axis=1)
        self._sum(layer, onehot.sum(axis=0), weighted.sum(axis=0), co)
        self.entropy_sum[layer] = self.entropy_sum.get(layer, 0.0) + float(_entropy(probs).sum())
        self.tokens[layer] = self.tokens.get(layer, 0) + ids.shape[0]

    def _sum(self, layer: int, counts: np.ndarray, weights: np.ndarray, co: np.ndarray) -> None:
        if layer not in self.counts:
            self.counts[layer] = np.zeros(self.n_experts, dtype=np.int64)
            self.weight_sum[layer] = np.zeros(self.n_experts)
            self.coactivation[layer] = np.zeros((self.n_experts,) * 2, dtype=np.int64)
        self.counts[layer] += counts
        self.weight_sum[layer] += weights
        self.coactivation[layer] += co

    def profile(self, source: str, text_sha256: str) -> UsageProfile:
        layers = tuple(sorted(self.counts))
        if not layers:
            raise UsageError("no routing was observed (is this a MoE model? was any text given?)")
        n = {self.tokens[layer] for layer in layers}
        if len(n) != 1:
            raise UsageError(f"layers saw different token counts {sorted(n)}; routing incomplete")
        n_tokens = n.pop()
        return UsageProfile(
            n_experts=self.n_experts,
            top_k=self.top_k,
            layers=layers,
            counts={k: tuple(int(x) for x in self.counts[k]) for k in layers},
            weight_sum={k: tuple(float(x) for x in self.weight_sum[k]) for k in layers},
            coactivation={k: tuple(tuple(int(x) for x in r) for r in self.coactivation[k])
                          for k in layers},
            n_tokens=n_tokens,
            entropy={k: self.entropy_sum[k] / max(n_tokens, 1) for k in layers},
            source=source,
            text_sha256=text_sha256,
        )


def from_routing(
    topk_ids: Mapping[int, np.ndarray],
    probs: Mapping[int, np.ndarray],
    *,
    source: str,
    text_sha256: str,
    weights: Mapping[int, np.ndarray] | None = None,
) -> UsageProfile:
    """Build a profile from whole-run arrays: ids [n, top_k] and probs [n, n_experts] per layer."""
    if not topk_ids:
        raise UsageError("no routing was observed (empty topk_ids)")
    first = next(iter(topk_ids))
    top_k = int(np.asarray(topk_ids[first]).shape[-1])
    n_experts = int(np.asarray(probs[first]).shape[-1])
    acc = UsageAccumulator(n_experts, top_k)
    for layer in sorted(topk_ids):
        acc.add(layer, topk_ids[layer], probs[layer], None if weights is None else weights[layer])
    return acc.profile(source, text_sha256)




def _entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-30, None)
    return -(probs * np.log(p)).sum(axis=-1)


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


# --- parsing and validation ----------------------------------------------------------------
def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise UsageError(f"{where}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(data: dict, key: str, where: str, minimum: int) -> int:
    v = data.get(key)
    _require(_is_int(v) and v >= minimum, where,
             f"'{key}' must be an integer >= {minimum}, got {str(v)[:40]!r}")
    return int(v)


def _per_layer(data: dict, key: str, layers: tuple[int, ...], where: str) -> dict[int, Any]:
    v = data.get(key)
    _require(isinstance(v, dict), where, f"'{key}' must be an object keyed by layer index")
    want = {str(layer) for layer in layers}
    _require(set(v) == want, where,
             f"'{key}' has layers {sorted(v)}, expected {sorted(want, key=int)}")
    return {int(k): val for k, val in v.items()}


def _vector(v: Any, n: int, kind: type, where: str) -> tuple:
    """n integers (kind int: counts, never 2.5 or NaN) or n finite numbers (kind float)."""
    ok = isinstance(v, list) and len(v) == n
    if kind is int:
        ok = ok and all(_is_int(x) for x in v)
    else:
        ok = ok and all(_is_int(x) or (isinstance(x, float) and math.isfinite(x)) for x in v)
    _require(ok, where, f"expected a list of {n} {'integers' if kind is int else 'finite numbers'}")
    return tuple(kind(x) for x in v)


def _parse(data: Any, where: str) -> UsageProfile:
    _require(isinstance(data, dict), where, "top level must be a JSON object")
    missing = [k for k in _FIELDS if k not in data]
    _require(not missing, where, f"missing field(s): {', '.join(missing)}")
    version = data["schema_version"]
    _require(version == SCHEMA_VERSION, where,
             f"'schema_version' is {version!r}; this edgemoe reads {SCHEMA_VERSION}")
    n_exp = _int(data, "n_experts", where, 1)
    layers_raw = data["layers"]
    _require(isinstance(layers_raw, list) and layers_raw
             and all(_is_int(x) and x >= 0 for x in layers_raw), where,
             "'layers' must be a non-empty list of layer indices")
    layers = tuple(int(x) for x in layers_raw)
    counts = _per_layer(data, "counts", layers, where)
    wsum = _per_layer(data, "weight_sum", layers, where)
    co = _per_layer(data, "coactivation", layers, where)
    ent = _per_layer(data, "entropy", layers, where)
    try:
        return _build(data, n_exp, layers, counts, wsum, co, ent, where)
    except _Inconsistent as e:
        raise UsageError(f"{where}: {e.detail}") from None


def _build(data, n_exp, layers, counts, wsum, co, ent, where) -> UsageProfile:
    return UsageProfile(
        n_experts=n_exp,
        top_k=_int(data, "top_k", where, 1),
        layers=layers,
        counts={k: _vector(v, n_exp, int, f"{where}: counts[{k}]") for k, v in counts.items()},
        weight_sum={k: _vector(v, n_exp, float, f"{where}: weight_sum[{k}]")
                    for k, v in wsum.items()},
        coactivation={k: _matrix(v, n_exp, f"{where}: coactivation[{k}]") for k, v in co.items()},
        n_tokens=_int(data, "n_tokens", where, 0),
        entropy={k: _number(v, f"{where}: entropy[{k}]") for k, v in ent.items()},
        source=data["source"],
        text_sha256=data["text_sha256"],
    )


def _matrix(v: Any, n: int, where: str) -> tuple[tuple[int, ...], ...]:
    _require(isinstance(v, list) and len(v) == n, where, f"expected {n} rows of {n} counts")
    return tuple(_vector(row, n, int, where) for row in v)


def _number(v: Any, where: str) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    _require(ok, where, f"expected a finite number, got {v!r}")
    return float(v)


def _check(cond: bool, detail: str) -> None:
    if not cond:
        raise _Inconsistent(detail)


def _validate(p: UsageProfile) -> None:
    """Invariants every profile satisfies, whether built from routing or read from a file."""
    _check(p.source in SOURCES, f"'source' must be one of {SOURCES}, got {p.source!r}")
    _check(isinstance(p.text_sha256, str) and len(p.text_sha256) == 64,
           "'text_sha256' must be 64 hex digits")
    _check(1 <= p.top_k <= p.n_experts,
           f"top_k={p.top_k} must be between 1 and n_experts={p.n_experts}")
    _check(len(set(p.layers)) == len(p.layers) and list(p.layers) == sorted(p.layers),
           "'layers' must be strictly increasing")
    for name in ("counts", "weight_sum", "coactivation", "entropy"):
        keys = set(getattr(p, name))
        _check(keys == set(p.layers), f"'{name}' has layers {sorted(keys)}, expected "
               f"{list(p.layers)}")
    for layer in p.layers:
        _check_layer(p, layer)


def _check_layer(p: UsageProfile, layer: int) -> None:
    counts = p.counts[layer]
    _check(len(counts) == p.n_experts and len(p.weight_sum[layer]) == p.n_experts,
           f"counts/weight_sum[{layer}] must have n_experts={p.n_experts} entries")
    _check(min(counts) >= 0, f"counts[{layer}] has a negative count")
    _check(sum(counts) == p.n_tokens * p.top_k, f"counts[{layer}] sum to {sum(counts)}, "
           f"expected n_tokens*top_k = {p.n_tokens * p.top_k}")
    _check(min(p.weight_sum[layer]) >= 0, f"weight_sum[{layer}] has a negative value")
    co = np.asarray(p.coactivation[layer])
    square = co.shape == (p.n_experts, p.n_experts)
    _check(square and bool((co == co.T).all()) and not co.diagonal().any(),
           f"coactivation[{layer}] must be a symmetric {p.n_experts}x{p.n_experts} matrix "
           "with a zero diagonal")
    # Each token contributes top_k*(top_k-1) ordered pairs.
    _check(int(co.sum()) == p.n_tokens * p.top_k * (p.top_k - 1),
           f"coactivation[{layer}] does not add up to n_tokens*top_k*(top_k-1)")
    _check(p.entropy[layer] >= -1e-9, f"entropy[{layer}] is negative")
