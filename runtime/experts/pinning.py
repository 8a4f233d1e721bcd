"""The hot set: each layer's hot experts ranked, and the one rule that trims it to a room.

The planner ranks experts by their share of a layer's routings per byte (greedy across layers)
and records each layer's hot experts hottest first, with their shares, in the manifest. The
runtime pins a prefix of that same ranking when its budget holds fewer experts than the plan,
and the planner's forecast picks its hot set with the same function, so what is pinned is
always the hottest of what was planned. Without shares (bundles packed before they were
recorded, or without calibration) every expert counts the same and the rule goes round-robin
across layers in list order. Pure arithmetic over plain data, tested without a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

HotSet = Mapping[int, Sequence[int]]  # layer -> expert ids, hottest first
Shares = Mapping[int, Sequence[float]]  # layer -> each listed expert's share of the layer


def ranked(hot: HotSet, shares: Shares | None, expert_bytes: Mapping[int, int]
           ) -> list[tuple[int, int]]:
    """Every (layer, expert) of `hot`, the best share per byte first; ties (equal or unknown
    shares) go by place in the layer's list, then by layer: round-robin across layers."""
    rows = []
    for layer, experts in hot.items():
        if layer not in expert_bytes:
            continue
        known = shares.get(layer) if shares else None
        for place, expert in enumerate(experts):
            share = known[place] if known is not None else 1.0
            rows.append((-share / expert_bytes[layer], place, layer, expert))
    return [(layer, expert) for _, _, layer, expert in sorted(rows)]


def take(order: Sequence[tuple[int, int]], expert_bytes: Mapping[int, int], room: int
         ) -> dict[int, tuple[int, ...]]:
    """The experts of `order` that fit `room` bytes, taken in order (one that no longer fits is
    passed over for smaller ones after it); each layer's experts stay in rank order."""
    out: dict[int, list[int]] = {}
    for layer, expert in order:
        if expert_bytes[layer] <= room:
            out.setdefault(layer, []).append(expert)
            room -= expert_bytes[layer]
    return {layer: tuple(experts) for layer, experts in sorted(out.items())}


def pinned_set(
    hot_experts: HotSet,
    expert_bytes: Mapping[int, int],
    capacity_bytes: int,
    top_k: int,
    shares: Shares | None = None,
) -> dict[int, tuple[int, ...]]:
    """What the runtime pins at an expert capacity: the hot set trimmed to half the capacity,
    always leaving room for one token's experts in every layer (the rest is the policy's
    working set)."""
    room = min(capacity_bytes // 2, capacity_bytes - top_k * sum(expert_bytes.values()))
    if room <= 0:
        return {}
    return take(ranked(hot_experts, shares, expert_bytes), expert_bytes, room)


def expected_hit_share(pinned: HotSet, hot: HotSet, shares: Shares | None,
                       layers: Sequence[int]) -> float | None:
    """The share of routings the pinned experts serve, averaged over the MoE `layers` (None
    without shares): what the plan's expected hit rate becomes at this budget."""
    if not shares or not layers:
        return None
    total = 0.0
    for layer, experts in hot.items():
        share_of = dict(zip(experts, shares.get(layer, ()), strict=False))
        total += sum(share_of.get(e, 0.0) for e in pinned.get(layer, ()))
    return total / len(layers)
