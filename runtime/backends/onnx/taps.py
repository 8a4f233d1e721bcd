"""One whole-graph run per step that still hands each MoE layer's routing to the pager before
that layer's experts are read: a tap node after each router.

onnxruntime has no callback inside a run, so paging a graph meant cutting it into stages, one
session run per MoE layer (stages.py); on two cores each stage run costs ~75-95 us beyond its
kernels (its own thread pool woken, feeds bound), nine a token on an 8-layer model. Here the
graph stays whole and a `RoutingTap` node (a Python operator of onnxruntime-extensions,
`ai.onnx.contrib`) sits between each router's chosen ids and everything that reads them: the
scatter that feeds `QMoE`, so the layer's experts cannot run before the tap returns. The tap
hands the ids to the backend's `admit` (the pager admits, reads and verifies the experts, as
between two stages) and passes them on unchanged; `admit` returning True (an expert could not
be brought in) ends the run before that layer's experts, as a stage boundary would: the tap
passes on ids no expert has, the scatter that routes them fails, and the runner raises
`Stopped`. About 10-20 us a tap on two Zen 3 cores: ~8 us is onnxruntime-extensions' dispatch of a
Python operator, the rest the check of the ids against the routing log (routing_log.py).

The tapped graph is assembled from the stages onnxruntime derived with their experts packed
(packed.py: derived stage by stage, so deriving never holds more than one layer's packed experts),
their nodes joined in order over the one packed data file, and written beside them in the cache;
the bundle's model.onnx stays stock onnxruntime's. Where onnxruntime-extensions is not installed
(or EDGEMOE_ONNX_TAPS=0) the backend runs the stages. onnxruntime reads every packed expert while
it loads a session, so the one session is loaded with those pages released behind it
(session.releasing): a load holds no more than the stages' did.
Operators run on the thread that called run() (one inter-op thread), so the tap finds its
`admit` in that thread's state.

Each tap also reads the residual stream its layer's router starts from (routers.py; cast to f32,
or an empty tensor where the graph's routers are not a shape pre-gating ranks) and hands it to
`admit` with the ids: a prompt batch's prefetch guesses the next layer's experts from it
(runtime/experts/batch_prefetch.py), as on llama.cpp.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.onnx_proto import read_model
from runtime.backends.onnx.kv_cache import InPlaceKV, run_bound
from runtime.backends.onnx.routers import router_sources
from runtime.backends.onnx.stages import GraphSessions, StagePlan, Stopped
from runtime.errors import EdgemoeError

DOMAIN = "ai.onnx.contrib"
OP = "RoutingTap"

NO_EXPERT = 1 << 40  # the ids a stopping tap passes on: out of every routing table's range
ENV = "EDGEMOE_ONNX_TAPS"  # "0": page through the stages even where taps could run

_state = threading.local()  # .admit: the running step's callback; .stopped: it asked to stop
_registered: list[str] = []
_strays: list[int] = []  # layers whose tap ran on a thread with no step: a run to refuse
_lock = threading.Lock()


def wanted() -> bool:
    """Whether taps may run (EDGEMOE_ONNX_TAPS=0 asks for the stages: to compare the two)."""
    return os.environ.get(ENV, "1") != "0"


def library() -> str | None:
    """onnxruntime-extensions' operator library with the tap registered, or None when the
    package is not installed (the backend then pages through stages).

    Only the package's compiled module is loaded, not the package: its __init__ imports its
    model converters, which import transformers and torch wherever they are installed (2.5 s and
    ~150 MiB here, against a memory budget). So the tap is registered with that module's own
    calls (what the package's `onnx_op` does), and its Python operators are dispatched here: a
    later `import onnxruntime_extensions` in the same process would install its own dispatcher
    over this one, and a tapped run would then fail with its error, not run untapped."""
    with _lock:
        if _registered:
            return _registered[0]
        ext = _extension_module()
        if ext is None:
            return None
        op = ext.PyCustomOpDef()
        op.op_type, op.obj_id = OP, _TAP_ID
        op.input_types = [ext.PyCustomOpDef.dt_int64, ext.PyCustomOpDef.dt_float]
        op.output_types = [ext.PyCustomOpDef.dt_int64]
        op.attrs = {"layer": ext.PyCustomOpDef.dt_int64}
        ext.add_custom_op(op)
        ext.PyCustomOpDef.install_hooker(_invoke)
        _keep.append(op)  # the native side holds it by reference
        _registered.append(str(ext.__file__))
        return _registered[0]


_TAP_ID = 0x7A9  # the tap's id in the native operator table
_keep: list[Any] = []


def _extension_module() -> Any:
    """onnxruntime-extensions' compiled module, loaded from its file, or None."""
    import importlib.util
    import sys

    name = "onnxruntime_extensions._extensions_pydll"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("onnxruntime_extensions")  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_extensions_pydll.*"))
    if not files:
        return None
    found = importlib.util.spec_from_file_location(name, files[0])
    if found is None or found.loader is None:
        return None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _invoke(op_id: int, feeds: Sequence[np.ndarray], attrs: dict[str, Any]) -> tuple[Any, ...]:
    """The native side's call for a Python operator: (id, output shape, output values)."""
    if op_id != _TAP_ID:
        raise RuntimeError(f"no Python operator with id {op_id} is registered here")
    ids = _tap(feeds[0], layer=int(attrs["layer"]), hidden=feeds[1] if len(feeds) > 1 else None)
    return (op_id, ids.shape, ids.ravel().tolist())


# (layer, chosen ids, the residual stream its router read or None) -> True to stop the run
Admit = Callable[[int, np.ndarray, np.ndarray | None], bool | None]


def _tap(ids: np.ndarray, layer: int, hidden: np.ndarray | None = None) -> np.ndarray:
    """Hand the layer's ids (and the residual stream its router read, None where the graph
    gave none) to the running step's `admit`; pass them on, or stop the run. A tap that finds
    no step on its thread stops it too (counted in `_strays`): experts the pager was not told
    of must not be read."""
    admit: Admit | None = getattr(_state, "admit", None)
    if admit is None:
        with _lock:
            _strays.append(layer)
        return np.full_like(ids, NO_EXPERT)
    if admit(layer, ids, hidden if hidden is not None and hidden.size else None):
        # A Python exception here would end the process (it cannot cross onnxruntime's C
        # operator interface), so the run is ended by its own kernel: ids no expert has fail
        # the scatter that routes them, before any expert is read.
        _state.stopped = True
        return np.full_like(ids, NO_EXPERT)
    return ids


NO_HIDDEN = "RoutingTap/no_hidden"  # an empty f32 constant: the tap's second input, no state


def tapped_model(model: Any, plan: StagePlan, residuals: Mapping[int, str] | None = None) -> Any:
    """A copy of `model` (onnx.ModelProto) with a tap on each MoE layer's router ids: every node
    that read the ids reads the tap's output instead. A tap's second input is its layer's
    residual stream (`residuals`: layer -> tensor name, routers.py) cast to f32, or an empty
    constant."""
    from onnx import TensorProto, helper

    residuals = residuals or {}
    out = type(model)()
    out.CopyFrom(model)
    graph = out.graph
    taps = {ids: (layer, f"{ids}/tapped") for layer, ids in plan.routing.items()}
    nodes = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in taps:
                node.input[i] = taps[name][1]
        nodes.append(node)
        for name in node.output:
            if name in taps:
                layer, tapped = taps[name]
                hidden = NO_HIDDEN
                if layer in residuals:
                    hidden = f"{residuals[layer]}/f32"
                    nodes.append(helper.make_node("Cast", [residuals[layer]], [hidden],
                                                  name=f"RoutingTap.{layer}/Cast",
                                                  to=TensorProto.FLOAT))  # fmt: skip
                nodes.append(helper.make_node(OP, [name, hidden], [tapped],
                                              name=f"RoutingTap.{layer}", domain=DOMAIN,
                                              layer=layer))  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)
    if len(residuals) < len(taps):
        graph.initializer.append(helper.make_tensor(NO_HIDDEN, TensorProto.FLOAT, [0], []))
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out


