"""Routers read from an ONNX graph for pre-gating (runtime/backends/onnx/routers.py): the walk
from a layer's chosen ids back to its router and norm on small graphs written here, then on a
real bundle against the same routers read from its GGUF."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.onnx.routers import read_routers, router_sources

N_EMBD, N_EXPERTS = 6, 4


def _graph(tmp_path, gate: str = "Softmax", norm: str = "SkipSimplifiedLayerNormalization"):
    """x, skip -> norm -> Reshape -> MatMul(router, kept in a data file) -> gate -> TopK."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((N_EMBD, N_EXPERTS)).astype(np.float32)
    g = rng.uniform(0.5, 1.5, N_EMBD).astype(np.float32)
    (tmp_path / "w.data").write_bytes(b"\0" * 64 + w.tobytes())
    router = TensorProto(name="router.weight", data_type=TensorProto.FLOAT, dims=w.shape)
    router.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.data"), ("offset", "64"), ("length", str(w.nbytes))):
        entry = router.external_data.add()
        entry.key, entry.value = key, value
    skip = norm.startswith("Skip")
    nodes = [
        helper.make_node(norm, ["x", "skip", "g"] if skip else ["x", "g"],
                         ["normed", "", "", "residual"] if skip else ["normed"],
                         domain="com.microsoft"),
        helper.make_node("Reshape", ["normed", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "router.weight"], ["logits"]),
        helper.make_node(gate, ["logits"], ["scores"]),
        helper.make_node("TopK", ["scores", "k"], ["weights", "ids"]),
    ]
    inits = [router, numpy_helper.from_array(g, "g"),
             numpy_helper.from_array(np.array([-1, N_EMBD], np.int64), "shape"),
             numpy_helper.from_array(np.array([2], np.int64), "k")]
    graph = helper.make_graph(
        nodes, "router", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                          for n in ("x", "skip")],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, None)], inits)
    return graph, w, g


@pytest.mark.unit
@pytest.mark.parametrize("norm", ["SkipSimplifiedLayerNormalization",
                                  "SimplifiedLayerNormalization"])
def test_the_walk_finds_the_residual_the_router_and_its_norm(norm, tmp_path):
    graph, w, g = _graph(tmp_path, norm=norm)
    found = router_sources(graph, {3: "ids"})
    assert not isinstance(found, str)
    src = found[3]
    # The residual stream is the fused add's sum where the norm adds, else the norm's input.
    assert src.residual == ("residual" if norm.startswith("Skip") else "x")
    assert (src.weight, src.norm) == ("router.weight", "g")
    folded = read_routers(graph, tmp_path, found)[3]
    assert folded.shape == (N_EXPERTS, N_EMBD) and folded.dtype == np.float32
    np.testing.assert_allclose(folded, (w * g[:, None]).T, rtol=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("gate", ["Sigmoid", "Relu"])
def test_routers_of_another_shape_are_refused_in_one_line(gate, tmp_path):
    graph, _, _ = _graph(tmp_path, gate=gate)
    found = router_sources(graph, {3: "ids"})
    assert isinstance(found, str) and found.startswith("layer 3:") and gate in found
    assert "\n" not in found


@pytest.mark.unit
def test_a_router_weight_cut_short_in_its_file_is_a_value_error(tmp_path):
    graph, w, _ = _graph(tmp_path)
    found = router_sources(graph, {0: "ids"})
    assert not isinstance(found, str)
    (tmp_path / "w.data").write_bytes(b"\0" * (64 + w.nbytes // 2))
    with pytest.raises(ValueError, match="ends before"):
        read_routers(graph, tmp_path, found)


@pytest.mark.engine
def test_an_onnx_builds_routers_rank_as_its_ggufs(bundle_factory, monkeypatch, tmp_path):
    """The routers the ONNX backend reads from its own graph are the GGUF's of the same bundle
    (pre-gating on llama.cpp reads those), so both engines' prompt prefetch guess alike."""
    import runtime
    from runtime.experts.pregate import read_routers as gguf_routers

    monkeypatch.setenv("EDGEMOE_ONNX_CACHE", str(tmp_path / "onnx-packed"))
    bundle = bundle_factory("qwen3moe-trained", "Q8_0", format="gguf,onnx")
    with runtime.load(bundle, backend="onnx", budget="50%", threads=1, n_ctx=256) as m:
        assert m.engine.paging == "tapped"
        own = m.engine.pregate_routers()
        layers = list(m.manifest.shape.moe_layers)
    assert not isinstance(own, str) and sorted(own) == layers
    ref = gguf_routers(bundle / "model.gguf", layers)
    hidden = np.random.default_rng(0).standard_normal((64, own[layers[0]].shape[1]))
    for layer in layers:
        assert own[layer].shape == ref[layer].matrix.shape
        np.testing.assert_allclose(own[layer], ref[layer].matrix, rtol=2e-2, atol=2e-3)
        top = np.argsort(-(hidden @ own[layer].T), axis=1)[:, :2]
        ref_top = np.argsort(-(hidden @ ref[layer].matrix.T), axis=1)[:, :2]
        assert (top == ref_top).mean() >= 0.98
