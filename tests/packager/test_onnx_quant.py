"""The ONNX block quantizer: bad input, error bounds, and the bytes onnxruntime's kernels read.

The layout is checked by running the real contrib ops (MatMulNBits for dense matrices,
GatherBlockQuantized for experts, in the grouped 2-D layout the export writes) on what
`quantize` produced and comparing their output with the original matrix and with
`dequantize`; nothing here re-implements a kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from packager.errors import PackError
from packager.onnx_export.precision import mix_bits, use_more_bits
from packager.onnx_export.quant import BlockQuantized, dequantize, quantize, scheme

pytestmark = pytest.mark.unit
RNG = np.random.default_rng(19)


def _matrix(n: int, k: int) -> np.ndarray:
    # Heavy tails and a per-row offset, so blocks are neither symmetric nor alike.
    w = RNG.standard_t(4, size=(n, k)).astype(np.float32) * 0.02
    return w + RNG.normal(0, 0.01, size=(n, 1)).astype(np.float32)


def _block_sse(w: np.ndarray, bq: BlockQuantized, weights: np.ndarray) -> np.ndarray:
    d = (dequantize(bq) - w) ** 2 * weights
    return d.reshape(w.shape[0], -1, bq.block).sum(axis=-1)


# ----- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((4, 40), np.float32), 4, 32), "input size 40 is not a multiple of block_size"),
        ((np.zeros((4, 32), np.float32), 3, 32), "quantization to 3 bits is not supported"),
        ((np.zeros((32,), np.float32), 4, 32), "expected a non-empty [out, in] matrix"),
        ((np.zeros((0, 32), np.float32), 4, 32), "expected a non-empty [out, in] matrix"),
        ((np.full((2, 32), np.nan, np.float32), 4, 32), "NaN or infinite"),
        ((np.zeros((2, 32), np.float32), 4, 32, np.ones(16)), "importance has shape (16,)"),
        ((np.zeros((2, 32), np.float32), 4, 32, -np.ones(32)), "finite and non-negative"),
        ((np.zeros((2, 32), np.float32), 4, 32, None, "gptq"), "method 'gptq' is not one of"),
    ],
)
def test_bad_input_is_one_clear_error(args, message):
    with pytest.raises(PackError) as e:
        quantize(*args)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_scheme_names_what_is_accepted():
    with pytest.raises(PackError, match="choose one of"):
        scheme("int3", 32)
    with pytest.raises(PackError, match="power of two >= 16"):
        scheme("int4", 24)
    with pytest.raises(PackError, match="method 'hqq' is not one of"):
        scheme("int4", 32, "hqq")


# ----- error bounds -------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
def test_round_to_nearest_is_within_half_a_step(bits):
    w = _matrix(48, 128)
    bq = quantize(w, bits, 32, method="rtn")
    err = np.abs(dequantize(bq) - w).reshape(48, 4, 32)
    assert (err <= bq.scales[..., None] * 0.5 + 1e-6).all()
    assert bq.packed.shape == (48, 4, 32 * bits // 8) and bq.scales.dtype == np.float32


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("with_importance", [False, True])
def test_search_never_loses_to_round_to_nearest_on_any_block(bits, with_importance):
    """The search's objective, block by block, against onnxruntime's own quantizer."""
    w = _matrix(64, 256)
    imp = RNG.gamma(0.3, size=256).astype(np.float32) if with_importance else None
    searched = quantize(w, bits, 32, imp, "search")
    nearest = quantize(w, bits, 32, method="rtn")
    if imp is None:
        weights = np.ones_like(w)
    else:  # the weighting documented in quant.py
        blocks = w.reshape(64, 8, 32)
        sigma2 = (blocks**2).mean(axis=-1, keepdims=True)
        weights = (imp.reshape(1, 8, 32) * np.sqrt(sigma2 + blocks**2)).reshape(w.shape)
    a, b = _block_sse(w, searched, weights), _block_sse(w, nearest, weights)
    assert (a <= b * (1 + 1e-4) + 1e-12).all()
    assert a.sum() < 0.97 * b.sum()  # and it does find better grids overall


def test_importance_buys_accuracy_where_it_points():
    w = _matrix(256, 64)
    imp = np.full(64, 1e-3, np.float32)
    imp[::8] = 1.0  # calibration says these columns see the large activations
    plain = np.abs(dequantize(quantize(w, 4, 32)) - w)
    weighted = np.abs(dequantize(quantize(w, 4, 32, imp)) - w)
    assert weighted[:, ::8].mean() < 0.8 * plain[:, ::8].mean()


def test_zero_and_constant_blocks_are_exact():
    w = np.zeros((3, 64), np.float32)
    w[1, 32:] = 0.5
    w[2, :32] = -1.25
    for method in ("search", "rtn"):
        for bits in (4, 8):
            np.testing.assert_array_equal(dequantize(quantize(w, bits, 32, method=method)), w)


# ----- the layout as onnxruntime's kernels read it ----------------------------------------------
def _session(node, inits, inputs):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [node], "q", [helper.make_tensor_value_info(n, e, None) for n, e in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.engine
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [96, 256])  # 96: three blocks, so int4 zero points end mid-byte
@pytest.mark.parametrize("method", ["search", "rtn"])
def test_matmul_nbits_reads_codes_scales_and_zero_points(bits, k, method):
    from onnx import TensorProto, helper

    n = 40
    w = _matrix(n, k)
    bq = quantize(w, bits, 32, method=method)
    node = helper.make_node("MatMulNBits", ["x", "B", "S", "Z"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=32)  # fmt: skip
    sess = _session(node, {"B": bq.packed, "S": bq.scales, "Z": bq.zero_points},
                    [("x", TensorProto.FLOAT)])  # fmt: skip
    seen = sess.run(None, {"x": np.eye(k, dtype=np.float32)})[0].T  # the weights it used
    np.testing.assert_allclose(seen, dequantize(bq), rtol=0, atol=1e-6)
    assert np.sqrt(((seen - w) ** 2).mean() / (w**2).mean()) < (0.12 if bits == 4 else 0.008)


@pytest.mark.engine
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("k", "group"), [(128, 8), (96, 1)])
def test_gather_block_quantized_reads_the_grouped_expert_layout(bits, k, group):
    """Experts as the export stores them: rows padded, then `group` rows per declared row."""
    from onnx import TensorProto, helper

    n_exp, rows, padded = 5, 24, 32
    mats = [_matrix(rows, k) for _ in range(n_exp)]
    qs = [quantize(m, bits, 32) for m in mats]

    def stacked(parts: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((n_exp, padded, parts[0].reshape(rows, -1).shape[1]), parts[0].dtype)
        for e, p in enumerate(parts):
            out[e, :rows] = p.reshape(rows, -1)
        return out.reshape(n_exp * padded // group, -1)

    inits = {"V": stacked([q.packed for q in qs]), "S": stacked([q.scales for q in qs]),
             "Z": stacked([q.zero_points for q in qs])}  # fmt: skip
    node = helper.make_node("GatherBlockQuantized", ["V", "i", "S", "Z"], ["y"],
                            domain="com.microsoft", bits=bits, block_size=32, gather_axis=0,
                            quantize_axis=1)  # fmt: skip
    chosen = np.array([4, 0, 2])
    index = chosen[:, None] * (padded // group) + np.arange(rows // group)[None, :]
    out = _session(node, inits, [("i", TensorProto.INT64)]).run(None, {"i": index})[0]
    out = out.reshape(len(chosen), rows, k)
    for got, e in zip(out, chosen, strict=True):
        np.testing.assert_allclose(got, dequantize(qs[e]), rtol=0, atol=1e-6)
        assert np.sqrt(((got - mats[e]) ** 2).mean() / (mats[e] ** 2).mean()) < 0.12


# ----- which matrices int4 keeps at 8 bits --------------------------------------------------
def test_more_bits_layers_are_llama_cpps():
    # llama.cpp's _M mixes widen the first and last eighth of the layers and every third one.
    assert [i for i in range(32) if use_more_bits(i, 32)] == [
        0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]  # fmt: skip
    assert [i for i in range(4) if use_more_bits(i, 4)] == [2, 3]
    assert [i for i in range(3) if use_more_bits(i, 3)] == [2]


@pytest.mark.parametrize(
    ("name", "n_experts", "bits"),
    [
        ("blk.2.attn_v.weight", 64, 8),  # a more-bits layer
        ("blk.1.attn_v.weight", 64, 4),
        ("blk.1.attn_v.weight", 8, 8),  # 8-expert models keep attention k/v/output wide
        ("blk.1.attn_k.weight", 8, 8),
        ("blk.1.attn_k.weight", 64, 4),
        ("blk.1.attn_output.weight", 8, 8),
        ("blk.1.attn_kv_b.weight", 8, 8),
        ("blk.3.ffn_down_exps.weight", 64, 8),
        ("blk.3.ffn_down_shexp.weight", 64, 8),
        ("blk.1.ffn_down_exps.weight", 8, 4),
        ("blk.3.ffn_gate_exps.weight", 64, 4),
        ("blk.3.attn_q.weight", 8, 4),
        ("blk.1.ffn_gate.weight", 64, 8),  # a dense FFN layer inside a mixture
        ("blk.1.ffn_up.weight", 64, 8),
        ("blk.1.ffn_down.weight", 64, 8),
        ("blk.1.ffn_gate_shexp.weight", 64, 4),
        ("blk.1.ffn_gate_inp.weight", 64, 4),
        ("output.weight", 64, 8),
    ],
)
def test_int4_keeps_q4_k_m_wider_tensors_at_8_bits(name, n_experts, bits):
    assert mix_bits(4, name, 4, n_experts) == bits
    assert mix_bits(8, name, 4, n_experts) == 8


def test_threaded_search_gives_the_same_bytes_as_one_pass():
    from packager.onnx_export import quant

    w = _matrix(300, 512)  # several thread-pool slices of 2**16 values, the last one short
    blocks, weights = w.reshape(300, 16, 32), np.ones((300, 16, 32), np.float32)
    one = quant._search(blocks, weights, 15)
    pooled = quant._search_rows(blocks, weights, 15)
    for a, b in zip(one, pooled, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_block_wider_than_the_experts_is_halved_to_fit():
    q = scheme("int4", 32)
    assert q.fitted((64, 32)) is q  # real widths keep the asked block
    assert q.fitted((64, 16)).block_size == 16  # 16-wide experts
    assert q.fitted((64, None)).block_size == 32  # a width the config leaves out
    assert q.fitted((64, 8)).block_size == 16  # never below 16: the quantizer then names it
