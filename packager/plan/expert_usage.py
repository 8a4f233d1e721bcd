"""Measured routing as the planner reads it: each expert's share of its layer's selections.

Kept apart from packager/usage.py (the calibration file with counts and router weights) so the
planner needs nothing but these frequencies, and pruning and the hot set rank by the same shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packager.plan.errors import PlanError
from packager.plan.shape import ModelShape


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
