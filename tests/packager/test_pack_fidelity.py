"""Packed bundles in stock llama.cpp agree with transformers (float32), per architecture."""

from __future__ import annotations

import json

import llama_cpp
import numpy as np
import pytest

from edgemoe_fixtures.corpus import heldout_text
from packager.default_texts import DEFAULT_TEXT_NAME, default_heldout_text
from packager.fidelity import gguf_logits, reference_logits, token_chunks
from tests.conftest import ARCH_FIXTURES

pytestmark = [pytest.mark.engine, pytest.mark.reference]


def _kl_top1(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """Independent of packager.fidelity: torch's own log_softmax / kl_div."""
    import torch

    p = torch.log_softmax(torch.tensor(ref, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.tensor(cand, dtype=torch.float64), -1)
    kl = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1)
    return float(kl.mean()), float((ref.argmax(-1) == cand.argmax(-1)).mean())


@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_f16_bundle_matches_transformers(name, bundle_factory, fixture_checkpoint):
    ckpt = fixture_checkpoint(name)
    bundle = bundle_factory(name, "F16")
    chunks = token_chunks(ckpt, heldout_text(), n_tokens=1024, chunk=128)
    ref = np.concatenate(reference_logits(ckpt, chunks))
    cand = np.concatenate(gguf_logits(bundle / "model.gguf", chunks))
    kl, top1 = _kl_top1(ref, cand)
    print(f"{name} F16: tokens={len(ref)} top1={top1:.4f} mean_kl={kl:.2e}")
    assert len(ref) >= 1000
    assert top1 >= 0.995
    assert kl <= 1e-3


@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_greedy_continuation_matches_transformers(name, bundle_factory, fixture_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = fixture_checkpoint(name)
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    prompt = "def read_config(path):\n    "
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([ids]),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(ids) :].tolist()
    llm = llama_cpp.Llama(
        str(bundle_factory(name, "F16") / "model.gguf"), n_ctx=256, verbose=False, n_threads=2
    )
    llm.eval(ids)
    out = []
    for _ in range(24):
        last = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
        t = int(np.argmax(last))
        out.append(t)
        llm.eval([t])
    llm.close()
    assert out == ref


@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_llama_cpp_tokenizes_like_transformers(name, bundle_factory, fixture_checkpoint):
    from tokenizers import Tokenizer

    text = heldout_text()[:4000]
    hf = Tokenizer.from_file(str(fixture_checkpoint(name) / "tokenizer.json")).encode(text).ids
    llm = llama_cpp.Llama(
        str(bundle_factory(name, "F16") / "model.gguf"), vocab_only=True, verbose=False
    )
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == hf


@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_quantized_bundles_record_divergence(name, bundle_factory, fixture_checkpoint):
    """Each quantized bundle's report.json holds top-1/KL measured against transformers, and
    the numbers agree with an independent recomputation on the same tokens."""
    reports = {}
    for quant in ("Q8_0", "Q4_0"):
        bundle = bundle_factory(name, quant, reference=True)
        report = json.loads((bundle / "report.json").read_text())
        assert report["quant"] == quant and report["reference"] == "transformers float32"
        reports[quant] = report["divergence"]
    ckpt = fixture_checkpoint(name)
    # Without --eval-text the report measures the shipped general-purpose held-out text.
    assert report["eval_text"] == DEFAULT_TEXT_NAME
    chunks = token_chunks(ckpt, default_heldout_text(), n_tokens=512, chunk=128)
    ref = np.concatenate(reference_logits(ckpt, chunks))
    cand = np.concatenate(
        gguf_logits(bundle_factory(name, "Q4_0", reference=True) / "model.gguf", chunks)
    )
    kl, top1 = _kl_top1(ref, cand)
    assert reports["Q4_0"]["mean_kl"] == pytest.approx(kl, rel=1e-3)
    assert reports["Q4_0"]["top1_agreement"] == pytest.approx(top1)
    assert reports["Q8_0"]["mean_kl"] < reports["Q4_0"]["mean_kl"]
    print(
        name,
        {q: (round(d["top1_agreement"], 4), f"{d['mean_kl']:.2e}") for q, d in reports.items()},
    )
