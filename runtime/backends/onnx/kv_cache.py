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

    def __post_init__(self) -> None:
        self.presents = frozenset(present for _, present in self.bound.values())
        self._stages = {}

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


def run_bound(
    session: Any, names: Sequence[str], feeds: Mapping[str, np.ndarray],
    bound: Mapping[str, tuple[Any, str]],
) -> list[np.ndarray]:  # fmt: skip
    """session.run(names, feeds) with each `bound` past's buffer bound as both that input and
    its present output (written in place, not returned); `names` are the outputs wanted back."""
    if not bound:
        return list(session.run(list(names), dict(feeds)))
    io = session.io_binding()
    for name, value in feeds.items():
        if name not in bound:
            io.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in names:
        io.bind_output(name)
    for past, (value, present) in bound.items():
        io.bind_ortvalue_input(past, value)
        io.bind_ortvalue_output(present, value)
    session.run_with_iobinding(io)
    return [v.numpy() for v in io.get_outputs()[: len(names)]]
