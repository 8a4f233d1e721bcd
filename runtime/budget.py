"""Memory budgets: parsing ("40%", "1.5GB", bytes) and the split into dense, KV and expert bytes.

Pure arithmetic over the manifest's numbers, so it is tested without a model. A budget covers
the model's weights and its KV cache; llama.cpp's compute scratch buffers are reported apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.errors import BudgetError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "ki": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "mi": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "gi": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
    "ti": 2**40,
}


@dataclass(frozen=True)
class BudgetSpec:
    """What the user asked for: a fraction of expert bytes, or an absolute total in bytes."""

    fraction: float | None = None
    total_bytes: int | None = None

    def describe(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction * 100:g}% of expert bytes"
        return f"{self.total_bytes:,} bytes"


@dataclass(frozen=True)
class BudgetPlan:
    budget_bytes: int  # dense + kv + expert capacity
    dense_bytes: int
    kv_bytes: int
    expert_capacity_bytes: int
    expert_bytes_total: int
    minimum_bytes: int

    @property
    def fraction(self) -> float:
        return (
            self.expert_capacity_bytes / self.expert_bytes_total if self.expert_bytes_total else 1.0
        )

    @property
    def offloading(self) -> bool:
        return self.expert_capacity_bytes < self.expert_bytes_total


def parse_budget(value: str | int | float | None) -> BudgetSpec | None:
    """'40%' -> fraction 0.4; '1.5GB' -> 1.5e9 bytes; 123 -> 123 bytes; None -> None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BudgetError(f"budget must be a percentage, a size or bytes, got {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise BudgetError(f"budget must be positive, got {value}")
        return BudgetSpec(total_bytes=int(value))
    text = str(value).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise BudgetError(f"budget '{value}': not a percentage") from None
        if not 0 < pct <= 100:
            raise BudgetError(f"budget '{value}': percentage must be in (0, 100]")
        return BudgetSpec(fraction=pct / 100)
    m = _SIZE.match(text)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise BudgetError(
            f"budget '{value}': expected a percentage ('40%'), a size ('1.5GB', '800MiB') or bytes"
        )
    return BudgetSpec(total_bytes=int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]))


def plan_budget(
    spec: BudgetSpec | None,
    *,
    dense_bytes: int,
    kv_bytes: int,
    expert_bytes_total: int,
    one_token_expert_bytes: int,
) -> BudgetPlan:
    """Resolve a budget against the model; below the minimum is an error that states it."""
    minimum = dense_bytes + kv_bytes + one_token_expert_bytes
    if spec is None:
        capacity = expert_bytes_total
    elif spec.fraction is not None:
        capacity = int(expert_bytes_total * spec.fraction)
    else:
        capacity = int(spec.total_bytes or 0) - dense_bytes - kv_bytes
    capacity = min(capacity, expert_bytes_total)
    if capacity < one_token_expert_bytes:
        asked = spec.describe() if spec else "default"
        raise BudgetError(
            f"budget {asked} is below the minimum of {minimum:,} bytes "
            f"(dense weights {dense_bytes:,} + KV cache {kv_bytes:,} + one token's experts "
            f"{one_token_expert_bytes:,}; as a fraction: "
            f"{100 * one_token_expert_bytes / max(expert_bytes_total, 1):.1f}%)"
        )
    return BudgetPlan(
        budget_bytes=dense_bytes + kv_bytes + capacity,
        dense_bytes=dense_bytes,
        kv_bytes=kv_bytes,
        expert_capacity_bytes=capacity,
        expert_bytes_total=expert_bytes_total,
        minimum_bytes=minimum,
    )
