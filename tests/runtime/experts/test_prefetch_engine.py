"""Prefetch and the C routing tap on real engines: tokens never change, guesses are pre-gating's.

The pure logic is in test_prefetch.py; here llama.cpp runs. Timing targets live in
bench/bench_prefetch.py, never here.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.base import PREFETCH_BASE, EngineConfig
from runtime.backends.llama_cpp import tap
from runtime.bundles.open import open_bundle
from runtime.experts.prefetch import evaluate, render_scores
from runtime.experts.prefetcher import PrefetchSettings, tap_tables
from runtime.experts.pregate import Pregate, next_layers, read_routers
from tests.conftest import ARCH_FIXTURES

pytestmark = pytest.mark.engine

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    "
# Never turn itself off during a test: every guess is issued, whatever it wastes.
ALWAYS = PrefetchSettings(depth=2, window=10**6, idle_span=10**6)
FROM_OUTPUT = PrefetchSettings(depth=2, window=10**6, idle_span=10**6, source="l_out")


def _native() -> bool:
    return tap.native_library() is not None


needs_native = pytest.mark.skipif(not _native(), reason="no C compiler for the routing tap")


# Families pre-gating cannot guess for (a sqrt-softplus router over hyper-connection streams):
# prefetch reports itself off with the reason; tokens are checked all the same.
NO_PREGATE = {"deepseek4-tiny": "not sqrt-softplus ones"}


def _generate(bundle, budget, **kw):
    import runtime

    with runtime.load(bundle, budget=budget, threads=1, n_ctx=512, **kw) as m:
        r = m.generate(PROMPT, max_tokens=24)
        return r.tokens, m.stats(), m.prefetch


@needs_native
@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_tokens_identical_with_and_without_prefetch(name, bundle_factory, capfd):
    bundle = bundle_factory(name, "F16")
    reference, _, _ = _generate(bundle, "100%")
    issued = 0
    for budget in ("100%", "50%", "25%"):
        plain, _, off = _generate(bundle, budget, cold=True, prefetch=False)
        fetched, stats, on = _generate(bundle, budget, cold=True, prefetch=ALWAYS)
        from_output, _, _ = _generate(bundle, budget, cold=True, prefetch=FROM_OUTPUT)
        assert plain == fetched == from_output == reference, f"{name} at {budget}"
        assert off == "off"
        if name in NO_PREGATE and budget != "100%":
            assert on.startswith("off: ") and NO_PREGATE[name] in on, on
            continue
        assert on == "on" if budget != "100%" else on.startswith("off")  # nothing is paged
        pf = stats.prefetch  # None: nothing paged (100 %)
        if pf is not None:
            issued += (pf.prefetch_used_experts or 0) + (pf.prefetch_unused_experts or 0)
    assert issued > 0 or name in NO_PREGATE, f"{name}: prefetch never guessed a missing expert"
    assert "Traceback" not in capfd.readouterr().err  # no error swallowed in a callback


# Graphs that name no `ffn_inp` node (qwen35moe, qwen3next: `attn_residual`; lfm2moe): their
# prefetch reads each layer's output (`l_out`), which
# test_tokens_identical_with_and_without_prefetch covers.
NO_FFN_INP = ("qwen35moe-tiny", "lfm2moe-tiny", "qwen3next-tiny")


@needs_native
@pytest.mark.parametrize("name", [f for f in ARCH_FIXTURES
                                  if f not in NO_FFN_INP and f not in NO_PREGATE])
def test_tap_guesses_are_pregating_of_the_real_hidden_state(name, bundle_factory):
    """The C tap reads each layer's residual input at its routing event (a watched node, not a
    stop) and ranks the next layers' experts; both must equal Python's pre-gating of the
    hidden state that a teacher-forced run taps directly."""
    from runtime.backends.llama_cpp.backend import LlamaBackend

    opened = open_bundle(bundle_factory(name, "F16"))
    m, layers = opened.manifest, {x.layer: x for x in opened.build.expert_layers}
    moe, k = sorted(layers), m.shape.top_k
    pregate = Pregate(read_routers(opened.model_path, moe))
    seen: list[tuple[int, np.ndarray]] = []
    expected: list[tuple[int, tuple[int, ...]]] = []

    def observe(ev):
        if ev.n_tokens != 1:
            return
        h = engine._read_rows(engine._tap.watched(0, ev.layer), np.float32)
        seen.append((ev.layer, h[0].copy()))
        for t in next_layers(moe, ev.layer, 2):
            expected.append((t, tuple(sorted(pregate.rank(t, h, k)[0].tolist()))))

    engine = LlamaBackend(EngineConfig(opened.model_path, 512, 1), observe)
    try:
        log = engine.routing_log(moe[-1] + 1, m.shape.n_experts, k)
        log.resident[:] = 0  # nothing resident: every guess is issued and logged
        log.configure_prefetch(*tap_tables(pregate, layers, m.shape.n_experts,
                                           engine.file_mapping()), source="ffn_inp", page=4096)
        log.set_prefetch(2, k)
        ids = engine.tokenize(PROMPT)
        logits, seq, issued = engine.decode(ids), list(ids), []
        log.drain()
        seen.clear()
        expected.clear()  # the prompt's last layer also runs with one row
        for _ in range(12):
            seq.append(int(np.argmax(logits)))
            logits = engine.decode(seq[-1:])
            issued += [(PREFETCH_BASE - r[0], tuple(sorted(r[2 : 2 + r[1]])))
                       for r in log.drain().tolist() if r[0] <= PREFETCH_BASE]
    finally:
        engine.close()
    assert issued == expected and issued
    hidden: dict[int, np.ndarray] = {}
    ref = LlamaBackend(EngineConfig(opened.model_path, 512, 1), lambda ev: None,
                       extra_taps=("ffn_inp",),
                       tensor_observer=lambda layer, kind, rows: hidden.__setitem__(layer, rows))
    try:
        ref.decode(seq, all_outputs=True)
    finally:
        ref.close()
    pos = len(ids) - 1
    for layer, h in seen:
        pos += layer == moe[0]
        np.testing.assert_allclose(h, hidden[layer][pos], rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("budget", ["100%", "50%", "25%"])
def test_native_and_python_taps_keep_the_same_books(budget, bundle_factory, monkeypatch):
    """Hits kept in C and replayed later must leave books and routing rows exactly as the
    one-event-at-a-time Python path leaves them."""
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    keys = ("hits", "misses", "evictions", "bytes_loaded", "resident_expert_bytes")

    def run(native: bool):
        import runtime

        if not native:
            monkeypatch.setattr(tap, "_NATIVE", None)
        with runtime.load(bundle, budget=budget, threads=1, n_ctx=512, record_routing=True,
                          prefetch=False) as m:
            r = m.generate(PROMPT, max_tokens=32)
            s = m.stats()
            log = m.engine._tap.log
            logged = log.counts[0] if log is not None else 0
            monkeypatch.undo()
            return (r.tokens, {k: getattr(s, k) for k in keys}, m.pager.probe.rows, logged,
                    m.engine._tap)

    native, python = run(True), run(False)
    assert native[0] == python[0] and native[1] == python[1] and native[2] == python[2]
    assert native[4].kind == "native" and python[4].kind == "python"
    assert native[3] > 0, "no event was kept out of Python"


@pytest.mark.slow
def test_pregating_beats_the_baselines_on_the_trained_fixture(bundle_factory):
    """On real routing (the trained fixture), pre-gating guesses the next layers' experts far
    better than the previous token's experts or chance, one and two MoE layers ahead."""
    from edgemoe_fixtures.corpus import heldout_text
    from runtime.experts.pinning import pinned_set
    from runtime.tracing import record_prefetch_trace

    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    pt = record_prefetch_trace(bundle, heldout_text(), max_tokens=1024, threads=1)
    opened = open_bundle(bundle)
    cap = opened.expert_bytes_total // 2
    pins = pinned_set(opened.manifest.hot_experts, pt.expert_bytes, cap, pt.top_k)
    scores = evaluate(pt, capacity_bytes=cap, pinned=pins)
    print("\n" + render_scores(scores))
    by = {(s.predictor, s.distance): s for s in scores}
    for d in (1, 2):
        for source in ("ffn_inp", "l_out"):
            pre = by[(f"pregate:{source}", d)]
            assert pre.recall > by[("previous-token", d)].recall + 0.1
            assert pre.recall > 2 * by[("uniform", d)].recall
            assert pre.coverage > 0.5  # most misses would have been read early