# v2: taps read the residual stream too (an older cache's tapped.onnx has one input)
TAPPED = "tapped-v2.onnx"


def whole_graph(stages: Sequence[Any], graph_io: tuple[list[str], list[str]]) -> Any:
    """The stage graphs (onnx.ModelProto, in order) joined back into one: their nodes in order
    (a name two stages share made unique), each initializer once (a small constant may appear
    in several stages), the original graph's inputs and outputs."""
    from onnx import helper

    nodes, inits, seen, values, opsets = [], [], set(), {}, {}
    names: set[str] = set()
    for k, st in enumerate(stages):
        g = st.graph
        for node in g.node:  # onnxruntime names its own nodes per graph: "Gather" in two stages
            if node.name and node.name in names:
                node.name = f"{node.name}/stage{k}"
            names.add(node.name)
        nodes.extend(g.node)
        for t in g.initializer:
            if t.name not in seen:
                seen.add(t.name)
                inits.append(t)
        for v in [*g.input, *g.output]:
            values.setdefault(v.name, v)
        for o in st.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    names_in, names_out = graph_io
    graph = helper.make_graph(nodes, "tapped", [values[n] for n in names_in if n in values],
                              [values[n] for n in names_out if n in values], initializer=inits)
    return helper.make_model(graph, ir_version=stages[0].ir_version,
                             opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])


