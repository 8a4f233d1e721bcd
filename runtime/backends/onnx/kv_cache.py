"""The ONNX backend's KV cache written in place.

A causal layer's attention is onnxruntime's GroupQueryAttention (packager/onnx_export/blocks.py).
Given a past as long as the whole context whose memory is also bound as the node's present, the
node writes each run's keys and values at their positions and reads the positions before them
(`seqlens_k`): the cache is never copied. Fed a past of exactly the positions so far instead,
it returns a fresh past+new tensor every run, a copy of the whole cache per token, as every
other attention node does (a head sink, a window, a value width of its own); the backend feeds
those presents back (backend.py). A qwen3moe-large int8 decode step read 1.08-1.25x against
the copying graph (paired, three runs; README).

The buffers are numpy zeros: the pages behind positions never reached are never touched, so
resident memory grows with the positions used, as the copied cache's did. Cutting the cache
back (`truncate`) moves the position only: the node never reads past `seqlens_k`.

A one-token step runs on an IOBinding kept for its session, the caches bound once, and writes
its logits into a buffer it hands over (`into`): binding 2 x layers caches anew every token
and wrapping each of them again as an output cost ~0.3 ms of a 5 ms qwen3moe-large int4 step
(paired in one process: 1.04-1.08x decode). A batch of several tokens binds afresh and lets the
binding go after its run, so nothing the size of a prompt's outputs is held between runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_GQA = "GroupQueryAttention"
# A stage's bound pasts (name -> (OrtValue, present name)) and the outputs it fetches.
Stage = tuple[dict[str, tuple[Any, str]], list[str]]


def in_place_pairs(graph: Any) -> dict[str, str]:  # onnx.GraphProto
    """past input -> present output, for each KV cache that a GroupQueryAttention node reads as
    a graph input (its inputs 3 and 4) and writes as a graph output (its outputs 1 and 2)."""
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    pairs: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != _GQA or len(node.input) < 5 or len(node.output) < 3:
            continue
        for past, present in zip(node.input[3:5], node.output[1:3], strict=True):
            if past in inputs and present in outputs:
                pairs[past] = present
    return pairs


@dataclass
class InPlaceKV:
    """One context-long buffer per in-place past: `bound[past] = (OrtValue, present name)`,
    bound as both (run_bound)."""

    bound: dict[str, tuple[Any, str]]
    presents: frozenset[str] = field(init=False)  # written in place: never fetched
    _stages: dict[tuple[tuple[str, ...], tuple[str, ...]], Stage] = field(init=False, repr=False)
    # Each session's binding for one-token steps, its caches bound once (Kept).
    _kept: dict[Any, Kept] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.presents = frozenset(present for _, present in self.bound.values())
        self._stages = {}
        self._kept = {}

    def kept(self, session: Any, bound: Mapping[str, tuple[Any, str]]) -> Kept:
        """`session`'s kept binding with `bound` (all of this cache's pasts, or a stage's)
        bound as inputs and presents, made on its first one-token step."""
        if session not in self._kept:
            self._kept[session] = Kept(session, bound)
        return self._kept[session]

    @classmethod
    def allocate(
        cls, ort: Any, pairs: Mapping[str, str], shapes: Mapping[str, Sequence[Any]],
        n_ctx: int, dtype: Any,
    ) -> InPlaceKV:  # fmt: skip
        """Buffers [1, kv heads, n_ctx, head dim] for `pairs` (the graph input's shape gives
        the heads and width)."""
        bound = {}
        for past, present in pairs.items():
            shape = [d if isinstance(d, int) else 1 for d in shapes[past]]
            shape[2] = n_ctx
            buffer = np.zeros(shape, dtype=dtype)
            bound[past] = (ort.OrtValue.ortvalue_from_numpy(buffer), present)
        return cls(bound)

    def stage(self, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Stage:
        """(the in-place pasts among a stage's `inputs`, its `outputs` less the presents
        written in place), worked out once per stage rather than on every token."""
        key = (inputs, outputs)
        if key not in self._stages:
            self._stages[key] = ({n: self.bound[n] for n in inputs if n in self.bound},
                                 [n for n in outputs if n not in self.presents])
        return self._stages[key]


class Kept:
    """An IOBinding kept across one-token runs of one session: the bound caches stay bound,
    the small feeds and the outputs are bound again each run (a name bound again keeps its
    place among the outputs, so `order` mirrors onnxruntime's)."""

    def __init__(self, session: Any, bound: Mapping[str, tuple[Any, str]]) -> None:
        self.io = session.io_binding()
        self.order: list[str] = []  # output names in the order first bound
        for past, (value, present) in bound.items():
            self.io.bind_ortvalue_input(past, value)
            self.io.bind_ortvalue_output(present, value)
            self.order.append(present)

    def bind_output(self, name: str, value: Any = None) -> None:
        if value is None:
            self.io.bind_output(name)
        else:
            self.io.bind_ortvalue_output(name, value)
        if name not in self.order:
            self.order.append(name)


def run_bound(
    session: Any, names: Sequence[str], feeds: Mapping[str, np.ndarray],
    bound: Mapping[str, tuple[Any, str]], keep: InPlaceKV | None = None,
    into: Mapping[str, np.ndarray] | None = None,
) -> list[np.ndarray]:  # fmt: skip
    """session.run(names, feeds) with each `bound` past's buffer bound as both that input and
    its present output (written in place, not returned); `names` are the outputs wanted back.
    `keep` (one-token steps): the cache that keeps `session`'s binding, to run on it.
    `into`: outputs written into the given arrays (shape and type exactly the output's),
    returned as they are."""
    if not bound:
        return list(session.run(list(names), dict(feeds)))
    import onnxruntime as ort

    into = into or {}
    binding = keep.kept(session, bound) if keep is not None else Kept(session, bound)
    io = binding.io
    for name, value in feeds.items():
        if name not in bound:
            io.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in names:
        target = into.get(name)
        value = None if target is None else ort.OrtValue.ortvalue_from_numpy(target)
        binding.bind_output(name, value)
    session.run_with_iobinding(io)
    if all(name in into for name in names):  # the usual step: nothing to fetch back
        return [into[name] for name in names]
    outputs = io.get_outputs()
    return [into[name] if name in into else outputs[binding.order.index(name)].numpy()
            for name in names]  # fmt: skip
