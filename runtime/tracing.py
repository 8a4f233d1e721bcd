"""Record a text's routing trace through llama.cpp and replay cache policies on it.

Routing of a token does not depend on how the text is batched (teacher forcing), so the text is
fed in context-sized chunks and every token position becomes one trace step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.backends.base import EngineConfig
from runtime.backends.registry import backend_for, format_for, open_backend
from runtime.budget import parse_budget
from runtime.bundles.open import open_bundle
from runtime.errors import BudgetError, BundleError
from runtime.experts.pinning import pinned_set
from runtime.experts.policy import DEFAULT_POLICY
from runtime.experts.prefetch import Guesses, PrefetchTrace
from runtime.experts.pregate import Pregate, next_layers, pregate_refusal, read_routers
from runtime.experts.replay import Row, render_replay, replay
from runtime.experts.routing_probe import RoutingProbe
from runtime.experts.routing_trace import RoutingTrace, TraceError


@dataclass(frozen=True)
class TraceReport:
    trace: RoutingTrace
    rows: list[Row]
    capacities: dict[str, int]  # budget text -> expert capacity in bytes

    def render(self) -> str:
        return render_replay(self.rows)


def record_trace(
    bundle: str | Path,
    text: str,
    *,
    chunk: int = 256,
    max_tokens: int = 4096,
    threads: int | None = None,
    backend: str | None = None,
    wait_policy: str | None = None,
) -> RoutingTrace:
    """Every token's routing of `text` (its first max_tokens), decoded in chunks on a fresh
    context each; threads, backend and wait_policy as `LoadOptions` says."""
    opened = open_bundle(bundle, fmt=format_for(backend))
    m = opened.manifest
    probe = RoutingProbe()
    engine = open_backend(
        EngineConfig(
            opened.model_path,
            n_ctx=chunk,
            n_threads=threads or os.cpu_count() or 1,
            n_batch=chunk,
            n_ubatch=chunk,
            wait_policy=wait_policy,
        ),
        probe.on_event,
        kind=backend_for(opened.build.format),
    )
    try:
        ids = engine.tokenize(text)[:max_tokens]
        for start in range(0, len(ids), chunk):
            engine.reset()
            probe.begin_batch()
            engine.decode(ids[start : start + chunk], all_outputs=True)
    finally:
        engine.close()
    meta = {"bundle": str(opened.path), "tokens": len(probe.rows), "chunk": chunk}
    return RoutingTrace.from_steps(probe.rows, m.shape.n_experts, m.shape.moe_layers, meta)


def record_prefetch_trace(
    bundle: str | Path,
    text: str,
    *,
    sources: Sequence[str] = ("ffn_inp", "l_out"),
    depth: int = 2,
    chunk: int = 256,
    max_tokens: int = 4096,
    threads: int | None = None,
) -> PrefetchTrace:
    """A routing trace plus pre-gating guesses (runtime/experts/pregate.py) from each hidden state
    in `sources` (llama.cpp graph names: `ffn_inp` is a layer's residual before its MoE block,
    `l_out` its output), for the 1..depth next MoE layers; for
    `runtime.experts.prefetch.evaluate`."""
    from runtime.backends.llama_cpp.backend import LlamaBackend

    opened = open_bundle(bundle, fmt="gguf")
    m = opened.manifest
    layers = list(m.shape.moe_layers)
    refused = pregate_refusal(opened.model_path)
    if refused is not None:
        raise BundleError(f"{opened.model_path}: no prefetch trace: {refused}")
    pregate = Pregate(read_routers(opened.model_path, layers))
    keep = 2 * m.shape.top_k
    guesses: Guesses = {src: {d: [] for d in range(1, depth + 1)} for src in sources}
    base = [0]

    def on_hidden(layer: int, kind: str, rows: np.ndarray) -> None:
        if layer not in layers:
            return
        for d, target in enumerate(next_layers(layers, layer, depth), start=1):
            out = guesses[kind][d]
            ranked = pregate.rank(target, rows, keep).tolist()
            while len(out) < base[0] + len(ranked):
                out.append({})
            for i, r in enumerate(ranked):
                out[base[0] + i][target] = tuple(r)

    probe = RoutingProbe()
    cfg = EngineConfig(opened.model_path, n_ctx=chunk, n_threads=threads or os.cpu_count() or 1,
                       n_batch=chunk, n_ubatch=chunk)
    engine = LlamaBackend(cfg, probe.on_event, extra_taps=tuple(sources),
                          tensor_observer=on_hidden)
    try:
        ids = engine.tokenize(text)[:max_tokens]
        for start in range(0, len(ids), chunk):
            engine.reset()
            probe.begin_batch()
            base[0] = start
            engine.decode(ids[start : start + chunk], all_outputs=True)
    finally:
        engine.close()
    meta = {"bundle": str(opened.path), "tokens": len(probe.rows), "chunk": chunk}
    trace = RoutingTrace.from_steps(probe.rows, m.shape.n_experts, layers, meta)
    for by_d in guesses.values():
        for rows in by_d.values():
            rows.extend({} for _ in range(len(trace) - len(rows)))
    sizes = {x.layer: x.expert_bytes for x in opened.build.expert_layers}
    return PrefetchTrace(trace, m.shape.top_k, sizes, guesses)


def replay_budgets(
    bundle: str | Path,
    trace: RoutingTrace,
    budgets: Sequence[str],
    policies: Sequence[str] = ("lru", "lfu", "lrfu"),
    pin_hot: bool = True,
    backend: str | None = None,
) -> TraceReport:
    """Hit rate of each policy (and Belady's optimum) at each budget, sized and pinned exactly
    as the runtime would (`runtime.experts.pinning.pinned_set`)."""
    opened = open_bundle(bundle, fmt=format_for(backend))
    m = opened.manifest
    expert_bytes = {x.layer: x.expert_bytes for x in opened.build.expert_layers}
    _check_shape(trace, m.shape.n_experts, expert_bytes, str(opened.path))
    capacities: dict[str, int] = {}
    for b in budgets:
        spec = parse_budget(b)
        if spec is None or spec.fraction is None:
            raise BudgetError(f"trace budgets are fractions of expert bytes ('25%'), got '{b}'")
        capacities[b] = int(spec.fraction * opened.expert_bytes_total)
    rows: list[Row] = []
    for cap in capacities.values():
        pinned = (pinned_set(m.hot_experts, expert_bytes, cap, m.shape.top_k, m.hot_shares)
                  if pin_hot else None)
        rows += replay(trace, list(policies), [cap], expert_bytes, pinned)
    return TraceReport(trace, rows, capacities)


def _check_shape(trace: RoutingTrace, n_experts: int, expert_bytes: dict[int, int],
                 where: str) -> None:
    """A trace recorded on another model (other MoE layers or expert count) cannot be replayed
    against this bundle; say so up front instead of failing inside the cache (ValueError)."""
    if trace.n_experts != n_experts:
        raise TraceError(f"trace has {trace.n_experts} experts per layer but the bundle {where} "
                         f"has {n_experts}: it was recorded on another model")
    foreign = sorted(set(trace.moe_layers) - set(expert_bytes))
    if foreign:
        shown = ", ".join(map(str, foreign[:8])) + (" ..." if len(foreign) > 8 else "")
        raise TraceError(f"trace has MoE layers the bundle {where} does not ({shown}; it has "
                         f"{len(expert_bytes)}): it was recorded on another model")


__all__ = [
    "DEFAULT_POLICY", "TraceReport", "record_prefetch_trace", "record_trace", "replay_budgets",
]
