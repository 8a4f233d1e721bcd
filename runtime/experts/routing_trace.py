"""Routing traces: which experts each token chose per MoE layer, their JSON file and usage stats.

A trace is the input of every cache decision we make offline (policy replay, Belady's bound,
the planner's hot set), so it is plain data: one step per token position, each a mapping
layer -> the expert ids that position was routed to.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.files import atomic_write_text, read_json
from runtime.errors import EdgemoeError

TRACE_FORMAT = "edgemoe-routing-trace"
TRACE_VERSION = 1
# Statistics allocate a counter per (layer, expert); these bounds (far above any model llama.cpp
# runs) keep a hostile file from asking for gigabytes.
MAX_EXPERTS = 4096
MAX_LAYER = 4095
_LAYER_KEY = re.compile(r"[0-9]{1,9}", re.ASCII)

Step = dict[int, tuple[int, ...]]


class TraceError(EdgemoeError, ValueError):
    """A trace that does not match the format; the message names the file, step and layer."""


@dataclass(frozen=True)
class TraceSummary:
    """Headline numbers of a trace, for reports and for choosing a policy."""

    n_steps: int
    n_selections: int
    layers_per_step: float
    experts_per_layer_step: float
    reuse_rate: float  # share of selections also made by the previous step at the same layer
    top_share: float  # share of selections going to each layer's top 10% experts, averaged


@dataclass
class RoutingTrace:
    """Routing decisions of a run: `steps[t][layer]` are the experts token position t used."""

    n_experts: int
    moe_layers: tuple[int, ...]
    steps: list[Step] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.moe_layers = tuple(int(x) for x in self.moe_layers)
        if not 0 < self.n_experts <= MAX_EXPERTS:
            raise TraceError(f"n_experts must be in 1..{MAX_EXPERTS}, got {self.n_experts}")
        if list(self.moe_layers) != sorted(set(self.moe_layers)):
            raise TraceError(f"moe_layers must be increasing and unique, got {self.moe_layers}")
        if self.moe_layers and not 0 <= self.moe_layers[0] <= self.moe_layers[-1] <= MAX_LAYER:
            raise TraceError(f"moe_layers must be layer numbers in 0..{MAX_LAYER}")
        self._layers = frozenset(self.moe_layers)
        self.steps = [self._checked(step, i) for i, step in enumerate(self.steps)]

    @classmethod
    def from_steps(
        cls,
        steps: Iterable[Mapping[int, Iterable[int]]],
        n_experts: int,
        moe_layers: Iterable[int] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> RoutingTrace:
        """Build from raw steps; moe_layers default to every layer the steps mention."""
        raw = [{int(k): tuple(int(e) for e in v) for k, v in s.items()} for s in steps]
        layers = moe_layers if moe_layers is not None else sorted({k for s in raw for k in s})
        return cls(n_experts, tuple(layers), raw, dict(meta or {}))

    def _checked(self, step: Mapping[int, Iterable[int]], index: int) -> Step:
        out: Step = {}
        for layer in sorted(step):
            experts = tuple(int(e) for e in step[layer])
            where = f"step {index}, layer {layer}"
            if layer not in self._layers:
                raise TraceError(f"{where}: not one of the MoE layers {self.moe_layers}")
            if len(set(experts)) != len(experts):
                raise TraceError(f"{where}: repeated expert ids {experts}")
            bad = [e for e in experts if not 0 <= e < self.n_experts]
            if bad:
                raise TraceError(f"{where}: expert ids {bad} outside 0..{self.n_experts - 1}")
            out[int(layer)] = experts
        return out

    def append(self, step: Mapping[int, Iterable[int]]) -> None:
        self.steps.append(self._checked(step, len(self.steps)))

    def __len__(self) -> int:
        return len(self.steps)

    # --- statistics --------------------------------------------------------------------------
    def usage_counts(self) -> dict[int, list[int]]:
        """layer -> per-expert number of steps that selected it."""
        counts = {layer: [0] * self.n_experts for layer in self.moe_layers}
        for step in self.steps:
            for layer, experts in step.items():
                row = counts[layer]
                for e in experts:
                    row[e] += 1
        return counts

    def usage_frequencies(self) -> dict[int, list[float]]:
        """layer -> per-expert share of that layer's steps that selected it (sums to ~top_k).

        A share of steps rather than of selections, so "0.4" reads "used by 40% of tokens",
        which is what a hit rate of pinning that expert would be.
        """
        visits = {layer: 0 for layer in self.moe_layers}
        for step in self.steps:
            for layer in step:
                visits[layer] += 1
        return {
            layer: [c / visits[layer] if visits[layer] else 0.0 for c in row]
            for layer, row in self.usage_counts().items()
        }

    def top_experts(self, layer: int, k: int) -> tuple[int, ...]:
        """The k most used experts of a layer, most used first (lower id wins a tie)."""
        row = self.usage_counts()[layer]
        return tuple(sorted(range(self.n_experts), key=lambda e: (-row[e], e))[:k])

    def coverage(self, hot: Mapping[int, Iterable[int]]) -> float:
        """Share of all selections that a pinned set `hot` would serve."""
        hot_sets = {layer: set(experts) for layer, experts in hot.items()}
        served = total = 0
        for step in self.steps:
            for layer, experts in step.items():
                total += len(experts)
                served += sum(1 for e in experts if e in hot_sets.get(layer, ()))
        return served / total if total else 0.0

    def summary(self) -> TraceSummary:
        selections = reused = visits = 0
        previous: Step = {}
        for step in self.steps:
            for layer, experts in step.items():
                visits += 1
                selections += len(experts)
                before = set(previous.get(layer, ()))
                reused += sum(1 for e in experts if e in before)
            previous = step
        counts = self.usage_counts()
        n_top = max(1, self.n_experts // 10)
        shares = [
            sum(sorted(row, reverse=True)[:n_top]) / sum(row) for row in counts.values() if any(row)
        ]
        return TraceSummary(
            n_steps=len(self.steps),
            n_selections=selections,
            layers_per_step=visits / len(self.steps) if self.steps else 0.0,
            experts_per_layer_step=selections / visits if visits else 0.0,
            reuse_rate=reused / selections if selections else 0.0,
            top_share=sum(shares) / len(shares) if shares else 0.0,
        )

    # --- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "n_experts": self.n_experts,
            "moe_layers": list(self.moe_layers),
            "meta": self.meta,
            "steps": [{str(k): list(v) for k, v in step.items()} for step in self.steps],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "trace") -> RoutingTrace:
        if not isinstance(d, dict) or d.get("format") != TRACE_FORMAT:
            raise TraceError(f"{where}: not an edgemoe routing trace (format '{TRACE_FORMAT}')")
        if d.get("version") != TRACE_VERSION:
            raise TraceError(
                f"{where}: trace version {d.get('version')} is not supported "
                f"(this edgemoe reads {TRACE_VERSION})"
            )
        for key, typ in (("n_experts", int), ("moe_layers", list), ("steps", list)):
            if not isinstance(d.get(key), typ) or isinstance(d.get(key), bool):
                raise TraceError(f"{where}: field '{key}' must be {typ.__name__}")
        if not all(_is_int(x) for x in d["moe_layers"]):
            raise TraceError(f"{where}: field 'moe_layers' must be a list of layer numbers")
        meta = d.get("meta") or {}
        if not isinstance(meta, dict):
            raise TraceError(f"{where}: field 'meta' must be an object")
        steps = [_step_from_json(s, i, where) for i, s in enumerate(d["steps"])]
        try:
            return cls(d["n_experts"], tuple(d["moe_layers"]), steps, dict(meta))
        except TraceError as e:
            raise TraceError(f"{where}: {e}") from None

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically: a crash, a full disk or an I/O error leaves the old file (or
        none) and no temporary file, never half a trace; failures raise TraceError naming the
        path and the cause (ENOSPC reads "No space left on device")."""
        path = Path(path)
        text = json.dumps(self.to_dict(), separators=(",", ":")) + "\n"
        try:
            return atomic_write_text(path, text)
        except OSError as e:
            cause = e.strerror or type(e).__name__
            kept = "the previous file is unchanged" if path.exists() else "nothing was written"
            raise TraceError(f"{path}: could not write the trace ({cause}); {kept}") from None

    @classmethod
    def load(cls, path: str | Path) -> RoutingTrace:
        path = Path(path)
        try:
            data = read_json(path, TraceError)
        except (ValueError, RecursionError) as e:
            # read_json leaves these: not UTF-8 (UnicodeDecodeError is a ValueError), numbers
            # past Python's 4,300-digit limit, nesting deeper than the parser's recursion.
            reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise TraceError(f"{path}: not a readable JSON trace ({reason})") from None
        return cls.from_dict(data, where=str(path))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _step_from_json(step: Any, index: int, where: str) -> Step:
    """One step of a trace file: {"layer": [expert ids]}, checked for shape (ranges come later)."""
    if not isinstance(step, dict):
        raise TraceError(f"{where}: step {index} must map layer numbers to expert lists")
    out: Step = {}
    for key, experts in step.items():
        if not _LAYER_KEY.fullmatch(key):
            raise TraceError(f"{where}: step {index}: {key[:40]!r} is not a layer number")
        if int(key) in out:
            raise TraceError(f"{where}: step {index}: layer {int(key)} appears twice")
        if not isinstance(experts, list) or not all(_is_int(e) for e in experts):
            raise TraceError(f"{where}: step {index}, layer {key}: expert ids must be a list of "
                             "integers")
        out[int(key)] = tuple(experts)
    return out


