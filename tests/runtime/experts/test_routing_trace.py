"""Routing traces: validation messages, JSON round trip, usage statistics, synthetic traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.experts.routing_trace import RoutingTrace, TraceError, synthetic_trace

pytestmark = pytest.mark.unit


def _trace() -> RoutingTrace:
    return RoutingTrace.from_steps(
        [{1: (0, 2), 3: (1, 2)}, {1: (0, 3), 3: (2, 1)}, {1: (2, 0)}],
        n_experts=4,
        meta={"prompt": "hi"},
    )


def test_from_steps_infers_layers_and_sorts() -> None:
    t = _trace()
    assert t.moe_layers == (1, 3)
    assert len(t) == 3
    assert list(t.steps[0]) == [1, 3]


def test_usage_counts_and_frequencies() -> None:
    t = _trace()
    assert t.usage_counts() == {1: [3, 0, 2, 1], 3: [0, 2, 2, 0]}
    freq = t.usage_frequencies()
    assert freq[1] == pytest.approx([1.0, 0.0, 2 / 3, 1 / 3])
    assert freq[3] == pytest.approx([0.0, 1.0, 1.0, 0.0])  # layer 3 was visited twice
    assert t.top_experts(1, 2) == (0, 2)
    assert t.coverage({1: [0]}) == pytest.approx(3 / 10)


def test_summary() -> None:
    s = _trace().summary()
    assert (s.n_steps, s.n_selections) == (3, 10)
    assert s.layers_per_step == pytest.approx(5 / 3)
    assert s.experts_per_layer_step == 2.0
    # reused: step 1 layer 1 {0}, layer 3 {2, 1}; step 2 layer 1 {0}
    assert s.reuse_rate == pytest.approx(4 / 10)


def test_json_round_trip_is_atomic(tmp_path: Path) -> None:
    t = _trace()
    path = t.save(tmp_path / "trace.json")
    assert RoutingTrace.load(path) == t
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]  # no temp file left
    data = json.loads(path.read_text())
    assert data["format"] == "edgemoe-routing-trace" and data["steps"][2] == {"1": [2, 0]}


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{1: (0, 9)}], r"step 0, layer 1: expert ids \[9\] outside 0..3"),
        ([{1: (0,)}, {1: (2, 2)}], r"step 1, layer 1: repeated expert ids \(2, 2\)"),
        ([{2: (0,)}], r"step 0, layer 2: not one of the MoE layers \(1,\)"),
    ],
)
def test_bad_steps_name_the_step_and_layer(steps, message) -> None:
    with pytest.raises(TraceError, match=message):
        RoutingTrace.from_steps(steps, n_experts=4, moe_layers=[1])


def test_append_validates() -> None:
    t = _trace()
    with pytest.raises(TraceError, match="step 3, layer 3"):
        t.append({3: (7,)})
    t.append({3: (3,)})
    assert t.steps[-1] == {3: (3,)}


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TraceError, match=r"bad.json: malformed JSON"):
        RoutingTrace.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(TraceError, match="not an edgemoe routing trace"):
        RoutingTrace.load(bad)
    doc = _trace().to_dict()
    doc["steps"][0]["1"] = [0, 4]
    bad.write_text(json.dumps(doc))
    with pytest.raises(TraceError, match=r"bad.json: step 0, layer 1: expert ids \[4\]"):
        RoutingTrace.load(bad)
    with pytest.raises(TraceError, match="not found"):
        RoutingTrace.load(tmp_path / "missing.json")


def test_synthetic_trace_is_deterministic_and_skewed() -> None:
    a = synthetic_trace(300, 32, [0, 1], 4, zipf_s=1.2, locality=0.0, seed=3)
    assert a == synthetic_trace(300, 32, [0, 1], 4, zipf_s=1.2, locality=0.0, seed=3)
    assert all(len(step[layer]) == 4 for step in a.steps for layer in (0, 1))
    s = a.summary()
    assert s.top_share > 0.3  # top 10% of experts carry far more than 10% of the load
    local = synthetic_trace(300, 32, [0, 1], 4, zipf_s=1.2, locality=0.8, seed=3).summary()
    assert local.reuse_rate > s.reuse_rate
