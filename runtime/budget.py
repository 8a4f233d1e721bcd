"""Memory budgets: parsing ("40%", "1.5GB", bytes) and the split into dense, KV and expert bytes.

Pure arithmetic over the manifest's numbers, so it is tested without a model. A budget covers
the model's weights and its KV cache; llama.cpp's compute scratch buffers are reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.sizes import parse_size
from runtime.errors import BudgetError


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
    try:
        return BudgetSpec(total_bytes=parse_size(text))  # the same grammar as device profiles
    except ValueError:
        raise BudgetError(
            f"budget '{value}': expected a percentage ('40%'), a size ('1.5GB', '800MiB') or bytes"
        ) from None


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
