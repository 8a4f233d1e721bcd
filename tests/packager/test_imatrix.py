"""Importance matrix: llama.cpp's semantics, its file format, and what it buys at low bit widths."""

from __future__ import annotations

import numpy as np
import pytest

from edgemoe_fixtures.corpus import calibration_text, heldout_text
from tests.conftest import ARCH_FIXTURES

FIXTURE = "qwen3moe-trained"
pytestmark = [pytest.mark.reference]


@pytest.fixture(scope="module")
def ckpt(fixture_checkpoint):
    return fixture_checkpoint(FIXTURE)


@pytest.fixture(scope="module")
def chunks(ckpt):
    from packager.calibrate import resolve, tokenize

    return tokenize(resolve(ckpt), [calibration_text()], chunk=512, max_tokens=4096)


@pytest.fixture(scope="module")
def stats(ckpt, chunks):
    from packager.imatrix import collect_imatrix_ids

    return collect_imatrix_ids(ckpt, chunks, datasets=("calibration_text",))


@pytest.fixture(scope="module")
def f32_gguf(ckpt, tmp_path_factory):
    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    out = tmp_path_factory.mktemp("imatrix") / "f32.gguf"
    write_gguf(open_checkpoint(ckpt), out, "F32")
    return out


def test_covers_every_quantized_block_matrix(stats, f32_gguf):
    import gguf

    tensors = {t.name: t for t in gguf.GGUFReader(f32_gguf).tensors}
    want = {n for n, t in tensors.items()
            if n.startswith("blk.") and len(t.shape) >= 2 and "ffn_gate_inp" not in n}
    assert want <= set(stats.sums), sorted(want - set(stats.sums))
    imp = stats.importance()
    for name in want:
        t = tensors[name]
        n_per_row, n_mat = int(t.shape[0]), int(np.prod(t.shape[2:], dtype=int))
        assert imp[name].shape == (n_per_row * n_mat,), name  # what llama-quantize checks
    # Experts are counted over routed tokens only: each layer's counts add to tokens * top_k.
    n_tokens = stats.counts["blk.0.attn_q.weight"][0]
    assert stats.counts["blk.0.ffn_gate_exps.weight"].sum() == 2 * n_tokens


@pytest.mark.engine
def test_expert_statistics_match_llama_cpp_activations(ckpt, chunks, stats, f32_gguf):
    """Recompute ffn_down_exps' statistics from llama.cpp's own tensors (routing + swiglu)."""
    from runtime.backends.base import EngineConfig
    from runtime.backends.llama_cpp.backend import PROBS, LlamaBackend

    n_exp, top_k = 16, 2
    sums = {}
    counts = {}
    pending: dict[int, np.ndarray] = {}

    def observe(layer, kind, data):
        if kind == PROBS:
            probs = data.reshape(-1, n_exp)
            pending[layer] = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        elif kind == "ffn_moe_swiglu":
            ids = pending.pop(layer)
            act = data.astype(np.float64).reshape(ids.shape[0], top_k, -1)
            s = sums.setdefault(layer, np.zeros((n_exp, act.shape[-1])))
            c = counts.setdefault(layer, np.zeros(n_exp, dtype=np.int64))
            for slot in range(top_k):
                np.add.at(s, ids[:, slot], act[:, slot] ** 2)
                np.add.at(c, ids[:, slot], 1)

    cfg = EngineConfig(f32_gguf, n_ctx=512, n_threads=2, n_batch=512, n_ubatch=512)
    engine = LlamaBackend(cfg, extra_taps=(PROBS, "ffn_moe_swiglu"), tensor_observer=observe)
    try:
        for c in chunks:
            engine.reset()
            engine.decode(c, all_outputs=True)
    finally:
        engine.close()
    for layer in (0, 1, 2, 3):
        name = f"blk.{layer}.ffn_down_exps.weight"
        ours = stats.sums[name] / np.maximum(stats.counts[name], 1)[:, None]
        theirs = sums[layer] / np.maximum(counts[layer], 1)[:, None]
        agree = counts[layer] == stats.counts[name]
        assert agree.mean() >= 0.75, (counts[layer], stats.counts[name])
        # Two float32 engines: compare on the scale of the tensor's largest statistic.
        err = np.abs(ours[agree] - theirs[agree]).max() / theirs[agree].max()
        assert err < 1e-3, (layer, err)


def test_gguf_file_round_trip(stats, tmp_path):
    import gguf

    from packager.imatrix import load_imatrix, save_imatrix

    path = save_imatrix(stats, tmp_path / "imatrix.gguf")
    back = load_imatrix(path)
    assert set(back.sums) == set(stats.sums)
    for name in stats.sums:
        np.testing.assert_allclose(back.sums[name], stats.sums[name], rtol=1e-6)
        np.testing.assert_array_equal(back.counts[name], stats.counts[name])
    assert (back.chunk_count, back.chunk_size) == (stats.chunk_count, stats.chunk_size)
    assert back.datasets == ("calibration_text",)
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.type"].contents() == "imatrix"
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    # ggml order: in_sum2 is [n_per_row, n_mat], counts [1, n_mat]
    assert shapes["blk.0.ffn_down_exps.weight.in_sum2"] == (256, 16)
    assert shapes["blk.0.ffn_down_exps.weight.counts"] == (1, 16)


