"""The runtime's Python API on real llama.cpp: answers never depend on the memory budget."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

import runtime
from runtime.api import minimum_budget
from runtime.errors import BudgetError, ChatTemplateError, PromptTooLongError, SamplingError
from runtime.generation.request import DEFAULT_MAX_TOKENS, GenerationRequest, SamplingParams
from tests.conftest import ARCH_FIXTURES

pytestmark = pytest.mark.engine

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    "


def _greedy(bundle, budget, **kw):
    with runtime.load(bundle, budget=budget, **kw) as model:
        r = model.generate(PROMPT, max_tokens=32)
        return r.tokens, model.stats()


@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_tokens_identical_at_every_budget(name, bundle_factory):
    bundle = bundle_factory(name, "Q8_0")
    reference, full = _greedy(bundle, "100%")
    assert len(reference) > 0 and not full.offloading
    for budget in ("50%", "25%", minimum_budget(bundle)):
        tokens, stats = _greedy(bundle, budget)
        assert tokens == reference, f"{name} at {budget}"
        assert stats.offloading
        assert stats.resident_expert_bytes <= stats.expert_capacity_bytes
        assert stats.hits + stats.misses > 0
    cold, stats = _greedy(bundle, "25%", cold=True)
    assert cold == reference


def test_budget_below_minimum_is_refused_with_the_minimum(tiny_bundle):
    need = minimum_budget(tiny_bundle)
    with pytest.raises(BudgetError, match=f"minimum of {need:,} bytes"):
        runtime.load(tiny_bundle, budget=need - 1)


def test_stats_report_budget_and_experts(tiny_bundle):
    with runtime.load(tiny_bundle, budget="50%") as model:
        model.generate(PROMPT, max_tokens=8)
        s = model.stats()
    for key in (
        "budget_bytes",
        "dense_bytes",
        "resident_expert_bytes",
        "hits",
        "misses",
        "bytes_loaded",
        "evictions",
        "prefill_tok_s",
        "decode_tok_s",
        "ttft_s",
        "hot_experts",
    ):
        assert key in s.to_json()  # the JSON keys the CLI and benches read
    assert s.last_run is not None and s.last_run.decode_tok_s > 0
    assert s.budget_bytes == s.dense_bytes + s.kv_bytes + s.expert_capacity_bytes
    assert s.expert_capacity_bytes == s.expert_bytes_total // 2


def test_stream_equals_generate(tiny_bundle):
    with runtime.load(tiny_bundle) as model:
        whole = model.generate(PROMPT, max_tokens=24)
        pieces = list(model.stream(PROMPT, max_tokens=24))
    assert "".join(pieces) == whole.text


def test_seeded_sampling_is_reproducible(tiny_bundle):
    with runtime.load(tiny_bundle) as model:
        a = model.generate(PROMPT, max_tokens=24, temperature=1.0, top_p=0.9, seed=7)
        b = model.generate(PROMPT, max_tokens=24, temperature=1.0, top_p=0.9, seed=7)
        c = model.generate(PROMPT, max_tokens=24, temperature=1.0, top_p=0.9, seed=8)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_max_tokens_and_stop_strings(tiny_bundle):
    with runtime.load(tiny_bundle) as model:
        r = model.generate(PROMPT, max_tokens=16)
        assert r.finish_reason == "length" and r.usage.completion_tokens == 16
        assert r.usage.prompt_tokens == len(model.tokenize(PROMPT))
        stop = r.text[4:7]
        cut = model.generate(PROMPT, max_tokens=16, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == r.text[: r.text.index(stop)]


def test_cancel_stops_generation(tiny_bundle):
    cancel = threading.Event()
    with runtime.load(tiny_bundle) as model:
        events = model.stream_events(PROMPT, max_tokens=200, cancel=cancel)
        next(e for e in events if e.text)
        cancel.set()
        last = list(events)[-1]
    assert last.finish_reason == "cancelled"
    assert last.usage.completion_tokens < 200


def test_prompt_longer_than_context(tiny_bundle):
    with runtime.load(tiny_bundle, n_ctx=64) as model:
        with pytest.raises(PromptTooLongError, match="exceeds the context window of 64"):
            model.generate("word " * 200, max_tokens=4)
        with pytest.raises(PromptTooLongError, match="max_tokens=100"):
            model.generate("hello", max_tokens=100)


@pytest.mark.parametrize(
    "kw", [{"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"temperature": float("nan")}]
)
def test_out_of_range_sampling(tiny_bundle, kw):
    with runtime.load(tiny_bundle) as model, pytest.raises(SamplingError):
        model.generate("hi", **kw)


def test_chat_uses_the_bundle_template(tiny_bundle):
    with runtime.load(tiny_bundle) as model:
        prompt = model.apply_chat_template([{"role": "user", "content": "hi"}])
        assert "<|im_start|>user\nhi<|im_end|>" in prompt
        assert prompt.rstrip().endswith("<|im_start|>assistant")
        r = model.chat([{"role": "user", "content": "hi"}], max_tokens=8)
        assert r.usage.prompt_tokens == len(model.tokenize(prompt))
        with pytest.raises(ValueError, match="role"):
            model.apply_chat_template([{"role": "robot", "content": "x"}])


def test_generation_runs_the_prepared_tokens(tiny_bundle):
    """prepare tokenizes once; generation uses the prepared ids, not the text, so a request
    carrying the same ids under another text answers exactly as the original prompt."""
    with runtime.load(tiny_bundle) as model:
        request = GenerationRequest(prompt=PROMPT, params=SamplingParams(max_tokens=12))
        prepared = model.prepare(request)
        assert prepared.prompt == PROMPT and prepared.prompt_ids == tuple(model.tokenize(PROMPT))
        # The seed is resolved once, here (a fresh one when none was given).
        assert replace(prepared.params, seed=None) == request.params
        assert isinstance(prepared.params.seed, int)
        direct = model.generate(PROMPT, max_tokens=12)
        relabelled = model.generate_prepared(replace(prepared, prompt="not what runs"))
    assert relabelled.tokens == direct.tokens and relabelled.text == direct.text
    assert relabelled.usage.prompt_tokens == len(prepared.prompt_ids)


def test_default_max_tokens_fits_the_window(tiny_bundle):
    """Without max_tokens a generation takes DEFAULT_MAX_TOKENS or what is left of the window;
    only an explicit max_tokens that does not fit is refused."""
    with runtime.load(tiny_bundle, n_ctx=64) as model:
        prompt = "word " * 15
        prepared = model.prepare(GenerationRequest(prompt=prompt))
        room = 64 - len(prepared.prompt_ids)
        assert 0 < room < DEFAULT_MAX_TOKENS and prepared.max_tokens == room
        r = model.generate(prompt)
        assert r.usage.completion_tokens <= room
        with pytest.raises(PromptTooLongError, match=f"max_tokens={room + 1}"):
            model.generate(prompt, max_tokens=room + 1)
        short = model.prepare(GenerationRequest(prompt="hi"))
    assert short.max_tokens == min(DEFAULT_MAX_TOKENS, 64 - len(short.prompt_ids))


def test_prepare_refuses_bad_messages_before_generating(tiny_bundle):
    with runtime.load(tiny_bundle) as model:
        with pytest.raises(ChatTemplateError, match=r"messages\[1\]\.role"):
            model.prepare(GenerationRequest(messages=[
                {"role": "user", "content": "hi"}, {"role": "robot", "content": "x"},
            ]))
        with pytest.raises(ChatTemplateError, match="list"):
            model.chat("hi")
