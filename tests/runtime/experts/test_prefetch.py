"""Prefetch logic without an engine: predictors, their scores, pre-gating math, the governor."""

from __future__ import annotations

import numpy as np
import pytest

from contract.manifest import ExpertTensor, LayerExperts
from runtime.backends.mapping import FileMapping
from runtime.experts.prefetch import (
    Frequency,
    PrefetchTrace,
    PreviousToken,
    Temporal,
    Transition,
    Uniform,
    evaluate,
    render_scores,
)
from runtime.experts.prefetcher import (
    Prefetcher,
    PrefetchGovernor,
    PrefetchSettings,
    prefetch_settings,
    tap_tables,
)
from runtime.experts.pregate import Pregate, RouterWeights, next_layers
from runtime.experts.routing_trace import RoutingTrace, synthetic_trace

pytestmark = pytest.mark.unit


def _ptrace(steps, n_experts=8, top_k=2, guesses=None) -> PrefetchTrace:
    trace = RoutingTrace.from_steps(steps, n_experts)
    sizes = {layer: 1000 for layer in trace.moe_layers}
    return PrefetchTrace(trace, top_k, sizes, guesses or {})


def _by_name(scores, name, d=1):
    return next(s for s in scores if s.predictor == name and s.distance == d)


def test_previous_token_is_perfect_on_a_repeating_trace():
    steps = [{0: (1, 2), 1: (3, 4), 2: (5, 6)}] * 20
    scores = evaluate(_ptrace(steps), distances=(1, 2))
    for d in (1, 2):
        s = _by_name(scores, "previous-token", d)
        assert s.recall == pytest.approx(1.0, abs=0.06)  # only the first token has no past
        assert _by_name(scores, "temporal", d).recall == s.recall


def test_uniform_guessing_scores_k_over_e():
    trace = synthetic_trace(400, 16, [0, 1, 2, 3], 2, zipf_s=0.0, locality=0.0, seed=3)
    pt = PrefetchTrace(trace, 2, {x: 10 for x in trace.moe_layers})
    s = _by_name(evaluate(pt, distances=(1,)), "uniform")
    assert s.recall == pytest.approx(2 / 16, abs=0.03)
    assert s.precision == pytest.approx(s.recall, abs=1e-9)  # width == top_k


def test_transition_learns_which_experts_follow():
    # Layer 1 always uses (e + 4) for the experts e of layer 0: co-activation is exact.
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(200):
        a = tuple(int(x) for x in rng.choice(4, 2, replace=False))
        steps.append({0: a, 1: tuple(e + 4 for e in a)})
    s = _by_name(evaluate(_ptrace(steps), distances=(1,)), "transition")
    assert s.recall > 0.9


def test_recorded_pregate_guesses_are_scored_per_distance():
    steps = [{0: (0, 1), 1: (2, 3), 2: (4, 5)} for _ in range(10)]
    right = [{1: (2, 3), 2: (4, 5)} for _ in steps]
    wrong = [{2: (6, 7)} for _ in steps]
    pt = _ptrace(steps, guesses={"ffn_inp": {1: right, 2: wrong}})
    scores = evaluate(pt, distances=(1, 2))
    assert _by_name(scores, "pregate:ffn_inp", 1).recall == 1.0
    assert _by_name(scores, "pregate:ffn_inp", 2).recall == 0.0


def test_wasted_bytes_count_only_non_resident_guesses():
    # Capacity for everything: after the first token nothing is missing, so nothing is fetched.
    steps = [{0: (0, 1), 1: (2, 3)}] * 5
    pt = _ptrace(steps)
    s = _by_name(evaluate(pt, distances=(1,), capacity_bytes=10**9), "uniform")
    assert s.missed == 2 and s.fetched_bytes <= 8 * 1000 + 2 * 1000 * 0
    # Room for one layer's experts only: layer 1's experts are never resident when guessed.
    s = _by_name(evaluate(pt, distances=(1,), capacity_bytes=2000), "previous-token")
    assert s.missed == 10 and s.covered == 8  # every token but the first guesses right
    assert s.fetched_bytes == 8000 and s.wasted_bytes == 0
    assert "previous-token" in render_scores([s])