def synthetic_trace(
    n_steps: int,
    n_experts: int,
    moe_layers: Sequence[int],
    top_k: int,
    *,
    zipf_s: float = 1.0,
    locality: float = 0.3,
    phase_len: int = 0,
    seed: int = 0,
) -> RoutingTrace:
    """A skewed trace for policy studies when no model run is at hand.

    Per layer, experts are drawn Zipf(zipf_s) over a random popularity order. With probability
    `locality` a slot instead repeats one of the previous token's experts (tokens of one word
    or phrase route alike). Every `phase_len` steps (0: never) the popularity order is drawn
    anew, the way a change of topic or language shifts which experts are hot.
    """
    if not 0 < top_k <= n_experts:
        raise ValueError(f"top_k must be in 1..{n_experts}, got {top_k}")
    rng = random.Random(seed)
    cum: list[float] = []
    total = 0.0
    for rank in range(n_experts):
        total += 1.0 / (rank + 1) ** zipf_s
        cum.append(total)
    order = {layer: rng.sample(range(n_experts), n_experts) for layer in moe_layers}
    previous: dict[int, tuple[int, ...]] = {}
    steps: list[Step] = []
    for t in range(n_steps):
        if phase_len and t and t % phase_len == 0:
            order = {layer: rng.sample(range(n_experts), n_experts) for layer in moe_layers}
        step: Step = {}
        for layer in moe_layers:
            chosen: list[int] = []
            while len(chosen) < top_k:
                before = [e for e in previous.get(layer, ()) if e not in chosen]
                if before and rng.random() < locality:
                    e = rng.choice(before)
                else:
                    e = order[layer][bisect.bisect_left(cum, rng.random() * total)]
                if e not in chosen:
                    chosen.append(e)
            step[layer] = tuple(chosen)
        previous = step
        steps.append(step)
    meta = {"synthetic": True, "zipf_s": zipf_s, "locality": locality, "phase_len": phase_len,
            "seed": seed, "top_k": top_k}
    return RoutingTrace(n_experts, tuple(moe_layers), steps, meta)
