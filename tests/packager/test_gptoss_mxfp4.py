"""gpt-oss as OpenAI publishes it (MXFP4 experts): packed without a float round trip, and as
faithful to transformers as llama.cpp's MXFP4 kernel allows.

The reference is transformers' dequantized model (what it computes loading the published
format on a CPU). The GGUF's expert bytes are decoded by ggml's own C code (the library that
runs them), not by the packager's or gguf-py's Python.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

NAME = "gptoss-mxfp4-tiny"
EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


def _ggml_to_float(kind: int, data: np.ndarray, n: int) -> np.ndarray:
    """Decode `n` values of GGML type `kind` with ggml's type traits (libggml-base)."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(sorted(lib_dir.glob("libggml-base.*"))[0]))

    class Traits(ctypes.Structure):  # ggml.h: struct ggml_type_traits
        _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                    ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                    ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                    ("from_float_ref", ctypes.c_void_p)]  # fmt: skip

    lib.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    traits = lib.ggml_get_type_traits(kind).contents
    assert traits.type_name == b"mxfp4"
    to_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        traits.to_float)
    src = np.ascontiguousarray(data, dtype=np.uint8)
    out = np.empty(n, dtype=np.float32)
    to_float(src.ctypes.data, out.ctypes.data, n)
    return out


def _experts(bundle: Path) -> dict[str, object]:
    import gguf

    return {t.name: t for t in gguf.GGUFReader(bundle / "model.gguf").tensors
            if t.name.split(".")[-2] in EXPERTS and t.name.endswith(".weight")}  # fmt: skip


@pytest.mark.engine
@pytest.mark.reference
def test_experts_decode_in_ggml_exactly_as_transformers_dequantizes_them(bundle_factory,
                                                                          fixture_checkpoint):
    import gguf

    from packager.calibrate import load_reference_model

    model = load_reference_model(fixture_checkpoint(NAME))
    tensors = _experts(bundle_factory(NAME, "F16"))
    assert len(tensors) == 3 * len(model.model.layers)
    for i, layer in enumerate(model.model.layers):
        gu = layer.mlp.experts.gate_up_proj.detach().numpy()  # [E, H, 2F]
        down = layer.mlp.experts.down_proj.detach().numpy()  # [E, F, H]
        want = {"ffn_gate_exps": gu[:, :, 0::2].transpose(0, 2, 1),
                "ffn_up_exps": gu[:, :, 1::2].transpose(0, 2, 1),
                "ffn_down_exps": down.transpose(0, 2, 1)}  # fmt: skip
        for proj, w in want.items():
            t = tensors[f"blk.{i}.{proj}.weight"]
            assert t.tensor_type == gguf.GGMLQuantizationType.MXFP4
            got = _ggml_to_float(int(t.tensor_type), np.asarray(t.data), w.size)
            np.testing.assert_array_equal(got.reshape(w.shape), w)


@pytest.mark.engine
def test_quantized_builds_keep_the_experts_bytes(bundle_factory):
    """Q8_0 and Q4_K_M quantize what is not an expert and copy the MXFP4 experts."""
    import gguf

    f16 = _experts(bundle_factory(NAME, "F16"))
    for quant in ("Q8_0", "Q4_K_M"):
        bundle = bundle_factory(NAME, quant)
        got = _experts(bundle)
        for name, t in f16.items():
            assert got[name].tensor_type == gguf.GGMLQuantizationType.MXFP4
            assert np.asarray(got[name].data).tobytes() == np.asarray(t.data).tobytes(), name
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(bundle / "model.gguf").tensors}
        assert types["blk.0.attn_v.weight"] not in ("F16", "F32", "MXFP4")


@pytest.mark.engine
@pytest.mark.reference
def test_f16_bundle_is_as_close_as_llama_cpps_mxfp4_kernel_allows(bundle_factory,
                                                                   fixture_checkpoint):
    """F16 around MXFP4 experts vs transformers' dequantized model. llama.cpp multiplies MXFP4
    experts against activations it rounds to Q8_0 blocks (ggml's vec_dot for MXFP4), which costs
    what a Q8_0 build costs: the threshold is a Q8_0 build's, not F16's. The packing itself is
    exact (the test above)."""
    from edgemoe_fixtures.corpus import heldout_text
    from packager.fidelity import gguf_logits, measure, reference_logits, token_chunks

    ckpt = fixture_checkpoint(NAME)
    chunks = token_chunks(ckpt, heldout_text(), n_tokens=1024, chunk=128)
    d = measure(reference_logits(ckpt, chunks),
                gguf_logits(bundle_factory(NAME, "F16") / "model.gguf", chunks), chunks)
    print(f"{NAME} F16 (MXFP4 experts): top1={d.top1_agreement:.4f} kl={d.mean_kl:.2e}")
    assert d.n_tokens >= 1000 and d.top1_agreement >= 0.99 and d.mean_kl <= 1e-4


@pytest.mark.engine
@pytest.mark.reference
def test_onnx_fp32_matches_dequantized_transformers(bundle_factory, fixture_checkpoint):
    from edgemoe_fixtures.corpus import heldout_text
    from packager.fidelity import measure, onnx_logits, reference_logits, token_chunks

    ckpt = fixture_checkpoint(NAME)
    chunks = token_chunks(ckpt, heldout_text(), n_tokens=512, chunk=128)
    bundle = bundle_factory(NAME, "fp32", format="onnx")
    d = measure(reference_logits(ckpt, chunks), onnx_logits(bundle / "model.onnx", chunks),
                chunks)  # fmt: skip
    assert d.top1_agreement >= 0.995 and d.mean_kl <= 1e-6


@pytest.mark.engine
def test_tokens_identical_at_every_budget(bundle_factory):
    import runtime
    from runtime.api import minimum_budget

    bundle = bundle_factory(NAME, "Q8_0")
    prompt = "import os\nimport sys\n\ndef main(argv):\n    "

    def greedy(budget, **kw):
        with runtime.load(bundle, budget=budget, threads=2, **kw) as m:
            return m.generate(prompt, max_tokens=32).tokens, m.stats()

    reference, _ = greedy("100%")
    for budget in ("50%", "25%", minimum_budget(bundle)):
        tokens, stats = greedy(budget)
        assert tokens == reference, budget
        assert stats.offloading and stats.misses > 0
    tokens, stats = greedy("25%", cold=True)
    assert tokens == reference and stats.prefetch.state == "on"