def derive_tapped(folder: Path, stage_paths: Sequence[Path], plan: StagePlan,
                  graph_io: tuple[list[str], list[str]], expert_tensors: Sequence[str]
                  ) -> Path | None:  # fmt: skip
    """The tapped whole graph beside the derived stages in `folder` (written once, atomically),
    or None when its taps would not gate every layer's expert kernels (gates_every_layer,
    checked on the joined graph onnxruntime will run)."""
    path = folder / TAPPED
    if not path.is_file():
        stages = [read_model(p) for p in stage_paths]
        whole = whole_graph(stages, graph_io)
        found = router_sources(whole.graph, plan.routing)
        residuals = {k: s.residual for k, s in found.items()} if isinstance(found, dict) else {}
        model = tapped_model(whole, plan, residuals)
        if not gates_every_layer(model, plan, expert_tensors):
            return None
        tmp = path.with_name(f".{TAPPED}.{os.getpid()}")
        tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, path)
    return path


def gates_every_layer(tapped: Any, plan: StagePlan, expert_tensors: Sequence[str]) -> bool:
    """Whether every node that reads a layer's experts runs only after that layer's tap (reads
    what the tap passes on, directly or not): else a kernel could read experts the pager has
    not admitted, and the backend runs the stages instead."""
    readers: dict[str, list[Any]] = {}
    for node in tapped.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    experts = set(expert_tensors)
    for layer in plan.routing:
        reached: set[int] = set()
        todo = [f"{plan.routing[layer]}/tapped"]
        while todo:
            for node in readers.get(todo.pop(), ()):
                if id(node) not in reached:
                    reached.add(id(node))
                    todo.extend(node.output)
        tag = f"layers.{layer}."
        for node in tapped.graph.node:
            if any(t in experts and tag in t for t in node.input) and id(node) not in reached:
                return False
    return True


class TappedRunner(GraphSessions):
    """The tapped graph in one session, with the interface of stages.StagedRunner."""

    def __init__(self, session: Any, graph_io: tuple[list[str], list[str]]) -> None:
        super().__init__([session], graph_io)
        self.session = session
        self._names = {a.name for a in session.get_inputs()}

    def run(
        self,
        fetch: Sequence[str],
        feeds: dict[str, np.ndarray],
        admit: Admit,
        kv: InPlaceKV | None = None,
        keep: bool = False,
        into: dict[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """`fetch` after one run whose taps called `admit` layer by layer; Stopped when one
        asked to stop. `keep` (a one-token step): run on `kv`'s kept binding; `into`: outputs
        written into the given arrays (kv_cache.run_bound)."""
        bound = kv.bound if kv is not None else {}
        inputs = {k: v for k, v in feeds.items() if k in self._names and k not in bound}
        _state.admit, _state.stopped = admit, False
        strays = len(_strays)
        try:
            return run_bound(self.session, fetch, inputs, bound, kv if keep else None, into)
        except Exception as e:
            if len(_strays) > strays:  # onnxruntime ran a tap off the calling thread
                raise EdgemoeError("onnxruntime ran a routing tap outside the step's thread; "
                                   f"set {ENV}=0 to page in stages") from None
            if getattr(_state, "stopped", False):
                raise Stopped(str(e).splitlines()[0][:200] if str(e) else "stopped") from None
            raise
        finally:
            _state.admit = None
