"""What a plan predicts on the device: which experts are pruned or hot, the hit rate, tok/s.

Shares come from measured routing when there is some; the speed model is a roofline over the
profile's memory bandwidth, storage read rate and compute, documented on `estimates`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from device_profiles import DeviceProfile
from packager.plan.expert_usage import ExpertUsage
from packager.plan.shape import ModelShape
from packager.plan.sizes import Sizes
from runtime.experts.pinning import ranked, take

PREFILL_BATCH = 512  # llama.cpp's default micro-batch


def pruned_set(shape: ModelShape, usage: ExpertUsage | None,
               n_prune: int) -> dict[int, tuple[int, ...]]:
    """The least-used experts of each layer (highest ids first without usage: arbitrary)."""
    if not n_prune:
        return {}
    out: dict[int, tuple[int, ...]] = {}
    for layer in shape.moe_layers:
        shares = usage.shares(layer, shape.n_experts) if usage else (0.0,) * shape.n_experts
        order = sorted(range(shape.n_experts), key=lambda e: (shares[e], -e))
        out[layer] = tuple(sorted(order[:n_prune]))
    return out


@dataclass(frozen=True)
class HotSet:
    """The experts a plan keeps resident, each layer's hottest first with its share of the
    layer's routings, their bytes, and each layer's expected hit rate."""

    experts: dict[int, tuple[int, ...]]
    bytes: int
    hit_per_layer: dict[int, float]
    shares: dict[int, tuple[float, ...]] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return sum(self.hit_per_layer.values()) / len(self.hit_per_layer)


def kept_shares(shape: ModelShape, usage: ExpertUsage | None,
                pruned: dict[int, tuple[int, ...]]) -> dict[int, dict[int, float]]:
    """Per layer, each surviving expert's share of selections, renormalised over survivors
    (assumes the router spreads a pruned expert's tokens like the rest)."""
    out = {}
    for layer in shape.moe_layers:
        shares = (usage or ExpertUsage({})).shares(layer, shape.n_experts)
        kept = [e for e in range(shape.n_experts) if e not in pruned.get(layer, ())]
        total = sum(shares[e] for e in kept) or 1.0
        out[layer] = {e: shares[e] / total for e in kept}
    return out


def hot_set(s: Sizes, budget: int, shares: dict[int, dict[int, float]],
            measured: bool) -> HotSet:
    """Every expert if all fit; else the runtime's own trim rule (`runtime.experts.pinning`)
    over every kept expert: with usage the best selection-share per byte first, across layers;
    without usage round-robin across layers. Either way each layer is listed hottest first, so
    a runtime whose budget holds less pins the hottest of them."""
    ordered = {layer: tuple(sorted(d, key=lambda e: (-d[e], e))) for layer, d in shares.items()}
    known = {layer: tuple(shares[layer][e] for e in v) for layer, v in ordered.items()}
    if s.resident <= budget:
        return HotSet(ordered, s.experts_total, dict.fromkeys(shares, 1.0),
                      known if measured else {})
    room = budget - s.minimum
    order = ranked(ordered, known if measured else None, s.expert) if room > 0 else []
    experts = take(order, s.expert, room)
    used = sum(len(v) * s.expert[layer] for layer, v in experts.items())
    hit = {layer: sum(shares[layer][e] for e in experts.get(layer, ())) for layer in shares}
    kept = {layer: tuple(shares[layer][e] for e in v) for layer, v in experts.items()}
    return HotSet(experts, used, hit, kept if measured else {})


def estimates(shape: ModelShape, profile: DeviceProfile, s: Sizes, hot: HotSet,
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
    decode = 1.0 / sum(decode_seconds(shape, profile, s, hot))
    batch = min(PREFILL_BATCH, ctx)
    compute = 2 * shape.active_params * batch / (profile.compute_gflops * 1e9)
    memory = (s.dense + s.experts_total) / bw
    cold = (s.experts_total - hot.bytes) / disk
    return decode, batch / (max(compute, memory) + cold)


def decode_seconds(shape: ModelShape, profile: DeviceProfile, s: Sizes,
                   hot: HotSet) -> tuple[float, float]:
    """(memory time, storage time) of one decoded token; see `estimates`."""
    touched = s.dense + s.stream + s.kv / 2
    miss = sum(shape.top_k * (1 - hot.hit_per_layer[layer]) * b for layer, b in s.expert.items())
    return (touched / (profile.memory_bandwidth_gb_s * 1e9),
            miss / (profile.storage_read_mb_s * 1e6))
