"""One ONNX graph run as a chain of sessions cut before each MoE layer's experts.

onnxruntime has no callback inside a run, so a whole-graph run only reports routing after every
layer's experts were already read: a prompt batch touches all the experts it routes to, in every
layer, before the expert cache hears of any (a 512-token prompt maps nearly all of them). Cut
into stages, the graph stops where llama.cpp's routing tap stops it: stage k ends with layer k's
router, the runtime admits (and verifies) exactly the experts the batch needs for that layer,
evicting others, and stage k+1 starts with those experts' kernel. The budget is then exceeded by
at most one layer's surplus during a prompt, as on llama.cpp (runtime/experts/pager.py).

The cut is computed from the graph alone: every node that reads an expert stack (an initializer
the manifest pages: `expert_tensors`) opens a new stage for its layer, and a stage's inputs and
outputs are the tensors that cross its borders. Each stage is its own InferenceSession over the
same external-data file, so every weight is still mapped once (by the one stage that uses it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.backends.onnx.kv_cache import InPlaceKV, run_bound

_LAYER = re.compile(r"layers\.(\d+)\.")
_ROUTING = re.compile(r"^routing\.(\d+)$")


@dataclass(frozen=True)
class StagePlan:
    """Where the graph is cut: node indices per stage, the layer whose experts each stage after
    the first opens with, and each stage's input and output tensor names."""

    nodes: tuple[tuple[int, ...], ...]
    layers: tuple[int | None, ...]  # stage k > 0 starts with layer[k]'s experts; stage 0: None
    inputs: tuple[tuple[str, ...], ...]
    outputs: tuple[tuple[str, ...], ...]
    routing: dict[int, str]  # MoE layer -> the tensor holding its chosen expert ids


def plan_stages(graph: Any, expert_tensors: Collection[str]) -> StagePlan | None:  # onnx.GraphProto
    """Cut `graph` before the first node of each layer that reads one of `expert_tensors`.

    Pure: reads names only. None when there is nothing to cut (no expert reader found, or the
    routing outputs do not name the layers being cut).
    """
    experts = set(expert_tensors)
    nodes = list(graph.node)
    routing: dict[int, str] = {}
    for node in nodes:  # routing.i is an Identity of the router's ids (model.py add_output)
        if node.op_type == "Identity" and (m := _ROUTING.match(node.output[0])):
            routing[int(m.group(1))] = node.input[0]
    cuts: list[tuple[int, int]] = []  # (node index, layer)
    seen: set[int] = set()
    for i, node in enumerate(nodes):
        if not experts.intersection(node.input):
            continue
        layer = next((int(m.group(1)) for t in node.input if t in experts
                      and (m := _LAYER.search(t))), None)  # fmt: skip
        if layer is None or layer in seen:
            continue
        if layer not in routing:
            return None
        seen.add(layer)
        cuts.append((i, layer))
    if not cuts:
        return None
    bounds = [0, *(i for i, _ in cuts), len(nodes)]
    groups = [tuple(range(bounds[k], bounds[k + 1])) for k in range(len(bounds) - 1)]
    produced_in: dict[str, int] = {}
    for k, group in enumerate(groups):
        for i in group:
            for t in nodes[i].output:
                produced_in[t] = k
    consumed_in: dict[str, set[int]] = {}
    for k, group in enumerate(groups):
        for i in group:
            for t in nodes[i].input:
                if t:
                    consumed_in.setdefault(t, set()).add(k)
    graph_outputs = {o.name for o in graph.output}
    inits = {t.name for t in graph.initializer}  # read inside the stage that uses them
    ins, outs = [], []
    for k in range(len(groups)):
        needed = sorted(t for t, ks in consumed_in.items()
                        if k in ks and t not in inits and produced_in.get(t) != k)  # fmt: skip
        ins.append(tuple(t for t in needed if t in produced_in or _is_graph_input(graph, t)))
        out = sorted(t for t, p in produced_in.items() if p == k and (
            t in graph_outputs or any(c > k for c in consumed_in.get(t, ()))))  # fmt: skip
        outs.append(tuple(out))
    # The router's ids of the layer the next stage opens with leave the stage that made them.
    for k, (_, layer) in enumerate(cuts):
        ids = routing[layer]
        if produced_in.get(ids) is not None and ids not in outs[produced_in[ids]]:
            p = produced_in[ids]
            outs[p] = (*outs[p], ids)
        if produced_in.get(ids, k + 1) > k:
            return None  # the ids are made after the cut: cannot admit before the kernel
    return StagePlan(tuple(groups), (None, *(layer for _, layer in cuts)), tuple(ins),
                     tuple(outs), routing)  # fmt: skip


def _is_graph_input(graph: Any, name: str) -> bool:
    return any(i.name == name for i in graph.input)


