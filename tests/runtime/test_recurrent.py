"""Hybrid recurrent models under a budget: the state counted, rollback only where llama.cpp keeps
snapshots, speculation off where it cannot, n > 1 correct (runtime/recurrent.py)."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.api import minimum_budget
from runtime.errors import EdgemoeError
from runtime.generation.request import choice_seed
from runtime.recurrent import RecurrentShape, shape_from_header, speculation_refusal

pytestmark = pytest.mark.unit

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    args = argv[1:]\n    "


def _getter(fields: dict):
    return lambda key, default=None: fields.get(key, default)


def test_deltanet_state_is_llama_cpps_conv_plus_ssm_rows():
    get = _getter({
        "general.architecture": "qwen35moe", "qwen35moe.block_count": 4,
        "qwen35moe.attention.recurrent_layers": [True, True, True, False],
        "qwen35moe.ssm.conv_kernel": 4, "qwen35moe.ssm.inner_size": 64,
        "qwen35moe.ssm.state_size": 16, "qwen35moe.ssm.group_count": 2,
    })
    shape = shape_from_header(get)
    assert shape.layers == (0, 1, 2)
    # conv: (4 - 1) x (64 + 2 x 2 x 16) = 384; delta rule: 16 x 64 = 1024 (f32 each)
    assert (shape.conv_values, shape.state_values) == (384, 1024)
    assert shape.state_bytes() == 3 * (384 + 1024) * 4
    assert shape.state_bytes(snapshots=4) == 5 * 3 * (384 + 1024) * 4
    assert shape.rollback


def test_short_conv_layers_are_the_ones_without_kv_heads():
    get = _getter({
        "general.architecture": "lfm2moe", "lfm2moe.block_count": 3,
        "lfm2moe.embedding_length": 32, "lfm2moe.shortconv.l_cache": 3,
        "lfm2moe.attention.head_count_kv": [0, 4, 0],
    })
    shape = shape_from_header(get)
    assert (shape.layers, shape.conv_values, shape.state_values) == ((0, 2), 64, 0)


def test_attention_only_models_have_no_recurrent_shape():
    assert shape_from_header(_getter({
        "general.architecture": "qwen3moe", "qwen3moe.block_count": 2,
        "qwen3moe.attention.head_count_kv": 2})) is None


def test_speculation_is_refused_where_a_rollback_could_be_wrong():
    rollback = RecurrentShape("qwen35moe", (0,), 1, 1)
    none = RecurrentShape("qwen3next", (0,), 1, 1)
    assert speculation_refusal(None, None, draft_is_model=True) is None
    assert speculation_refusal(rollback, None, draft_is_model=False) is None
    assert "cannot roll back the recurrent state of 'qwen3next'" in \
        speculation_refusal(none, None, draft_is_model=False)
    assert "draft model 'qwen35moe' has recurrent layers" in \
        speculation_refusal(None, rollback, draft_is_model=True)


@pytest.fixture(scope="module")
def hybrid(bundle_factory):
    return bundle_factory("qwen35moe-tiny", "F16")


@pytest.mark.engine
def test_state_counts_in_the_budget_with_its_snapshots(hybrid):
    with runtime.load(hybrid) as plain:
        s = plain.stats()
        state = plain.recurrent.state_bytes()
    assert s.recurrent.recurrent_state_bytes == state > 0 and s.recurrent.recurrent_layers == 2
    assert s.kv_bytes > state  # the attention layer's KV cache beside it
    with runtime.load(hybrid, draft="ngram", draft_tokens=4) as drafted:
        d = drafted.stats()
        assert drafted.engine.rollback_depth == 4  # llama.cpp granted the snapshots
    assert d.recurrent.recurrent_state_bytes == 5 * state
    assert d.kv_bytes - s.kv_bytes == 4 * state
    assert minimum_budget(hybrid, draft="ngram", draft_tokens=4) - minimum_budget(hybrid) \
        == 4 * state


@pytest.mark.engine
def test_greedy_output_is_identical_with_and_without_draft(hybrid):
    def greedy(**kw):
        with runtime.load(hybrid, budget="50%", **kw) as model:
            if model.speculation is not None:
                model.speculation.auto = False
            return model.generate(PROMPT, max_tokens=48).tokens, model.stats()

    reference, _ = greedy()
    for k in (2, 4, 8):
        tokens, stats = greedy(draft="ngram", draft_tokens=k)
        assert tokens == reference, f"draft_tokens={k}"
        spec = stats.speculation
        assert spec.drafted_tokens > spec.accepted_tokens > 0  # some rejected: rolled back


@pytest.mark.engine
def test_n_choices_each_equal_a_single_choice_request(hybrid):
    with runtime.load(hybrid) as model:
        many = model.generate(PROMPT, max_tokens=16, n=3, temperature=0.9, seed=7)
        for i, choice in enumerate(many.choices):
            one = model.generate(PROMPT, max_tokens=16, temperature=0.9,
                                 seed=choice_seed(7, i))
            assert list(choice.tokens) == list(one.tokens), f"choice {i}"
        assert len({tuple(c.tokens) for c in many.choices}) > 1


@pytest.mark.engine
def test_truncate_rolls_back_only_what_the_snapshots_hold(hybrid):
    from runtime.backends.base import EngineConfig
    from runtime.backends.llama_cpp.backend import LlamaBackend
    from runtime.bundles.open import open_bundle

    path = open_bundle(hybrid).model_path
    engine = LlamaBackend(EngineConfig(path, 256, 1, rollback_tokens=3))
    fresh = LlamaBackend(EngineConfig(path, 256, 1))
    try:
        ids = engine.tokenize(PROMPT)
        engine.decode(ids)
        engine.decode([11, 12, 13, 14])  # a verify batch of four
        engine.truncate(len(ids) + 1)  # three rolled back: within the snapshots
        with pytest.raises(EdgemoeError, match="cannot roll the recurrent state back 1"):
            engine.truncate(len(ids))  # a second rollback before any decode
        got = engine.decode([20])
        want = fresh.decode([*ids, 11, 20])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        engine.decode([21])
        engine.decode([22])
        with pytest.raises(EdgemoeError, match="0 usable now"):
            engine.truncate(engine.n_past - 1)  # the snapshot of a one-token batch is stale
    finally:
        engine.close()
        fresh.close()


# Hybrids whose recurrent state llama.cpp keeps no per-token snapshots of
# (llm_arch_supports_rs_rollback): a draft is refused with the reason, decoding is plain.
NO_ROLLBACK = {"qwen3next-tiny": "qwen3next", "granitehybrid-tiny": "granitehybrid"}


@pytest.mark.engine
@pytest.mark.parametrize("name", sorted(NO_ROLLBACK))
def test_speculation_is_off_with_the_reason_where_llama_cpp_cannot_roll_back(
        name, bundle_factory, fixture_checkpoint):
    from packager.families import read_family

    bundle = bundle_factory(name, "F16")
    with runtime.load(bundle, budget="50%") as plain:
        reference = plain.generate(PROMPT, max_tokens=32).tokens
        s = plain.stats()
    with runtime.load(bundle, budget="50%", draft="ngram", draft_tokens=4) as drafted:
        assert drafted.speculation is None and drafted.engine.rollback_depth == 0
        tokens = drafted.generate(PROMPT, max_tokens=32).tokens
        d = drafted.stats()
    assert d.speculation_off.startswith(
        f"llama.cpp cannot roll back the recurrent state of '{NO_ROLLBACK[name]}'")
    assert tokens == reference and d.speculation is None  # plain decoding, said so
    # One state, no snapshots: what the packager's planner counts for the family.
    state = 4 * read_family(fixture_checkpoint(name)).gguf.recurrent_state_values()
    assert d.recurrent.recurrent_state_bytes == s.recurrent.recurrent_state_bytes == state > 0
    assert minimum_budget(bundle, draft="ngram", draft_tokens=4) == minimum_budget(bundle)


@pytest.mark.engine
@pytest.mark.parametrize("name", sorted(NO_ROLLBACK))
def test_n_choices_recompute_the_prompt_where_nothing_rolls_back(name, bundle_factory):
    with runtime.load(bundle_factory(name, "F16")) as model:
        many = model.generate(PROMPT, max_tokens=12, n=2, temperature=0.9, seed=3)
        for i, choice in enumerate(many.choices):
            one = model.generate(PROMPT, max_tokens=12, temperature=0.9,
                                 seed=choice_seed(3, i))
            assert list(choice.tokens) == list(one.tokens), f"choice {i}"
