"""The pinned set: which of the manifest's hot experts stay resident at a given capacity.

One owner, so `edgemoe run` and `edgemoe trace` (and anything else sizing a cache) pin the same
experts at the same budget. Pure arithmetic over plain data, tested without a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def pinned_set(
    hot_experts: Mapping[int, Sequence[int]],
    expert_bytes: Mapping[int, int],
    capacity_bytes: int,
    top_k: int,
) -> dict[int, tuple[int, ...]]:
    """The hot set trimmed to half the expert capacity, and always leaving room for one token's
    experts in every layer (the rest is the policy's working set); taken round-robin across
    layers in hotness order, so no layer starves."""
    room = min(capacity_bytes // 2, capacity_bytes - top_k * sum(expert_bytes.values()))
    queues = {k: list(v) for k, v in sorted(hot_experts.items()) if k in expert_bytes}
    pinned: dict[int, list[int]] = {}
    while room > 0 and any(queues.values()):
        for layer, q in queues.items():
            if q and room >= expert_bytes[layer]:
                pinned.setdefault(layer, []).append(q.pop(0))
                room -= expert_bytes[layer]
            elif q:
                q.clear()
    return {k: tuple(v) for k, v in pinned.items()}
