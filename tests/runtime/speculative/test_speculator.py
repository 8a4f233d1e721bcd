"""Speculative decoding on real engines: greedy output is the target's own, token for token, on
every family and both backends, with a low-bit draft, a pruned draft and n-gram lookup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.api import minimum_budget
from runtime.errors import BudgetError, EdgemoeError
from tests.conftest import ARCH_FIXTURES, ONNX_FIXTURES

pytestmark = pytest.mark.engine

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    args = argv[1:]\n    "
N = 40


def _generate(bundle: Path, budget: str | int = "100%", **kw) -> tuple[list[int], dict]:
    sampling = {k: kw.pop(k) for k in ("temperature", "top_p", "top_k", "seed") if k in kw}
    with runtime.load(bundle, budget=budget, **kw) as model:
        if model.speculation is not None:
            model.speculation.auto = False  # measure speculation itself, not the switch
        r = model.generate(PROMPT, max_tokens=N, **sampling)
        assert r.usage.completion_tokens == len(r.tokens)
        return r.tokens, model.stats()


def _check_identical(target: Path, drafts: dict[str, Path | str], backend: str | None) -> None:
    reference, _ = _generate(target, backend=backend)
    assert len(reference) > 0
    for label, draft in drafts.items():
        for budget in ("100%", "50%"):
            tokens, stats = _generate(target, budget, backend=backend, draft=draft,
                                      draft_tokens=4)
            assert tokens == reference, f"{label} draft at {budget}"
            if stats.speculation_off is not None:  # a recurrent draft model cannot roll back its
                why = stats.speculation_off  # drafts; nor can llama.cpp some targets' state
                assert why.startswith("llama.cpp cannot roll back the recurrent state") or (
                    label != "ngram" and "has recurrent layers" in why), why
                continue
            spec = stats.speculation
            assert spec.drafted_tokens > 0 and spec.verify_steps > 0, label
            assert spec.acceptance_rate == pytest.approx(spec.accepted_tokens / spec.drafted_tokens)


@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_greedy_output_is_the_targets_llama_cpp(name, bundle_factory):
    _check_identical(
        bundle_factory(name, "F16"),
        {"Q4_0": bundle_factory(name, "Q4_0"), "ngram": "ngram"},
        backend=None,
    )


@pytest.mark.parametrize("name", ONNX_FIXTURES)
def test_greedy_output_is_the_targets_onnx(name, bundle_factory):
    _check_identical(
        bundle_factory(name, "fp32", format="onnx"),
        {"int4": bundle_factory(name, "int4", format="onnx"), "ngram": "ngram"},
        backend="onnx",
    )


def test_greedy_output_with_a_pruned_draft(bundle_factory):
    name = "qwen3moe-tiny"
    _check_identical(
        bundle_factory(name, "F16"), {"pruned": bundle_factory(name, "Q8_0", prune=0.25)}, None
    )


@pytest.mark.parametrize("backend", ["llama.cpp", "onnx"])
def test_a_draft_that_is_mostly_wrong_costs_speed_never_tokens(backend, bundle_factory):
    """Another checkpoint with the same tokenizer drafts: most drafts are rejected, so both
    KV caches are rolled back at almost every step."""
    if backend == "onnx":
        target = bundle_factory("deepseek2-tiny", "fp32", format="onnx")
        drafts = {"other": bundle_factory("qwen2moe-tiny", "int4", format="onnx")}
    else:
        target = bundle_factory("deepseek2-tiny", "F16")
        drafts = {"other": bundle_factory("qwen2moe-tiny", "Q4_0")}
    _check_identical(target, drafts, backend=backend)
    _, stats = _generate(target, backend=backend, draft=drafts["other"])
    assert stats.speculation.acceptance_rate < 0.5


@pytest.mark.parametrize("backend", ["llama.cpp", "onnx"])
def test_truncate_rolls_the_cache_back(backend, bundle_factory):
    """Decoding after a truncation gives the logits the shorter history always gave."""
    name = "deepseek2-tiny"  # MLA: the cached latent is not a plain key/value pair
    bundle = (bundle_factory(name, "F16") if backend == "llama.cpp"
              else bundle_factory(name, "fp32", format="onnx"))
    with runtime.load(bundle, backend=backend) as model:
        engine, ids = model.engine, model.tokenize(PROMPT)
        engine.reset()
        engine.decode(ids)
        first = engine.decode([11, 12, 13], all_outputs=True)
        rows = engine.last_logits
        assert rows.shape == (3, engine.n_vocab) and np.array_equal(rows[-1], first)
        engine.decode([40, 41])
        engine.truncate(len(ids))
        assert engine.n_past == len(ids)
        again = engine.decode([11, 12, 13], all_outputs=True)
        assert np.array_equal(engine.last_logits, rows) and np.array_equal(again, first)
        with pytest.raises(EdgemoeError, match="cannot truncate"):
            engine.truncate(engine.n_past + 1)


@pytest.mark.parametrize("draft", ["Q4_0", "ngram"])
def test_sampled_speculation_is_seeded(draft, bundle_factory):
    target = bundle_factory("qwen3moe-tiny", "F16")
    d = bundle_factory("qwen3moe-tiny", "Q4_0") if draft == "Q4_0" else "ngram"
    kw = {"draft": d, "temperature": 0.9, "top_p": 0.95, "top_k": 40}
    a, stats = _generate(target, seed=11, **kw)
    b, _ = _generate(target, seed=11, **kw)
    assert a == b and len(a) == N and stats.speculation.drafted_tokens > 0


def test_the_auto_switch_never_changes_tokens(bundle_factory):
    target = bundle_factory("qwen3moe-tiny", "F16")
    reference, _ = _generate(target)
    with runtime.load(target, draft=bundle_factory("qwen3moe-tiny", "Q4_0")) as model:
        for _ in range(3):
            assert model.generate(PROMPT, max_tokens=N).tokens == reference
        s = model.stats()
    assert s.speculation.speculation_state in ("measure", "speculate", "plain")
    assert s.speculation.plain_tok_s > 0  # the switch timed plain decoding first


def test_requests_it_cannot_serve_decode_plainly(bundle_factory):
    """n > 1, logprobs, logit_bias and response_format run the plain path, with the same
    answers as the target alone; a plain chat request is served by speculation."""
    target = bundle_factory("qwen3moe-tiny", "F16")
    asks = [{"n": 2, "temperature": 0.8, "seed": 3}, {"logprobs": 2},
            {"logit_bias": {7: 5.0}}, {"response_format": {"type": "json_object"}}]
    messages = [{"role": "user", "content": "hello"}]
    with runtime.load(target) as model:
        alone = [model.chat(messages, max_tokens=12, **ask) for ask in asks]
    with runtime.load(target, draft="ngram") as model:
        model.speculation.auto = False
        for ask, ref in zip(asks, alone, strict=True):
            r = model.chat(messages, max_tokens=12, **ask)
            assert [c.tokens for c in r.choices] == [c.tokens for c in ref.choices], ask
            assert r.logprobs == ref.logprobs
        assert model.stats().speculation.verify_steps == 0
        model.chat(messages, max_tokens=12)
        assert model.stats().speculation.verify_steps > 0


@pytest.mark.parametrize("draft", ["Q4_0", "ngram"])
def test_stop_strings_and_max_tokens_end_where_the_target_ends(draft, bundle_factory):
    """A stop string or max_tokens met inside a run of accepted drafts ends the answer there."""
    target = bundle_factory("qwen3moe-tiny", "F16")
    d = bundle_factory("qwen3moe-tiny", "Q4_0") if draft == "Q4_0" else "ngram"
    with runtime.load(target) as model:
        whole = model.generate(PROMPT, max_tokens=N).text
        stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
        asks = [{"max_tokens": N, "stop": [stop]}, {"max_tokens": 7}, {"max_tokens": 1}]
        alone = [model.generate(PROMPT, **ask) for ask in asks]
    with runtime.load(target, draft=d) as model:
        model.speculation.auto = False
        for ask, ref in zip(asks, alone, strict=True):
            r = model.generate(PROMPT, **ask)
            assert (r.text, r.tokens, r.finish_reason) == (ref.text, ref.tokens,
                                                          ref.finish_reason), ask
            assert "".join(model.stream(PROMPT, **ask)) == ref.text


def test_the_draft_counts_against_the_budget(bundle_factory):
    target = bundle_factory("qwen3moe-tiny", "F16")
    draft = bundle_factory("qwen3moe-tiny", "Q4_0")
    alone = minimum_budget(target)
    with pytest.raises(BudgetError, match="for the model and its draft") as e:
        runtime.load(target, budget=alone, draft=draft)
    need = minimum_budget(target, draft=draft)
    assert need > alone and f"minimum of {need:,} bytes" in str(e.value)
    with pytest.raises(BudgetError, match=f"minimum of {need:,} bytes"):
        runtime.load(target, budget=need - 1, draft=draft)
    _, stats = _generate(target, need, draft=draft)
    assert stats.budget_bytes + stats.speculation.draft_budget_bytes <= need
    assert stats.offloading and stats.speculation.draft_expert_capacity_bytes > 0
    _, stats = _generate(target, "50%", draft=draft)
    assert stats.expert_capacity_bytes == stats.expert_bytes_total // 2
    spec = stats.speculation
    assert spec.draft_budget_bytes == (spec.draft_dense_bytes + spec.draft_kv_bytes
                                       + spec.draft_expert_capacity_bytes)


def test_a_draft_with_another_vocabulary_is_refused(bundle_factory, fixture_checkpoint,
                                                    tmp_path):
    """Two token ids swapped in the draft's tokenizer: same size, different meaning."""
    src = fixture_checkpoint("qwen3moe-tiny")
    ckpt = tmp_path / "swapped"
    shutil.copytree(src, ckpt)
    tok = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    a, b = (t for t, i in vocab.items() if i in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (ckpt / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    from packager.api import PackOptions, pack

    pack(PackOptions(src=str(ckpt), out_dir=tmp_path / "draft", quant="Q4_0", reference=False))
    with pytest.raises(EdgemoeError, match=r"does not share the vocabulary.*token 300"):
        runtime.load(bundle_factory("qwen3moe-tiny", "F16"), draft=tmp_path / "draft")
