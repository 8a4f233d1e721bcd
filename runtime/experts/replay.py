"""Policy replay: a routing trace through the runtime's own ExpertCache, next to Belady's bound.

The replay owns no cache logic: it feeds each trace step to a real `ExpertCache` with no
Residency (books only, no memory touched), so an offline hit rate is exactly what the runtime
would count on the same routing, capacity and pinned set, and the two cannot drift apart.
Belady's optimum is just another Policy, built from the exact order in which the cache will
report uses. The pinned set is an input (runtime/experts/pinning.py decides it), never recomputed
here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from device_profiles import format_bytes
from runtime.errors import BudgetError
from runtime.experts.cache import ExpertCache, Hold
from runtime.experts.policy import BeladyPolicy, Key, Policy, make_policy
from runtime.experts.routing_trace import RoutingTrace

Steps = Sequence[Mapping[int, Sequence[int]]]  # per token: layer -> the experts it routed to
Pinned = Mapping[int, AbstractSet[int] | Sequence[int]]  # layer -> pinned expert ids


@dataclass(frozen=True)
class SimResult:
    """One policy at one capacity over one trace; counts as the ExpertCache kept them."""

    policy: str
    capacity_bytes: int
    hits: int  # pinned hits included
    misses: int
    bytes_loaded: int
    evictions: int
    pinned_hits: int
    hit_rate: float


def _steps_of(trace: RoutingTrace | Steps) -> Steps:
    return trace.steps if isinstance(trace, RoutingTrace) else trace


def _accesses(step: Mapping[int, Sequence[int]]) -> Iterator[tuple[int, list[int]]]:
    """One access per layer, in layer order (the order a forward pass routes them)."""
    for layer in sorted(step):
        yield layer, list(dict.fromkeys(step[layer]))


def _n_experts(trace: RoutingTrace | Steps, pinned: Pinned | None) -> int:
    """A RoutingTrace knows its expert count; for plain steps, one past the highest id seen."""
    if isinstance(trace, RoutingTrace):
        return trace.n_experts
    ids = [e for step in trace for experts in step.values() for e in experts]
    ids += [e for experts in (pinned or {}).values() for e in experts]
    return max(ids, default=0) + 1


def simulate(
    trace: RoutingTrace | Steps,
    policy: str | Policy,
    capacity_bytes: int,
    expert_bytes: Mapping[int, int],
    pinned: Pinned | None = None,
    hold: Hold = Hold.ACCESS,
) -> SimResult:
    """Replay a trace through a real ExpertCache that starts with only the pinned experts.

    Each step ends with `end_step()`, as a token does in the runtime; a BudgetError names the
    step, then the cache's own reason.
    """
    pol = make_policy(policy) if isinstance(policy, str) else policy
    name = policy if isinstance(policy, str) else getattr(policy, "name", type(policy).__name__)
    cache = ExpertCache(expert_bytes, _n_experts(trace, pinned), capacity_bytes, pinned,
                        pol, residency=None, hold=hold)
    for index, step in enumerate(_steps_of(trace)):
        for layer, experts in _accesses(step):
            try:
                cache.access(layer, experts)
            except BudgetError as e:
                raise BudgetError(f"step {index}, {e}") from None
        cache.end_step()
    s = cache.stats()
    return SimResult(name, capacity_bytes, s.hits, s.misses, s.bytes_loaded, s.evictions,
                     s.pinned_hits, s.hit_rate)


def belady_uses(trace: RoutingTrace | Steps, pinned: Pinned | None) -> list[Key]:
    """The order in which the cache reports uses of unpinned keys: what Belady must foresee."""
    pins = {(layer, e) for layer, experts in (pinned or {}).items() for e in experts}
    return [(layer, e) for step in _steps_of(trace) for layer, experts in _accesses(step)
            for e in experts if (layer, e) not in pins]


def simulate_belady(
    trace: RoutingTrace | Steps,
    capacity_bytes: int,
    expert_bytes: Mapping[int, int],
    pinned: Pinned | None = None,
    hold: Hold = Hold.ACCESS,
) -> SimResult:
    """Belady's offline optimum on the same cache as `simulate` (an upper bound on hits)."""
    return simulate(trace, BeladyPolicy(belady_uses(trace, pinned)), capacity_bytes,
                    expert_bytes, pinned, hold)


@dataclass(frozen=True)
class Row:
    """One line of a replay table: a policy at a capacity, and how close it gets to Belady."""

    capacity_bytes: int
    policy: str
    result: SimResult
    ratio_to_belady: float  # hit rate / Belady's hit rate at the same capacity


def replay(
    trace: RoutingTrace | Steps,
    policies: Sequence[str],
    capacities: Sequence[int],
    expert_bytes: Mapping[int, int],
    pinned: Pinned | None = None,
    hold: Hold = Hold.ACCESS,
) -> list[Row]:
    """Every policy at every capacity, Belady first in each capacity's rows."""
    rows: list[Row] = []
    for cap in capacities:
        best = simulate_belady(trace, cap, expert_bytes, pinned, hold)
        rows.append(Row(cap, "belady", best, 1.0))
        for name in policies:
            r = simulate(trace, name, cap, expert_bytes, pinned, hold)
            ratio = r.hit_rate / best.hit_rate if best.hit_rate else 1.0
            rows.append(Row(cap, name, r, ratio))
    return rows


def render_replay(rows: Sequence[Row]) -> str:
    """A table: one line per capacity, hit rate per policy and (ratio to Belady)."""
    names = list(dict.fromkeys(r.policy for r in rows))
    caps = list(dict.fromkeys(r.capacity_bytes for r in rows))
    cell = {(r.capacity_bytes, r.policy): r for r in rows}
    header = ["capacity"] + names
    lines = []
    for cap in caps:
        line = [format_bytes(cap)]
        for name in names:
            r = cell.get((cap, name))
            if r is None:
                line.append("-")
            elif name == "belady":
                line.append(f"{100 * r.result.hit_rate:.1f}%")
            else:
                line.append(f"{100 * r.result.hit_rate:.1f}% ({r.ratio_to_belady:.3f})")
        lines.append(line)
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out) + "\n"
