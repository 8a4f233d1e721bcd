"""A thin graph builder over ``onnx.helper``: path-named nodes, shared constants, initializers.

Node names follow onnxruntime-genai's builder convention (``/model/layers.0/moe/experts/...``)
so a profile or a Netron view reads like the model's module tree; every output is named
``<node>/output_<i>``. Constants (shapes, epsilons) are small initializers kept inside
model.onnx; weights come from :mod:`packager.onnx_export.external_data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import GraphProto, TensorProto, ValueInfoProto, helper, numpy_helper

from packager.errors import PackError

MS_DOMAIN = "com.microsoft"


class Graph:
    """Collects nodes, initializers and graph inputs/outputs in build order."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[ValueInfoProto] = []
        self.outputs: list[ValueInfoProto] = []
        self._node_names: set[str] = set()
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self.domains: set[str] = set()
        self._renamed: dict[str, str] = {}  # tensor -> the graph output it became
        self.value_infos: list[ValueInfoProto] = []

    def scope(self, prefix: str) -> Scope:
        return Scope(self, prefix)

    def add_initializer(self, proto: TensorProto) -> str:
        self.initializers.append(proto)
        return proto.name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A small constant tensor (deduplicated by value)."""
        a = np.asarray(value, dtype=dtype)
        key = (a.dtype.str, a.tobytes(), a.shape)
        if key not in self._consts:
            name = f"/const/{a.dtype.name}_{len(self._consts)}"
            self.initializers.append(numpy_helper.from_array(a, name))
            self._consts[key] = name
        return self._consts[key]

    def add_input(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def add_output(
        self, name: str, source: str, elem: int, shape: Sequence[int | str], rename: bool = True
    ) -> None:
        """Expose `source` under the graph output `name`: the tensor itself renamed, where a
        node of this graph makes it and no other output took it, else through an Identity.
        onnxruntime runs an output's Identity as a copy (the whole KV cache, every step: 16
        copies of ~14 us a token on qwen3moe-large); `rename=False` keeps the Identity. Call it
        once the nodes that read `source` are built (the model's outputs come last)."""
        source = self._renamed.get(source, source)
        taken = source in self._renamed.values()
        maker = next((n for n in self.nodes if source in n.output), None)
        if not rename or taken or maker is None:
            self.op("Identity", [source], f"/model/outputs/{name}", out=name)
        else:
            self._renamed[source] = name
            for node in self.nodes:
                for field in (node.input, node.output):
                    for k, t in enumerate(field):
                        if t == source:
                            field[k] = name
            for v in self.value_infos:
                if v.name == source:
                    v.name = name
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        n_out: int = 1,
        out: str | None = None,
        domain: str = "",
        **attrs: Any,
    ) -> Any:
        if name in self._node_names:
            raise PackError(f"internal: duplicate ONNX node name {name}")
        self._node_names.add(name)
        outputs = [out] if out else [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outputs, name=name, domain=domain, **attrs)
        )
        if domain:
            self.domains.add(domain)
        return outputs[0] if n_out == 1 else outputs

    def float_output(self, name: str) -> None:
        """Declare a contrib op's output float: onnx's shape inference knows no com.microsoft
        op, and the runtime's staged runs type their borders from it (stages.py)."""
        self.value_infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))

    def to_proto(self, name: str) -> GraphProto:
        return helper.make_graph(
            self.nodes, name, self.inputs, self.outputs, initializer=self.initializers,
            value_info=self.value_infos,
        )


class Scope:
    """A naming prefix over a Graph plus the handful of composite ops every block uses."""

    def __init__(self, graph: Graph, prefix: str) -> None:
        self.g = graph
        self.prefix = prefix.rstrip("/")

    def child(self, name: str) -> Scope:
        return Scope(self.g, f"{self.prefix}/{name}")

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, **kw: Any) -> Any:
        return self.g.op(op_type, inputs, f"{self.prefix}/{name or op_type}", **kw)

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        return self.g.const(value, dtype)

    def f32(self, value: Any) -> str:
        return self.g.const(value, np.float32)

    # ----- composites -----------------------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int], name: str = "Reshape") -> str:
        return self.op("Reshape", [x, self.const(list(shape))], name)

    def transpose(self, x: str, perm: Sequence[int], name: str = "Transpose") -> str:
        return self.op("Transpose", [x], name, perm=list(perm))

    def unsqueeze(self, x: str, axes: Sequence[int], name: str = "Unsqueeze") -> str:
        return self.op("Unsqueeze", [x, self.const(list(axes))], name)

    def split(self, x: str, sizes: Sequence[int], axis: int, name: str = "Split") -> list[str]:
        return self.op("Split", [x, self.const(list(sizes))], name, n_out=len(sizes), axis=axis)

    def slice(self, x: str, start: int, end: int, axis: int, name: str = "Slice") -> str:
        c = self.const
        return self.op("Slice", [x, c([start]), c([end]), c([axis])], name)

    def silu(self, x: str, name: str = "act") -> str:
        """x * sigmoid(x): transformers' SiLU, written out so any runtime can fuse or not."""
        sig = self.op("Sigmoid", [x], f"{name}/Sigmoid")
        return self.op("Mul", [x, sig], f"{name}/Mul")

    def rms_norm(self, x: str, weight: str, eps: float, name: str = "norm") -> str:
        """x / sqrt(mean(x^2) + eps) * weight: transformers' RMSNorm, written in the form
        onnxruntime's optimizer fuses into one SimplifiedLayerNormalization node: six nodes
        become one, and per-node cost is a large share of a small model's decode (695 -> 505
        nodes on qwen3moe-medium). A norm after a residual Add is `skip_rms_norm`."""
        sq = self.op("Pow", [x, self.f32(2.0)], f"{name}/Square")
        mean = self.op("ReduceMean", [sq, self.const([-1])], f"{name}/ReduceMean", keepdims=1)
        var = self.op("Add", [mean, self.f32(eps)], f"{name}/AddEps")
        std = self.op("Sqrt", [var], f"{name}/Sqrt")
        normed = self.op("Div", [x, std], f"{name}/Normalize")
        return self.op("Mul", [normed, weight], f"{name}/Scale")

    def skip_rms_norm(
        self, x: str, skip: str, weight: str, eps: float, name: str = "norm"
    ) -> tuple[str, str]:
        """(rms_norm(x + skip), x + skip) in one onnxruntime SkipSimplifiedLayerNormalization:
        a residual Add and the RMSNorm after it. onnxruntime's optimizer fuses the norm alone
        (`rms_norm`) but not the Add before it (measured: 16 Adds left on qwen3moe-large)."""
        normed, _, _, total = self.op("SkipSimplifiedLayerNormalization", [x, skip, weight],
                                      name, n_out=4, domain=MS_DOMAIN, epsilon=eps)  # fmt: skip
        node = self.g.nodes[-1]
        node.output[1] = node.output[2] = ""  # mean and 1/std: not asked for, not computed
        self.g.float_output(normed)
        self.g.float_output(total)
        return normed, total
