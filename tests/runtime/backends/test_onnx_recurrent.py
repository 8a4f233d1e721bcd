"""Hybrid recurrent models on onnxruntime: the state carried between runs, counted in the budget
with the one rollback copy the backend keeps, rolled back by recomputing the kept tokens, and
never a wrong token (runtime/backends/onnx/recurrent_state.py, runtime/recurrent.py)."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.api import minimum_budget
from runtime.backends.onnx.recurrent_state import RollbackPoint, present_name, state_names
from runtime.errors import EdgemoeError
from runtime.generation.request import choice_seed
from runtime.recurrent import shape_from_states

pytestmark = pytest.mark.unit

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    args = argv[1:]\n    "
# Hybrid families with an ONNX build, and the state each carries per recurrent layer.
HYBRIDS = ("lfm2moe-tiny", "qwen35moe-tiny", "qwen3next-tiny", "granitehybrid-tiny")
# Where PROMPT's continuation repeats itself, every n-gram draft is accepted and nothing would
# be rolled back: a prompt whose drafts are partly rejected.
_STACK = "class Stack:\n    def __init__(self):\n        self.items = []\n"
DRAFT_PROMPTS = {"qwen3next-tiny": _STACK, "granitehybrid-tiny": _STACK}


def test_state_inputs_are_found_by_layer_and_named_for_their_outputs():
    names = ["input_ids", "past_conv.10", "past_key_values.1.key", "past_ssm.2", "past_conv.2"]
    assert state_names(names) == ["past_conv.2", "past_ssm.2", "past_conv.10"]
    assert present_name("past_conv.3") == "present_conv.3"
    assert present_name("past_ssm.0") == "present_ssm.0"
    assert present_name("past_key_values.4.value") == "present.4.value"


def test_a_rollback_point_replays_only_its_own_batch():
    point = RollbackPoint(10, {}, (5, 6, 7, 8))
    assert point.replay(10, 14) == ()
    assert point.replay(12, 14) == (5, 6)
    with pytest.raises(EdgemoeError, match="back 5 positions .* from before its last batch, at 10"):
        point.replay(9, 14)


def test_onnx_state_is_counted_with_at_most_one_rollback_copy():
    shape = shape_from_states("Lfm2MoeForCausalLM", {"past_conv.0": (1, 64, 2),
                                                     "past_conv.2": (1, 64, 2)})
    assert shape is not None and shape.replay and shape.rollback  # any architecture rolls back
    assert (shape.layers, shape.conv_values, shape.state_values) == ((0, 2), 128, 0)
    assert shape.state_bytes() == 2 * 128 * 4
    assert shape.state_bytes(snapshots=8) == shape.state_bytes(snapshots=1) == 2 * 2 * 128 * 4
    mixed = shape_from_states("x", {"past_conv.1": (1, 8, 3), "past_ssm.1": (1, 2, 4, 4)})
    assert (mixed.conv_values, mixed.state_values, mixed.other_values) == (24, 32, 0)
    assert shape_from_states("x", {}) is None


# ----- on onnxruntime -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hybrid(bundle_factory):
    return lambda name: bundle_factory(name, "fp32", format="onnx")


@pytest.mark.engine
@pytest.mark.parametrize("name", HYBRIDS)
def test_state_counts_in_the_budget_and_one_copy_with_a_draft(name, hybrid, fixture_checkpoint):
    from packager.families import read_family

    bundle = hybrid(name)
    state = 4 * read_family(fixture_checkpoint(name)).gguf.recurrent_state_values()
    with runtime.load(bundle, backend="onnx") as plain:
        s = plain.stats()
        assert plain.engine.recurrent
    assert s.recurrent.recurrent_state_bytes == state > 0 and s.kv_bytes > state
    for k in (2, 8):  # one copy from before the verify batch, whatever its length
        with runtime.load(bundle, backend="onnx", draft="ngram", draft_tokens=k) as drafted:
            d = drafted.stats()
        assert d.recurrent.recurrent_state_bytes == 2 * state
        assert d.kv_bytes - s.kv_bytes == state
        assert minimum_budget(bundle, backend="onnx", draft="ngram", draft_tokens=k) \
            - minimum_budget(bundle, backend="onnx") == state


@pytest.mark.engine
@pytest.mark.parametrize("name", HYBRIDS)
def test_truncate_recomputes_the_kept_tokens_of_the_last_batch(name, hybrid):
    from runtime.backends.base import EngineConfig
    from runtime.backends.onnx.backend import OnnxBackend
    from runtime.bundles.open import open_bundle

    path = open_bundle(hybrid(name), fmt="onnx").model_path
    engine = OnnxBackend(EngineConfig(path, 256, 1, observe_routing=False, rollback_tokens=4))
    fresh = OnnxBackend(EngineConfig(path, 256, 1, observe_routing=False))
    plain = OnnxBackend(EngineConfig(path, 256, 1, observe_routing=False))
    try:
        ids = engine.tokenize(PROMPT)
        engine.decode(ids)
        engine.decode([11, 12, 13, 14])  # a verify batch of four
        engine.truncate(len(ids) + 1)  # three taken back: the state recomputed through 11
        got = engine.decode([20])
        np.testing.assert_allclose(got, fresh.decode([*ids, 11, 20]), rtol=1e-5, atol=1e-5)
        with pytest.raises(EdgemoeError, match="cannot roll the recurrent state back 2"):
            engine.truncate(engine.n_past - 2)  # before the last batch (one token)
        engine.truncate(engine.n_past - 1)  # within it: back to where it started
        assert engine.n_past == len(ids) + 1
        plain.decode(ids)
        with pytest.raises(EdgemoeError, match="no rollback point is kept"):
            plain.truncate(len(ids) - 1)  # no draft asked for: nothing kept to roll back to
    finally:
        for e in (engine, fresh, plain):
            e.close()


@pytest.mark.engine
@pytest.mark.parametrize("name", HYBRIDS)
def test_greedy_output_is_identical_with_and_without_draft(name, hybrid):
    bundle, prompt = hybrid(name), DRAFT_PROMPTS.get(name, PROMPT)

    def greedy(**kw):
        with runtime.load(bundle, budget="50%", backend="onnx", **kw) as model:
            if model.speculation is not None:
                model.speculation.auto = False
            return model.generate(prompt, max_tokens=40).tokens, model.stats()

    reference, _ = greedy()
    for k in (2, 4, 8):
        tokens, stats = greedy(draft="ngram", draft_tokens=k)
        assert tokens == reference, f"draft_tokens={k}"
        assert stats.speculation_off is None
        spec = stats.speculation
        assert spec.drafted_tokens > spec.accepted_tokens > 0  # some rejected: rolled back


@pytest.mark.engine
@pytest.mark.parametrize("name", HYBRIDS)
def test_n_choices_each_equal_a_single_choice_request(name, hybrid):
    with runtime.load(hybrid(name), backend="onnx") as model:
        many = model.generate(PROMPT, max_tokens=16, n=3, temperature=0.9, seed=7)
        for i, choice in enumerate(many.choices):
            one = model.generate(PROMPT, max_tokens=16, temperature=0.9, seed=choice_seed(7, i))
            assert list(choice.tokens) == list(one.tokens), f"choice {i}"
        assert len({tuple(c.tokens) for c in many.choices}) > 1
