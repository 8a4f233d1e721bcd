"""Each MoE layer's router as the ONNX graph computes it: for pre-gating, and for the taps to
hand over the hidden state it reads.

Pre-gating (runtime/experts/pregate.py) ranks a later layer's experts from an earlier layer's
residual stream with the later router's matrix, the norm's weight folded in. On llama.cpp both
come from the GGUF and the C tap reads the residual; an ONNX build has no GGUF to read, so they
come from the graph the taps run: from each layer's chosen ids back through its top-k, its
softmax (or none: a top-k of the logits ranks the same), the router's MatMul and its weight,
to the RMS norm in front of it, whose input (or, fused with the residual add, whose sum output)
is the residual stream and whose scale is the norm weight. A graph of another shape (a
sigmoid router with a selection bias, a bias on the logits, another norm) is named in one line
and gets no prefetch: a guess that ranks differently from the router would only read waste.

Pure graph walking apart from `read_routers`, which reads the few small weights (a router is
n_embd x n_experts floats) from the data file beside the graph with plain reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# An RMS norm's fused forms in onnxruntime's contrib domain: (scale input, residual) where the
# residual is ("in", 0): the input, or ("out", 3): the fused add's sum.
_NORMS = {"SimplifiedLayerNormalization": (1, ("in", 0)),
          "SkipSimplifiedLayerNormalization": (2, ("out", 3))}
_PASS = {"Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze"}  # shape only
_DTYPES = {1: np.float32, 10: np.float16}  # onnx TensorProto FLOAT, FLOAT16


@dataclass(frozen=True)
class RouterSource:
    """Where one MoE layer's router finds its input and weights, by tensor name."""

    layer: int
    residual: str  # the residual stream the router's norm reads, [..., n_embd]
    weight: str  # the router MatMul's weight initializer, [n_embd, n_experts]
    norm: str  # the norm's scale initializer, [n_embd]


def router_sources(graph: Any, routing: Mapping[int, str]) -> dict[int, RouterSource] | str:
    """Per MoE layer (`routing`: layer -> its chosen ids tensor), where its router's input and
    weights are; or why this graph's routers are not the shape pre-gating ranks (one line)."""
    producer = {o: n for n in graph.node for o in n.output if o}
    inits = {t.name for t in graph.initializer}
    out: dict[int, RouterSource] = {}
    for layer, ids in sorted(routing.items()):
        found = _source(layer, ids, producer, inits)
        if isinstance(found, str):
            return f"layer {layer}: {found}"
        out[layer] = found
    return out


def _source(layer: int, ids: str, producer: dict[str, Any], inits: set[str]
            ) -> RouterSource | str:  # fmt: skip
    topk = producer.get(ids)
    if topk is None or topk.op_type != "TopK":
        return "its chosen experts do not come from a TopK"
    node = producer.get(topk.input[0])
    if node is not None and node.op_type == "Softmax":  # increasing: the same ranking
        node = producer.get(node.input[0])
    if node is None or node.op_type != "MatMul" or node.input[1] not in inits:
        what = node.op_type if node is not None else "a graph input"
        return f"the router's top-k reads {what}, not a softmax of a MatMul by a weight"
    weight = node.input[1]
    norm = producer.get(node.input[0])
    while norm is not None and norm.op_type in _PASS:
        norm = producer.get(norm.input[0])
    if norm is None or norm.op_type not in _NORMS:
        what = norm.op_type if norm is not None else "a graph input"
        return f"the router reads {what}, not an RMS norm"
    scale, (side, index) = _NORMS[norm.op_type]
    names = norm.input if side == "in" else norm.output
    if len(names) <= index or not names[index] or len(norm.input) <= scale \
            or norm.input[scale] not in inits:
        return f"its {norm.op_type} names no residual stream or no constant scale"
    return RouterSource(layer, names[index], weight, norm.input[scale])


def read_routers(graph: Any, folder: Path, sources: Mapping[int, RouterSource]
                 ) -> dict[int, np.ndarray]:  # fmt: skip
    """Each layer's router matrix with its norm's scale folded in, f32 [n_experts, n_embd]
    (pregate.RouterWeights.matrix), read from the graph's initializers (inline or in data files
    under `folder`). Raises ValueError for a weight of an unexpected type or size."""
    tensors = {t.name: t for t in graph.initializer}
    out: dict[int, np.ndarray] = {}
    for layer, src in sources.items():
        w = _array(tensors[src.weight], folder)
        g = _array(tensors[src.norm], folder).reshape(-1)
        if w.ndim != 2 or w.shape[0] != g.size:
            raise ValueError(f"layer {layer}: router {list(w.shape)} does not match its norm "
                             f"({g.size})")  # fmt: skip
        out[layer] = np.ascontiguousarray((w * g[:, None]).T, dtype=np.float32)
    return out


def _array(t: Any, folder: Path) -> np.ndarray:
    """One initializer's values (onnx.TensorProto), f32."""
    dtype = _DTYPES.get(int(t.data_type))
    if dtype is None:
        raise ValueError(f"{t.name}: element type {t.data_type}, not float or float16")
    shape = tuple(int(d) for d in t.dims)
    count = int(np.prod(shape)) if shape else 1
    if t.external_data:
        fields = {e.key: e.value for e in t.external_data}
        offset, length = int(fields.get("offset", 0)), count * np.dtype(dtype).itemsize
        path = folder / fields["location"]
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(raw) != length:
            raise ValueError(f"{t.name}: {path.name} ends before its {length} bytes")
        data = np.frombuffer(raw, dtype=dtype)
    elif t.raw_data:
        data = np.frombuffer(t.raw_data, dtype=dtype)
    elif dtype is np.float32:
        data = np.asarray(t.float_data, dtype=np.float32)
    else:  # float16 values stored as int32 bit patterns
        data = np.asarray(t.int32_data, dtype=np.uint16).view(np.float16)
    if data.size != count:
        raise ValueError(f"{t.name}: {data.size} values for shape {list(shape)}")
    return data.reshape(shape).astype(np.float32)
