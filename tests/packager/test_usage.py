"""Usage profile arithmetic and its JSON file, on hand-made routing (no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from packager.usage import UsageAccumulator, UsageError, UsageProfile, from_routing

pytestmark = pytest.mark.unit


SHA = "ab" * 32

# Three tokens, four experts, top-2. Rows of PROBS sum to 1; IDS are each row's top two.
PROBS = np.array([
    [0.5, 0.3, 0.1, 0.1],
    [0.4, 0.1, 0.4, 0.1],
    [0.1, 0.6, 0.25, 0.05],
])  # fmt: skip
IDS = np.array([[0, 1], [0, 2], [1, 2]])


def _profile(**kw) -> UsageProfile:
    return from_routing({3: IDS}, {3: PROBS}, source="transformers", text_sha256=SHA, **kw)


def test_counts_weights_and_coactivation_by_hand():
    p = _profile()
    assert p.layers == (3,)
    assert p.n_tokens == 3 and p.top_k == 2 and p.n_experts == 4
    assert p.counts[3] == (2, 2, 2, 0)
    assert p.weight_sum[3] == pytest.approx((0.9, 0.9, 0.65, 0.0))
    assert p.mean_weight()[3] == pytest.approx((0.45, 0.45, 0.325, 0.0))
    co = np.array(p.coactivation[3])
    assert co[0, 1] == co[1, 0] == 1 and co[0, 2] == 1 and co[1, 2] == 1
    assert co[3].sum() == 0 and not co.diagonal().any()


def test_frequencies_sum_to_top_k():
    freq = _profile().frequencies()[3]
    assert freq == pytest.approx((2 / 3, 2 / 3, 2 / 3, 0.0))
    assert sum(freq) == pytest.approx(2.0)


def test_entropy_is_mean_router_entropy_in_nats():
    expected = np.mean([-sum(p * math.log(p) for p in row) for row in PROBS])
    assert _profile().entropy[3] == pytest.approx(expected)


def test_explicit_weights_replace_gathered_probabilities():
    p = _profile(weights={3: np.array([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]])})
    assert p.weight_sum[3] == pytest.approx((1.5, 0.2, 1.3, 0.0))


def test_accumulating_batches_equals_one_pass():
    acc = UsageAccumulator(n_experts=4, top_k=2)
    acc.add(3, IDS[:1], PROBS[:1])
    acc.add(3, IDS[1:], PROBS[1:])
    assert acc.profile("transformers", SHA) == _profile()


def test_json_round_trip(tmp_path):
    p = _profile()
    path = p.save(tmp_path / "sub" / "usage.json")
    assert UsageProfile.load(path) == p
    assert [f.name for f in path.parent.iterdir()] == ["usage.json"]  # no temp file left


def test_expert_id_out_of_range_is_refused():
    with pytest.raises(UsageError, match="outside 0..3"):
        from_routing({0: np.array([[0, 4]])}, {0: PROBS[:1]}, source="llama.cpp",
                     text_sha256=SHA)


def _write(tmp_path, data) -> object:
    path = tmp_path / "usage.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("counts"), "missing field.*counts"),
        (lambda d: d.update(schema_version=9), "schema_version"),
        (lambda d: d["counts"].update({"3": [2, 2, 2]}), r"counts\[3\].*list of 4"),
        (lambda d: d["counts"].update({"3": [2, 2, 2, 1]}), "sum to 7, expected"),
        (lambda d: d["counts"].update({"5": [2, 2, 2, 0]}), "'counts' has layers"),
        (lambda d: d["coactivation"]["3"][0].__setitem__(1, 0), "symmetric"),
        (lambda d: d.update(source="onnx"), "'source' must be one of"),
        (lambda d: d.update(top_k=9), "top_k=9"),
        (lambda d: d["entropy"].update({"3": "x"}), r"entropy\[3\]"),
    ],
)
def test_bad_files_are_refused_naming_the_field(tmp_path, edit, message):
    data = _profile().to_dict()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(UsageError, match=message) as err:
        UsageProfile.load(path)
    assert str(path) in str(err.value)


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="malformed JSON at line 1"):
        UsageProfile.load(bad)
    with pytest.raises(UsageError, match="not found"):
        UsageProfile.load(tmp_path / "absent.json")


def test_planner_usage_carries_frequencies():
    plan = pytest.importorskip("packager.plan.expert_usage")
    usage = _profile().to_planner_usage()
    assert isinstance(usage, plan.ExpertUsage)
    assert usage.per_layer[3] == pytest.approx(_profile().frequencies()[3])
    assert usage.n_tokens == 3