def test_prefetch_trace_round_trips(tmp_path):
    steps = [{0: (0, 1), 1: (2, 3)}] * 3
    pt = _ptrace(steps, guesses={"l_out": {1: [{1: (2, 3)}, {1: (3, 2)}, {}]}})
    back = PrefetchTrace.load(pt.save(tmp_path / "p.json"))
    assert back.trace.steps == pt.trace.steps and back.guesses == pt.guesses
    assert back.expert_bytes == pt.expert_bytes and back.top_k == 2


def test_online_predictors_see_only_the_past():
    for p in (PreviousToken(), Temporal(8), Frequency(8), Transition(8), Uniform(8)):
        assert len(p.predict(0, 0, 1, 2)) <= 2
    f = Frequency(8)
    f.observe(0, 1, (3, 4))
    f.observe(1, 1, (4, 5))
    assert f.predict(2, 0, 1, 1) == [4]


# --- pre-gating ---------------------------------------------------------------------------------
def test_folded_router_ranks_like_rmsnorm_then_router():
    rng = np.random.default_rng(1)
    gate = rng.normal(size=(16, 32)).astype(np.float32)
    norm = rng.uniform(0.5, 1.5, size=32).astype(np.float32)
    x = rng.normal(size=(5, 32)).astype(np.float32)
    pg = Pregate({3: RouterWeights(3, gate * norm)})
    rms = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6)
    logits = (rms * norm) @ gate.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected = np.argsort(-probs, axis=1)[:, :4]
    assert (pg.rank(3, x, 4) == expected).all()


def test_selection_bias_goes_on_the_gating_functions_output():
    """A bias added to softmax probabilities (ERNIE-4.5) ranks differently from one added to
    sigmoids (DeepSeek-V3): expert 1's logit is lower but its bias lifts it only in one."""
    logits = np.array([[2.0, 1.0, -3.0]], np.float32)
    bias = np.array([0.0, 0.3, 0.0], np.float32)
    eye = np.eye(3, dtype=np.float32)
    softmax = Pregate({0: RouterWeights(0, eye, bias, "softmax")})
    sigmoid = Pregate({0: RouterWeights(0, eye, bias, "sigmoid")})
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax.scores(0, logits), p + bias, rtol=1e-6)
    np.testing.assert_allclose(sigmoid.scores(0, logits), 1 / (1 + np.exp(-logits)) + bias,
                               rtol=1e-6)  # fmt: skip
    assert softmax.rank(0, logits, 1)[0, 0] == 0  # 0.71 vs 0.26 + 0.3
    assert sigmoid.rank(0, logits, 1)[0, 0] == 1  # 0.88 vs 0.73 + 0.3


def test_next_layers_follow_the_moe_order():
    assert next_layers([1, 2, 5, 7], 2, 2) == [5, 7]
    assert next_layers([1, 2, 5, 7], 7, 2) == []


def _layers(n_layers=3, n_tensors=3, stride=8192, base=1 << 20):
    out = {}
    for layer in range(n_layers):
        tensors = tuple(
            ExpertTensor(f"blk.{layer}.t{i}", "Q8_0", base + (layer * n_tensors + i) * 8 * stride,
                         stride)
            for i in range(n_tensors)
        )
        out[layer] = LayerExperts(layer, tensors)
    return out


def test_tap_tables_point_inside_the_mapping():
    layers = _layers()
    routers = {x: RouterWeights(x, np.ones((8, 4), np.float32)) for x in layers}
    mapping = FileMapping.whole(0x7F0000000000, 8 << 20)
    r, nxt, spans, biases, _, logit_biases, _ = tap_tables(Pregate(routers), layers, 8, mapping)
    assert r.shape == (3, 8, 4) and nxt.tolist() == [[1, 2], [2, -1], [-1, -1]]
    assert biases is None  # no selection bias: the tap ranks raw logits
    assert logit_biases is None  # no router bias: no normalisation either
    t = layers[1].tensors[2]
    assert spans[1, 2].tolist() == [0x7F0000000000 + t.offset, t.stride]
    assert spans[1, 3].tolist() == [0, 0]  # unused slot


