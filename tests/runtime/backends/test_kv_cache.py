"""The ONNX backend's KV cache written in place (runtime/backends/onnx/kv_cache.py): which caches
qualify (read from the graph alone), and that a cache written in place gives what the cache fed
back run by run gives, through cut-backs too, on stock onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import runtime
from runtime.backends.onnx.kv_cache import in_place_pairs


def _graph(op: str, past_is_input: bool = True) -> onnx.GraphProto:
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    ins = ["q", "k", "v", "pk" if past_is_input else "inner_k", "pv"]
    if op == "GroupQueryAttention":
        node = helper.make_node(op, [*ins, "lens", "total"], ["y", "ok", "ov"],
                                domain="com.microsoft", num_heads=2, kv_num_heads=1)  # fmt: skip
    else:
        node = helper.make_node(op, ["q", "k", "v", "mask", "pk", "pv"], ["y", "ok", "ov"])
    nodes = [node]
    if not past_is_input:
        nodes.insert(0, helper.make_node("Identity", ["pk"], ["inner_k"]))
    inputs = [f(n) for n in ("q", "k", "v", "pk", "pv", "mask", "lens", "total")]
    return helper.make_graph(nodes, "g", inputs, [f("y"), f("ok"), f("ov")])


@pytest.mark.unit
def test_group_query_attention_caches_are_written_in_place():
    assert in_place_pairs(_graph("GroupQueryAttention")) == {"pk": "ok", "pv": "ov"}


@pytest.mark.unit
def test_other_attention_nodes_and_inner_tensors_are_fed_back():
    """`Attention` returns a fresh past+new; a cache that is not the graph's own input cannot
    be bound (only the value cache here is)."""
    assert in_place_pairs(_graph("Attention")) == {}
    assert in_place_pairs(_graph("GroupQueryAttention", past_is_input=False)) == {"pv": "ov"}


def _fed_back_logits(model: str, tokens: list[list[int]]) -> list[np.ndarray]:
    """The graph run by a plain session, each run's presents fed back as the next pasts (the
    copy-per-run cache), one run per chunk."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs() if i.name.startswith("past_key_values.")]
    shapes = {i.name: i.shape for i in s.get_inputs()}
    past = {n: np.zeros([1, shapes[n][1], 0, shapes[n][3]], np.float32) for n in names}
    presents = [n.replace("past_key_values", "present") for n in names]
    out, n_past = [], 0
    for chunk in tokens:
        feeds = {"input_ids": np.array([chunk], np.int64),
                 "attention_mask": np.ones((1, n_past + len(chunk)), np.int64),
                 "position_ids": np.arange(n_past, n_past + len(chunk))[None], **past}  # fmt: skip
        logits, *rest = s.run(["logits", *presents], feeds)
        past = dict(zip(names, rest, strict=True))
        n_past += len(chunk)
        out.append(logits[0, -1])
    return out


@pytest.mark.engine
@pytest.mark.parametrize("budget", ["100%", "50%"])
def test_in_place_cache_gives_the_fed_back_logits(budget, bundle_factory):
    """Prompt, then greedy steps: the backend (cache in place, whole graph at 100 %, in stages
    at 50 %) against the same graph with its cache copied back every run."""
    bundle = bundle_factory("qwen3moe-tiny", "fp32", format="onnx")
    model = str(bundle / "model.onnx")
    pasts = {i.name for i in onnx.load(model, load_external_data=False).graph.input
             if i.name.startswith("past_key_values.")}  # fmt: skip
    assert set(in_place_pairs(onnx.load(model, load_external_data=False).graph)) == pasts
    with runtime.load(bundle, budget=budget, backend="onnx") as m:
        chunks = [m.tokenize("def read_config(path):\n    ")]
        got = [m.step(chunks[0])]
        for _ in range(6):
            chunks.append([int(np.argmax(got[-1]))])
            got.append(m.step(chunks[-1]))
    want = _fed_back_logits(model, chunks)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)
        assert int(np.argmax(g)) == int(np.argmax(w))


@pytest.mark.engine
def test_cut_back_cache_forgets_what_followed(bundle_factory):
    """After `truncate`, positions written past the cut are stale bytes in the buffer; the
    next run overwrites them and reads none: other tokens there give what a fresh run gives."""
    bundle = bundle_factory("qwen3moe-tiny", "fp32", format="onnx")
    with runtime.load(bundle, budget="100%", backend="onnx") as m:
        prompt = m.tokenize("def read_config(path):\n    ")
        m.step(prompt)
        m.step([5, 6, 7, 8])
        m.engine.truncate(len(prompt))
        again = m.step([9, 10])
    with runtime.load(bundle, budget="100%", backend="onnx") as m:
        m.step(prompt)
        fresh = m.step([9, 10])
    np.testing.assert_array_equal(again, fresh)


@pytest.mark.engine
def test_a_kept_binding_gives_what_a_fresh_binding_gives(bundle_factory):
    """One-token steps on a session's kept binding (caches bound once, logits written into the
    caller's buffer, a routing output fetched by name beside them) against a fresh binding per
    run on a cache of its own: same logits and routing, step after step."""
    import onnxruntime as ort

    from runtime.backends.onnx.kv_cache import InPlaceKV, run_bound

    bundle = bundle_factory("qwen3moe-tiny", "fp32", format="onnx")
    model = str(bundle / "model.onnx")
    pairs = in_place_pairs(onnx.load(model, load_external_data=False).graph)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    vocab = session.get_outputs()[0].shape[-1]
    kept, fresh = (InPlaceKV.allocate(ort, pairs, shapes, 64, np.float32) for _ in range(2))
    names = ["logits", "routing.1"]
    tokens, n_past = [[3, 17, 29, 41, 5]], 0
    for step in range(6):
        chunk = tokens[-1]
        feeds = {"input_ids": np.array([chunk], np.int64),
                 "attention_mask": np.ones((1, n_past + len(chunk)), np.int64),
                 "position_ids": np.arange(n_past, n_past + len(chunk))[None]}  # fmt: skip
        one = len(chunk) == 1
        into = {"logits": np.empty((1, len(chunk), vocab), np.float32)}
        got = run_bound(session, names, feeds, kept.bound, kept if one else None, into)
        want = run_bound(session, names, feeds, fresh.bound)
        assert got[0] is into["logits"]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        n_past += len(chunk)
        tokens.append([int(np.argmax(got[0][0, -1])) if step % 2 else 7 + step])
    assert session in kept._kept and not fresh._kept  # the steps ran on the kept binding
