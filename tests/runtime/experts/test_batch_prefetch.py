"""Prompt prefetch: pre-gating a whole prompt batch to read the next MoE layer's experts while
this one computes; on llama.cpp, tokens never change and the guesses are mostly used."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.experts.batch_prefetch import BatchPrefetch
from runtime.experts.pregate import Pregate, RouterWeights

N_EMBD, N_EXPERTS = 4, 6


def _pregate() -> Pregate:
    # Expert e of every layer scores hidden[e % 4] (+ a little for e >= 4): a token whose
    # hidden state is one-hot at i picks experts i and i + 4 (top 2) when i < 2.
    m = np.zeros((N_EXPERTS, N_EMBD), dtype=np.float32)
    for e in range(N_EXPERTS):
        m[e, e % N_EMBD] = 1.0 if e < N_EMBD else 0.5
    return Pregate({layer: RouterWeights(layer, m) for layer in (0, 1, 3)})


def _rows(*hot: int) -> np.ndarray:
    return np.eye(N_EMBD, dtype=np.float32)[list(hot)]


@pytest.mark.unit
def test_guesses_the_next_layers_most_picked_non_resident_experts():
    loads, forgets = [], []
    bp = BatchPrefetch(_pregate(), [0, 1, 3], top_k=2, load=lambda *k: loads.append(k),
                       forget=lambda *k: forgets.append(k))
    resident = {(1, 4)}
    # Tokens one-hot at 0, 0, 1: picks {0, 4}, {0, 4}, {1, 5} -> 0 and 4 twice, 1 and 5 once.
    n = bp.guess(0, _rows(0, 0, 1), lambda layer, e: (layer, e) in resident, slots=2)
    assert n == 2 and loads == [(1, 0), (1, 1)]  # 4 is resident; most picked first, 2 slots
    bp.routed(1, [0, 4, 2])
    assert (bp.used, bp.unused) == (1, 1) and forgets == [(1, 1)]
    assert bp.guess(3, _rows(0), lambda *_: False, slots=4) == 0  # no MoE layer after the last


@pytest.mark.unit
def test_the_last_layer_is_guessed_from_the_last_token_and_leftovers_settle():
    loads, forgets = [], []
    bp = BatchPrefetch(_pregate(), [0, 1, 3], top_k=2, load=lambda *k: loads.append(k),
                       forget=lambda *k: forgets.append(k))
    bp.guess(1, _rows(0, 0, 0, 1), lambda *_: False, slots=6)  # layer 3 is the last
    assert sorted(e for _, e in loads) == [1, 5]  # only the last token's picks
    bp.settle(lambda layer, e: e == 5)  # its event never came; 5 is in the books anyway
    assert forgets == [(3, 1)] and bp.unused == 1
    assert bp.guess(0, _rows(0), lambda *_: False, slots=0) == 0  # no room: no reads


@pytest.mark.engine
def test_prompt_prefetch_reads_what_the_prompt_then_uses(bundle_factory):
    import runtime
    from edgemoe_fixtures.corpus import heldout_text
    from runtime.backends.llama_cpp import tap

    if tap.native_library() is None:
        pytest.skip("no C compiler for the routing tap")
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    prompt = heldout_text()[:600]
    runs = {}
    for prefetch in (False, True):
        with runtime.load(bundle, budget="25%", cold=True, threads=1, n_ctx=1024,
                          prefetch=prefetch) as m:
            r = m.generate(prompt, max_tokens=8)
            runs[prefetch] = (r.tokens, m.stats())
    assert runs[False][0] == runs[True][0]
    on = runs[True][1]
    assert runs[False][1].prefetch.prompt_prefetch_experts is None  # no prompt prefetch: no figures
    assert on.prefetch.prompt_prefetch_used_experts > on.prefetch.prompt_prefetch_unused_experts
    assert on.prefetch.prompt_prefetch_experts >= on.prefetch.prompt_prefetch_used_experts > 0
    b = on.latency.ttft_breakdown
    assert b.tokens > 1 and b.expert_bytes > 0 and b.ttft_ms >= b.step_ms
    assert b.dense_pending_bytes == 0  # the load waited for the dense weights


@pytest.mark.engine
def test_onnx_prompt_prefetch_reads_what_the_prompt_then_uses(bundle_factory, monkeypatch,
                                                              tmp_path):
    """The ONNX taps hand each prompt batch's residual stream over with its routing, and the
    routers come from the ONNX graph: the same prompt prefetch as on llama.cpp, same tokens."""
    import runtime
    from edgemoe_fixtures.corpus import heldout_text

    monkeypatch.setenv("EDGEMOE_ONNX_CACHE", str(tmp_path / "onnx-packed"))
    bundle = bundle_factory("qwen3moe-trained", "Q8_0", format="gguf,onnx")
    prompt = heldout_text()[:600]
    runs = {}
    for prefetch in (False, True):
        with runtime.load(bundle, backend="onnx", budget="25%", cold=True, threads=1,
                          n_ctx=1024, prefetch=prefetch) as m:
            assert m.engine.paging == "tapped"
            r = m.generate(prompt, max_tokens=8)
            runs[prefetch] = (r.tokens, m.stats(), m.prefetch)
    assert runs[False][2] == "off" and runs[True][2] == "on (prompts)"
    assert runs[False][0] == runs[True][0]
    on = runs[True][1].prefetch
    assert on.prompt_prefetch_used_experts > on.prompt_prefetch_unused_experts
    assert on.prompt_prefetch_experts >= on.prompt_prefetch_used_experts > 0