def test_tap_tables_carry_selection_biases():
    """DeepSeek-V3-style routers (sigmoid + bias) go to the tap with their biases."""
    layers = _layers()
    bias = np.linspace(-0.1, 0.1, 8, dtype=np.float32)
    routers = {x: RouterWeights(x, np.ones((8, 4), np.float32), bias) for x in layers}
    mapping = FileMapping.whole(0x7F0000000000, 8 << 20)
    biases, softmax_bias = tap_tables(Pregate(routers), layers, 8, mapping)[3:5]
    assert biases.shape == (3, 8) and np.array_equal(biases[1], bias) and not softmax_bias
    softmax = {x: RouterWeights(x, np.ones((8, 4), np.float32), bias, "softmax") for x in layers}
    assert tap_tables(Pregate(softmax), layers, 8, mapping)[4] is True  # ERNIE-style
    routers[2] = RouterWeights(2, np.ones((8, 4), np.float32))
    reason = tap_tables(Pregate(routers), layers, 8, mapping)
    assert isinstance(reason, str) and "some MoE layers only" in reason


def test_tap_tables_carry_router_logit_biases():
    """gpt-oss-style routers (their own bias on the logits) go to the tap with it and the
    norm's epsilon; a bias on some layers only is refused."""
    layers = _layers()
    bias = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
    routers = {x: RouterWeights(x, np.ones((8, 4), np.float32), logit_bias=bias, eps=1e-5)
               for x in layers}  # fmt: skip
    mapping = FileMapping.whole(0x7F0000000000, 8 << 20)
    *_, logit_biases, eps = tap_tables(Pregate(routers), layers, 8, mapping)
    assert logit_biases.shape == (3, 8) and np.array_equal(logit_biases[2], bias)
    assert eps == 1e-5
    routers[1] = RouterWeights(1, np.ones((8, 4), np.float32))
    reason = tap_tables(Pregate(routers), layers, 8, mapping)
    assert isinstance(reason, str) and "router bias on some MoE layers only" in reason


def test_pregate_ranks_a_biased_router_on_the_normalised_state():
    """With a logit bias the hidden state's scale matters: x and 10x rank the same experts
    (as the model's RMSNorm makes them), and the bias can outweigh a small logit."""
    m = np.eye(4, dtype=np.float32)
    bias = np.array([0.0, 0.0, 0.0, 0.9], dtype=np.float32)
    pre = Pregate({0: RouterWeights(0, m, logit_bias=bias, eps=0.0)})
    x = np.array([1.0, 0.1, 0.0, 0.0], dtype=np.float32)  # rms 0.5025: logits 1.99, 0.2, 0, 0
    assert pre.rank(0, x, 2).tolist() == [[0, 3]]
    assert pre.rank(0, 10 * x, 2).tolist() == [[0, 3]]
    np.testing.assert_allclose(pre.scores(0, x)[0], x / np.sqrt(np.mean(x**2)) + bias, rtol=1e-6)


def test_tap_tables_refuse_a_tensor_outside_the_mapping():
    layers = _layers()
    routers = {x: RouterWeights(x, np.ones((8, 4), np.float32)) for x in layers}
    reason = tap_tables(Pregate(routers), layers, 8, FileMapping.whole(0x1000, 1 << 20))
    assert isinstance(reason, str) and "not one mapped range" in reason


# --- the governor -------------------------------------------------------------------------------
def test_settings_and_their_defaults():
    assert prefetch_settings(None, cold=True) == PrefetchSettings()
    assert prefetch_settings(None, cold=False) is None
    assert prefetch_settings(False, cold=True) is None
    with pytest.raises(ValueError, match="depth"):
        PrefetchSettings(depth=3)
    with pytest.raises(ValueError, match="idle_span"):
        PrefetchSettings(idle_span=0)
    with pytest.raises(ValueError, match="idle_min"):
        PrefetchSettings(idle_min=-1)


