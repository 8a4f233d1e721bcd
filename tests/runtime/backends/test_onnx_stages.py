"""Where a graph is cut before each layer's experts, and the packed-expert cache's upkeep:
pure functions of names and folders, no engine."""

from __future__ import annotations

import os
import time

import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.backends.onnx.packed import META, prune
from runtime.backends.onnx.stages import plan_stages

pytestmark = pytest.mark.unit


def _graph(layers: int = 2, routing: bool = True):
    """x -> per layer: router (TopK) -> experts node reading `layers.i.experts.*` -> Add."""
    import numpy as np

    nodes, inits, outputs = [], [], []
    h = "x"
    for i in range(layers):
        w = f"model.layers.{i}.mlp.experts.gate_up.q8"
        inits.append(numpy_helper.from_array(np.zeros((2, 2), np.uint8), w))
        ids = f"/l{i}/ids"
        nodes.append(helper.make_node("TopK", [h, "k"], [f"/l{i}/v", ids], name=f"/l{i}/TopK"))
        nodes.append(helper.make_node("Mul", [h, "two"], [f"/l{i}/pre"], name=f"/l{i}/Pre"))
        nodes.append(helper.make_node("Experts", [f"/l{i}/pre", ids, w], [f"/l{i}/y"],
                                      name=f"/l{i}/Experts"))  # fmt: skip
        nodes.append(helper.make_node("Add", [h, f"/l{i}/y"], [f"/l{i}/h"], name=f"/l{i}/Add"))
        h = f"/l{i}/h"
        if routing:
            nodes.append(helper.make_node("Identity", [ids], [f"routing.{i}"],
                                          name=f"/out/routing.{i}"))  # fmt: skip
            outputs.append(helper.make_tensor_value_info(f"routing.{i}", TensorProto.INT64, None))
    nodes.append(helper.make_node("Identity", [h], ["logits"], name="/out/logits"))
    outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    inits += [numpy_helper.from_array(np.array([1], np.int64), "k"),
              numpy_helper.from_array(np.array(2.0, np.float32), "two")]  # fmt: skip
    return helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outputs,
        initializer=inits,
    )


def test_cut_before_each_layers_experts():
    g = _graph(2)
    experts = [t.name for t in g.initializer if ".experts." in t.name]
    plan = plan_stages(g, experts)
    assert plan is not None
    names = [[g.node[i].name for i in stage] for stage in plan.nodes]
    assert names[1][0] == "/l0/Experts" and names[2][0] == "/l1/Experts"
    assert plan.layers == (None, 0, 1)
    assert plan.routing == {0: "/l0/ids", 1: "/l1/ids"}
    # Layer 0's ids leave stage 0 (where the router made them) for the admission before stage 1.
    assert "/l0/ids" in plan.outputs[0] and "/l0/pre" in plan.outputs[0]
    assert plan.inputs[0] == ("x",)
    # Initializers are read inside their stage, never passed between stages.
    assert not any(t in ins for ins in plan.inputs for t in ("k", "two", *experts))
    # Each graph output leaves the stage that makes it (here routing.0 is made in stage 1).
    made_in = [k for o in ("logits", "routing.0", "routing.1")
               for k, outs in enumerate(plan.outputs) if o in outs]  # fmt: skip
    assert made_in == [2, 1, 2]
    # Every border tensor a stage needs was made by an earlier stage or is a graph input.
    made = {"x"}
    for k, ins in enumerate(plan.inputs):
        assert set(ins) <= made
        made |= set(plan.outputs[k])


def test_no_cut_without_experts_or_routing():
    g = _graph(2)
    assert plan_stages(g, []) is None
    experts = [t.name for t in g.initializer if ".experts." in t.name]
    assert plan_stages(_graph(2, routing=False), experts) is None


def _derivation(root, name: str, age_s: float):
    d = root / name
    d.mkdir()
    (d / META).write_text("{}")
    t = time.time() - age_s
    os.utime(d, (t, t))
    return d


def test_prune_keeps_the_most_recently_used(tmp_path):
    old, mid, new = (_derivation(tmp_path, n, a) for n, a in (("a", 300), ("b", 200), ("c", 100)))
    stale = tmp_path / ".derive-x"
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / ".derive-y"
    fresh.mkdir()
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".derive-y", "b", "c"]
    assert not old.exists() and mid.exists() and new.exists() and fresh.exists()
    prune(tmp_path, keep=0, spare=new)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".derive-y", "c"]