# Measured on this fixture (KL ratio imatrix / plain over 1-16k calibration tokens): Q3_K_S
# 0.90-0.92, IQ4_XS 0.91-0.96, Q2_K 0.92, IQ3_S 0.93; at 4 bits and above K-quants move within
# +-8% either way (Q4_K_M 0.97-1.09): its attention inputs have nearly flat statistics, and half
# of its KL comes from token_embd, which no importance matrix touches. The fixture is trained
# here, so its weights depend on the CPU's float kernels: built on a CPU without AVX-512 (AMD
# Zen 3), Q3_K_S read 1.015 (top-1 0.916 -> 0.921), IQ4_XS 0.964, Q4_K_M 0.99. So Q3_K_S is
# held to "no worse than 5 %", IQ4_XS to a gain.
@pytest.mark.engine
@pytest.mark.parametrize(("quant", "max_ratio"), [("Q3_K_S", 1.05), ("IQ4_XS", 0.99),
                                                  ("Q4_K_M", 1.10)])
def test_imatrix_kl_on_heldout_text(quant, max_ratio, stats, f32_gguf, heldout):
    from packager.fidelity import gguf_logits, measure
    from packager.quantize import QuantizeOptions, quantize

    ref, chunks = heldout
    out = f32_gguf.parent
    plain = quantize(f32_gguf, out / f"{quant}.gguf", QuantizeOptions(quant))
    imat = quantize(f32_gguf, out / f"{quant}-imat.gguf",
                    QuantizeOptions(quant, imatrix=stats.importance()))
    d_plain = measure(ref, gguf_logits(plain, chunks), chunks)
    d_imat = measure(ref, gguf_logits(imat, chunks), chunks)
    print(f"{quant}: KL {d_plain.mean_kl:.5f} -> {d_imat.mean_kl:.5f}, "
          f"top1 {d_plain.top1_agreement:.3f} -> {d_imat.top1_agreement:.3f}")
    assert d_imat.mean_kl < max_ratio * d_plain.mean_kl


@pytest.fixture(scope="module")
def heldout(ckpt):
    from packager.fidelity import reference_logits, token_chunks

    chunks = token_chunks(ckpt, heldout_text(), n_tokens=1024, chunk=256)
    return reference_logits(ckpt, chunks), chunks


@pytest.mark.engine
def test_very_low_bit_iq_types_need_an_imatrix(stats, f32_gguf):
    import gguf

    from packager.errors import PackError
    from packager.quantize import QuantizeOptions, quantize

    out = f32_gguf.parent
    one = {r"blk\.0\.ffn_down_exps": "iq3_xxs"}  # one tensor keeps the test fast
    with pytest.raises(PackError):
        quantize(f32_gguf, out / "iq3xxs-plain.gguf", QuantizeOptions("Q8_0", tensor_types=one))
    made = quantize(f32_gguf, out / "iq3xxs.gguf",
                    QuantizeOptions("Q8_0", imatrix=stats.importance(), tensor_types=one))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(made).tensors}
    assert types["blk.0.ffn_down_exps.weight"] == "IQ3_XXS"
    assert types["blk.1.ffn_down_exps.weight"] == "Q8_0"


@pytest.mark.engine
@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_every_family_quantizes_with_its_imatrix(name, fixture_checkpoint, tmp_path):
    """llama.cpp refuses an imatrix whose size does not match a tensor, so this checks layout."""
    import gguf

    from packager.gguf_build import write_gguf
    from packager.imatrix import collect_imatrix
    from packager.quantize import QuantizeOptions, quantize
    from packager.source import open_checkpoint

    ck = fixture_checkpoint(name)
    stats = collect_imatrix(ck, [calibration_text()], chunk_tokens=256, max_tokens=512)
    base = write_gguf(open_checkpoint(ck), tmp_path / "f32.gguf", "F32").path
    out = quantize(base, tmp_path / "q.gguf", QuantizeOptions("Q4_K_M", imatrix=stats.importance()))
    # What the quantizer quantized: routers, recurrent layers' conv kernels and SSM parameters
    # (Mamba2's A and D, its grouped norm) stay F32 (no matmul reads them).
    matrices = {t.name for t in gguf.GGUFReader(out).tensors
                if t.name.startswith("blk.") and len(t.shape) >= 2
                and t.tensor_type != gguf.GGMLQuantizationType.F32}
    # DeepSeek's k_b/v_b are split from kv_b and skipped; DeepSeek-V4's token-id table is
    # integers and its compressors' position biases are added, never multiplied.
    uncovered = {n for n in matrices - set(stats.sums)
                 if not n.endswith(("attn_k_b.weight", "attn_v_b.weight",
                                    "ffn_gate_tid2eid.weight", "_ape.weight"))}
    assert not uncovered
    assert all("kv_b_proj" in s for s in stats.skipped)


def test_load_refuses_files_that_are_not_imatrices(f32_gguf, tmp_path):
    from packager.imatrix import ImatrixError, load_imatrix

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ImatrixError, match="junk.gguf: not a GGUF imatrix file"):
        load_imatrix(junk)
    with pytest.raises(ImatrixError, match="matching '.in_sum2' and '.counts'"):
        load_imatrix(f32_gguf)  # a model, not an importance matrix
    with pytest.raises(ImatrixError, match="not found"):
        load_imatrix(tmp_path / "absent.gguf")