def stage_models(model: Any, plan: StagePlan) -> list[Any]:
    """One ModelProto per stage: its nodes, the initializers they read (external ones still
    point into the same data file), and typed borders (types from shape inference)."""
    from onnx import helper

    graph = model.graph
    types = _tensor_types(model)
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input}
    graph_outputs = {o.name: o for o in graph.output}
    out = []
    for k, group in enumerate(plan.nodes):
        nodes = [graph.node[i] for i in group]
        used = {t for n in nodes for t in n.input if t in inits}
        inputs = [graph_inputs[t] if t in graph_inputs else _value(helper, t, types)
                  for t in plan.inputs[k]]  # fmt: skip
        # Overridable initializers (fused expert stacks) stay graph inputs of their stage.
        inputs += [graph_inputs[t] for t in sorted(used) if t in graph_inputs]
        outputs = [graph_outputs[t] if t in graph_outputs else _value(helper, t, types)
                   for t in plan.outputs[k]]  # fmt: skip
        g = helper.make_graph(nodes, f"{graph.name} stage {k}", inputs, outputs,
                              initializer=[inits[t] for t in sorted(used)])  # fmt: skip
        stage = helper.make_model(g, opset_imports=list(model.opset_import),
                                  ir_version=model.ir_version,
                                  producer_name=model.producer_name)  # fmt: skip
        out.append(stage)
    return out


def _tensor_types(model: Any) -> dict[str, Any]:
    """Type (element type and rank, dims left symbolic) of every tensor in the graph, from shape
    inference over the graph alone (the weights stay on disk)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    return {v.name: v for v in (*g.value_info, *g.input, *g.output) if v.type.tensor_type.elem_type}


def _value(helper: Any, name: str, types: dict[str, Any]) -> Any:
    if name not in types:
        raise ValueError(f"no element type known for {name}")
    v = types[name]
    t = v.type.tensor_type
    rank = len(t.shape.dim) if t.HasField("shape") else None
    dims = None if rank is None else [f"{name}_{i}" for i in range(rank)]
    return helper.make_tensor_value_info(name, t.elem_type, dims)


class Stopped(Exception):
    """`admit` asked to stop before a layer's experts (one could not be brought in)."""


class GraphSessions:
    """The whole graph's interface over the sessions that run it (the stages, or one tapped
    session: taps.py)."""

    def __init__(self, sessions: Sequence[Any], graph_io: tuple[list[str], list[str]]) -> None:
        self.sessions = list(sessions)
        self._graph_inputs, self._graph_outputs = graph_io

    def inputs(self) -> dict[str, Any]:
        """The whole graph's inputs (onnxruntime NodeArgs), whichever stage reads them."""
        args = {a.name: a for s in self.sessions for a in s.get_inputs()}
        return {n: args[n] for n in self._graph_inputs if n in args}

    def outputs(self) -> list[Any]:
        """The whole graph's outputs, in its order."""
        args = {a.name: a for s in self.sessions for a in s.get_outputs()}
        return [args[n] for n in self._graph_outputs if n in args]


class StagedRunner(GraphSessions):
    """Runs the stages in order, handing each layer's routing to `admit` before its experts;
    `admit` returning True stops the run there (raises Stopped)."""

    def __init__(
        self, sessions: Sequence[Any], plan: StagePlan, graph_io: tuple[list[str], list[str]]
    ) -> None:
        super().__init__(sessions, graph_io)
        self.plan = plan

    def run(
        self,
        fetch: Sequence[str],
        feeds: dict[str, np.ndarray],
        admit: Callable[[int, np.ndarray], bool | None],
        kv: InPlaceKV | None = None,
        keep: bool = False,
        into: dict[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """`fetch` from the last run of the chain; `kv`'s pasts are bound in place in the stage
        that reads them (kv_cache.py), their presents written there, not fetched. `keep` (a
        one-token step): each stage runs on `kv`'s kept binding; `into`: outputs written into
        the given arrays (kv_cache.run_bound)."""
        env: dict[str, np.ndarray] = dict(feeds)
        for k, session in enumerate(self.sessions):
            layer = self.plan.layers[k]
            if layer is not None and admit(layer, env[self.plan.routing[layer]]):
                raise Stopped(f"stopped before layer {layer}'s experts")
            if kv is None:
                bound, names = {}, list(self.plan.outputs[k])
            else:
                bound, names = kv.stage(self.plan.inputs[k], self.plan.outputs[k])
            inputs = {t: env[t] for t in self.plan.inputs[k] if t not in bound}
            kept = kv if keep else None
            wanted = {t: a for t, a in (into or {}).items() if t in names}
            env.update(zip(names, run_bound(session, names, inputs, bound, kept, wanted),
                           strict=True))  # fmt: skip
        return [env[name] for name in fetch]


def staged_runner(
    model: Any, expert_tensors: Collection[str], make_session: Callable[[bytes], Any]
) -> StagedRunner | None:
    """Stages of `model` (a ModelProto without its weights) as sessions made by
    `make_session(stage bytes)`, or None when the graph cannot be cut before its experts."""
    plan = plan_stages(model.graph, expert_tensors)
    if plan is None:
        return None
    sessions = [make_session(m.SerializeToString()) for m in stage_models(model, plan)]
    return StagedRunner(sessions, plan, graph_io(model))


def graph_io(model: Any) -> tuple[list[str], list[str]]:
    """The whole graph's input names (overridable initializers left out) and output names."""
    inits = {t.name for t in model.graph.initializer}
    return ([i.name for i in model.graph.input if i.name not in inits],
            [o.name for o in model.graph.output])  # fmt: skip