@needs_native
@pytest.mark.parametrize("name", ["qwen3moe-trained", "deepseek2-tiny"])
def test_tap_guesses_from_layer_outputs(name, bundle_factory):
    """source="l_out": the tap stops at each layer's output (its own stop, never Python's) and
    guesses the next MoE layers from it, as Python's pre-gating of a teacher-forced run does
    (batch and one-token kernels may round near-ties apart: nearly all must agree)."""
    from runtime.backends.llama_cpp.backend import LlamaBackend

    quant = "Q8_0" if name == "qwen3moe-trained" else "F16"
    opened = open_bundle(bundle_factory(name, quant))
    m, layers = opened.manifest, {x.layer: x for x in opened.build.expert_layers}
    moe, k = sorted(layers), m.shape.top_k
    pregate = Pregate(read_routers(opened.model_path, moe))
    engine = LlamaBackend(EngineConfig(opened.model_path, 512, 1), lambda ev: None)
    try:
        log = engine.routing_log(moe[-1] + 1, m.shape.n_experts, k)
        log.resident[:] = 0
        log.configure_prefetch(*tap_tables(pregate, layers, m.shape.n_experts,
                                           engine.file_mapping()), source="l_out", page=4096)
        log.set_prefetch(2, k)
        ids = engine.tokenize(PROMPT)
        logits, seq, issued = engine.decode(ids), list(ids), []
        log.drain()
        for _ in range(12):
            seq.append(int(np.argmax(logits)))
            logits = engine.decode(seq[-1:])
            issued += [(PREFETCH_BASE - r[0], tuple(sorted(r[2 : 2 + r[1]])))
                       for r in log.drain().tolist() if r[0] <= PREFETCH_BASE]
    finally:
        engine.close()
    hidden: dict[int, np.ndarray] = {}
    ref = LlamaBackend(EngineConfig(opened.model_path, 512, 1), lambda ev: None,
                       extra_taps=("l_out",),
                       tensor_observer=lambda layer, kind, rows: hidden.__setitem__(layer, rows))
    try:
        ref.decode(seq, all_outputs=True)
    finally:
        ref.close()
    expected = []
    for pos in range(len(ids), len(seq)):
        for layer in sorted(hidden):
            for t in [x for x in moe if x > layer][:2]:
                expected.append((t, tuple(sorted(pregate.rank(t, hidden[layer][pos:pos + 1],
                                                             k)[0].tolist()))))
    assert len(issued) == len(expected)
    agree = sum(a == b for a, b in zip(issued, expected, strict=True)) / len(expected)
    assert agree >= 0.9, agree