def test_governor_starts_narrow_grows_when_useful_and_turns_off_when_not():
    g = PrefetchGovernor(PrefetchSettings(window=4, retry_tokens=3), top_k=4, max_width=8)
    assert g.width == 1  # slow start
    for _ in range(12):
        g.record(1, 0, 100)  # every prefetched expert used: 1 -> 2 -> 4 (top_k), no further
    assert g.width == 4
    for _ in range(4):
        g.record(0, 1, 100)  # every prefetched byte unused
    assert g.width == 2 and g.wasted_bytes == 400
    for _ in range(8):
        g.record(0, 1, 100)
    assert g.width == 0
    assert not g.tick() and not g.tick() and g.tick() and g.width == 1
    assert g.changes == 6  # 1-2-4, then 4-2-1-0, then the retry at 1


def test_governor_turns_off_when_its_guesses_read_nothing_and_retries():
    """Guessing costs a stop per layer even when every guess is resident already."""
    g = PrefetchGovernor(PrefetchSettings(idle_span=10, idle_min=2, retry_tokens=2), top_k=4,
                         max_width=8)
    g.issued(1)
    assert not any(g.ran() for _ in range(9))
    assert g.ran() is True and g.width == 0  # 10 runs, 1 read started (< 2): off
    assert not g.ran()  # off: nothing counted
    assert not g.tick() and g.tick() and g.width == 1  # retried
    g.issued(2)
    assert not any(g.ran() for _ in range(10)) and g.width == 1  # 2 reads in 10 runs: pays
    assert g.changes == 2


def test_prefetcher_turns_the_tap_off_when_idle():
    log = _FakeLog()
    pf = Prefetcher(log, PrefetchSettings(depth=2, idle_span=3, idle_min=1), 2, {0: 100})
    for _ in range(3):
        pf.routed(0, [1, 2])
    assert log.set[-1] == (2, 0) and pf.stats()["prefetch_width"] == 0


class _FakeLog:
    max_guess = 4

    def __init__(self) -> None:
        self.set: list[tuple[int, int]] = []

    def set_prefetch(self, depth: int, width: int) -> None:
        self.set.append((depth, width))

    @property
    def prefetch_issued(self) -> tuple[int, int]:
        return (0, 0)


def test_prefetcher_scores_issued_guesses_against_routing():
    log, forgotten = _FakeLog(), []
    pf = Prefetcher(log, PrefetchSettings(depth=1, window=2), 2, {1: 100},
                    forget=lambda layer, e: forgotten.append((layer, e)))
    assert log.set == [(1, 1)]
    pf.issued(1, [3, 4])
    pf.routed(1, [3, 5])
    assert (pf.used, pf.unused) == (1, 1) and forgotten == [(1, 4)]
    pf.issued(1, [6, 7])
    pf.routed(1, [0, 1])  # window of 4 guesses, 3 unused: halve the width, to off
    assert log.set[-1] == (1, 0)
    assert pf.stats()["prefetch_wasted_bytes"] == 300


# --- replayed hits (the C tap's log) --------------------------------------------------------
def test_replayed_hits_keep_the_books_that_access_keeps():
    """ExpertCache.hit (a logged all-resident event, replayed) must count and age exactly as
    access would, for every policy, so evictions after a replay are the same."""
    from runtime.experts.cache import ExpertCache

    trace = synthetic_trace(300, 8, [0, 1, 2], 2, zipf_s=1.2, locality=0.5, seed=5)
    for policy in ("lru", "lfu", "lrfu"):
        books = []
        for use_hit in (False, True):
            cache = ExpertCache({0: 10, 1: 10, 2: 10}, 8, 120, {0: [0]}, policy)
            for step in trace.steps:
                for layer, experts in sorted(step.items()):
                    resident = all(cache.state(layer, e).value != "released" for e in experts)
                    (cache.hit if use_hit and resident else cache.access)(layer, experts)
            s = cache.stats()
            books.append((s.hits, s.pinned_hits, s.misses, s.evictions, s.steps,
                          s.resident_per_layer))
        assert books[0] == books[1], policy
