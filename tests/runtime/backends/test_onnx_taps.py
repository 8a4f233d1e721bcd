"""Routing taps (runtime/backends/onnx/taps.py): the graph rewrite alone, then a paged fused
build on onnxruntime with the taps: one run a step, the same tokens as the stages and as a full
budget, a tap's stop ends the step, a damaged derived copy is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.backends.onnx import taps
from runtime.backends.onnx.stages import plan_stages
from tests.runtime.integrity.damage import flip

PROMPT = "def read_config(path):\n    "
EXPERTS = ["model.layers.0.mlp.experts.gate_up", "model.layers.1.mlp.experts.gate_up"]


def _moe_graph(routing_copy: bool = False):
    """x -> router MatMul -> TopK ids -> Gather(expert stack, ids) -> ... two MoE layers;
    `routing_copy`: the routing output is a copy of the ids that the experts do not read."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, prev, inits = [], "x", []
    for layer in range(2):
        p = f"/model/layers.{layer}"
        stack = f"model.layers.{layer}.mlp.experts.gate_up"
        inits.append(numpy_helper.from_array(np.ones((4, 8, 8), np.float32), stack))
        nodes += [
            helper.make_node("MatMul", [prev, "router"], [f"{p}/logits"], name=f"{p}/router"),
            helper.make_node("TopK", [f"{p}/logits", "k"], [f"{p}/w", f"{p}/ids"],
                             name=f"{p}/TopK"),
            *([helper.make_node("Identity", [f"{p}/ids"], [f"{p}/copy"])] if routing_copy
              else []),
            helper.make_node("Identity", [f"{p}/copy" if routing_copy else f"{p}/ids"],
                             [f"routing.{layer}"]),
            helper.make_node("Gather", [stack, f"{p}/ids"], [f"{p}/mats"], name=f"{p}/Gather"),
            helper.make_node("ReduceSum", [f"{p}/mats"], [f"{p}/out"], keepdims=0),
        ]
        prev = f"{p}/x"
        nodes.append(helper.make_node("Identity", [f"{p}/out"], [prev]))
    inits += [numpy_helper.from_array(np.ones((8, 4), np.float32), "router"),
              numpy_helper.from_array(np.array([2], np.int64), "k")]
    outs = [helper.make_tensor_value_info(n, TensorProto.INT64, None)
            for n in ("routing.0", "routing.1")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    g = helper.make_graph(nodes, "g", [x], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.unit
def test_a_tap_sits_between_each_router_and_everything_reading_its_ids():
    model = _moe_graph()
    plan = plan_stages(model.graph, EXPERTS)
    assert plan is not None
    tapped = taps.tapped_model(model, plan)
    nodes = list(tapped.graph.node)
    tap_nodes = [n for n in nodes if n.op_type == taps.OP]
    assert [dict((a.name, a.i) for a in n.attribute)["layer"] for n in tap_nodes] == [0, 1]
    for layer, ids in plan.routing.items():
        tap = next(n for n in tap_nodes if n.input[0] == ids)
        readers = [n for n in nodes if ids in n.input]
        assert readers == [tap]  # nothing reads the ids but the tap
        gather = next(n for n in nodes if n.op_type == "Gather" and f"layers.{layer}/" in n.name)
        assert tap.output[0] in gather.input
        assert nodes.index(tap) < nodes.index(gather)  # a valid topological order
    assert any(o.domain == taps.DOMAIN for o in tapped.opset_import)
    assert not any(n.op_type == taps.OP for n in model.graph.node)  # the original is untouched
    assert taps.gates_every_layer(tapped, plan, EXPERTS)


@pytest.mark.unit
def test_taps_that_would_not_gate_the_experts_are_refused():
    model = _moe_graph(routing_copy=True)  # the tap would sit on a copy the experts never read
    plan = plan_stages(model.graph, EXPERTS)
    assert plan is not None
    assert not taps.gates_every_layer(taps.tapped_model(model, plan), plan, EXPERTS)


@pytest.fixture(autouse=True)
def _packed_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMOE_ONNX_CACHE", str(tmp_path / "onnx-packed"))


def _tokens(bundle: Path, budget: str) -> tuple[list[int], str]:
    with runtime.load(bundle, budget=budget, backend="onnx") as m:
        return m.generate(PROMPT, max_tokens=16).tokens, m.engine.paging


@pytest.mark.engine
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_a_paged_fused_build_runs_tapped_with_the_stages_tokens(quant, bundle_factory, monkeypatch):
    bundle = bundle_factory("qwen3moe-tiny", quant, format="onnx")
    full, mode = _tokens(bundle, "100%")
    assert mode == "whole"
    tapped, mode = _tokens(bundle, "25%")
    assert mode == "tapped" and tapped == full
    monkeypatch.setenv(taps.ENV, "0")
    staged, mode = _tokens(bundle, "25%")
    assert mode == "stages" and staged == full


@pytest.mark.engine
def test_a_load_from_the_derived_copy_reads_its_graphs_without_the_onnx_package(bundle_factory):
    """Only a derivation needs onnx's shape inference and helpers; a device loading the copy
    already derived reads its graphs with the schema alone (contract/onnx_proto.py: ~14 MiB less
    of every process) and answers as the first load did. Nor does it import gguf-py (no GGUF
    to read: contract/quant_types.py, ~4.6 MiB)."""
    bundle = bundle_factory("qwen3moe-tiny", "int4", format="onnx")
    first, mode = _tokens(bundle, "25%")  # derives into the cache (this process has onnx)
    assert mode == "tapped"
    code = (
        "import json, sys, runtime\n"
        "with runtime.load(sys.argv[1], budget='25%', backend='onnx') as m:\n"
        f"    out = m.generate({PROMPT!r}, max_tokens=16)\n"
        "    paging = m.engine.paging\n"
        "print(json.dumps({'tokens': out.tokens, 'paging': paging, 'onnx': sorted(\n"
        "    k for k in sys.modules if k == 'onnx' or k.startswith('onnx.')),\n"
        "    'gguf': 'gguf' in sys.modules}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["paging"] == "tapped" and out["tokens"] == first
    assert out["onnx"] == ["onnx.onnx_ml_pb2"] and out["gguf"] is False


@pytest.mark.engine
def test_a_tap_that_asks_to_stop_ends_the_step_before_that_layers_experts(bundle_factory):
    """What the pager does when an expert cannot be brought in (a checksum or a read fails):
    the tap's admit says stop, the run ends there, no logits, the position does not move; the
    next step runs whole."""
    bundle = bundle_factory("qwen3moe-tiny", "int8", format="onnx")
    with runtime.load(bundle, budget="25%", backend="onnx", threads=1) as m:
        engine = m.engine
        assert engine.paging == "tapped"
        ids = m.tokenize(PROMPT)
        engine.reset()
        expected = engine.decode(ids)
        engine.reset()
        seen: list[int] = []
        observe = engine._observer
        engine._observer = lambda event: seen.append(event.layer) or event.layer == 1
        logits = engine.decode(ids)
        assert seen == [0, 1] and engine.n_past == 0 and not logits.any()
        engine._observer = observe
        np.testing.assert_array_equal(engine.decode(ids), expected)


@pytest.mark.engine
def test_a_damaged_packed_copy_is_refused_and_the_bundle_answers(bundle_factory):
    """onnxruntime checks the packed experts it maps against its own packing at load; a
    damaged derived copy is refused there (a warning), and the model runs on the bundle's
    file with the same tokens."""
    bundle = bundle_factory("qwen3moe-tiny", "int8", format="onnx")
    with runtime.load(bundle, budget="25%", backend="onnx", threads=1) as m:
        source = m.engine.expert_file()
        clean = m.generate(PROMPT, max_tokens=12, temperature=0.0).tokens
    tensor = source.layers[0].tensors[0]
    flip(source.path, tensor.offset + tensor.stride // 2)
    with runtime.load(bundle, budget="25%", backend="onnx", threads=1) as m:
        assert m.engine.expert_file() is None and m.engine.paging == "stages"
        assert m.generate(PROMPT, max_tokens=12, temperature=0.0).tokens == clean


@pytest.mark.unit
def test_stages_joined_back_keep_one_copy_of_shared_constants_and_unique_node_names():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def stage(k: int, src: str, dst: str):
        one = numpy_helper.from_array(np.ones(1, np.float32), "one")  # in both stages
        node = helper.make_node("Add", [src, "one"], [dst], name="Add")  # the same name in both
        g = helper.make_graph([node], f"stage {k}",
                              [helper.make_tensor_value_info(src, TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(dst, TensorProto.FLOAT, [1])], [one])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    whole = taps.whole_graph([stage(0, "x", "h"), stage(1, "h", "y")], (["x"], ["y"]))
    onnx.checker.check_model(whole)
    assert [n.name for n in whole.graph.node] == ["Add", "Add/stage1"]
    assert [t.name for t in whole.graph.initializer] == ["one"]
    assert [i.name for i in whole.graph.input] == ["x"]
    assert [o.name for o in whole.graph.output] == ["y"]
