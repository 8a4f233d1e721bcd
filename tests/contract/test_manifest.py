"""The bundle contract: round trip, golden field names, typed snapshots, and errors that name
the file, the field and what was expected (one line per problem)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from contract.device_profile import DeviceProfile, profile_from_table
from contract.manifest import (
    ExpertTensor,
    FileEntry,
    LayerExperts,
    Manifest,
    ManifestError,
    MoEShape,
    PlanSnapshot,
    SourceInfo,
    manifest_from_dict,
    read_manifest,
)

pytestmark = pytest.mark.unit

PROFILE_TABLE = {
    "name": "phone-8gb", "description": "test phone", "class": "phone", "model_memory": "3GiB",
    "context_length": 2048, "kv_cache_type": "f16", "threads": 4, "isa": ["neon", "dotprod"],
    "storage_read_mb_s": 1000, "memory_bandwidth_gb_s": 25, "formats": ["gguf"],
    "default_quant": "Q4_K_M", "quant_preferences": ["Q5_K_M", "Q4_K_M"],
}
PLAN = {
    "profile": "phone-8gb", "quant_dense": "Q8_0", "quant_experts": "Q4_K_M",
    "tensor_types": {r"\.attn_": "q8_0"}, "context_length": 2048, "dense_bytes": 777,
    "expert_bytes_per_layer": {"1": 1500}, "expert_bytes_total": 12000, "kv_bytes": 64,
    "stream_bytes": 3000, "budget_bytes": 3 * 2**30, "hot_experts": {"1": [0, 3]},
    "hot_bytes": 3000, "pruned_experts": {}, "expected_hit_rate": 0.5,
    "est_decode_tok_s": 12.5, "est_prefill_tok_s": 100.0, "fits": True, "resident": False,
    "prune_fraction": 0.0, "suggestions": [], "rationale": ["because"],
    "a_field_from_a_newer_planner": {"kept": True},
}


def _profile() -> DeviceProfile:
    return profile_from_table(PROFILE_TABLE, "test profile")


def _manifest(**changes) -> Manifest:
    layer = LayerExperts(
        1,
        (
            ExpertTensor("blk.1.ffn_down_exps.weight", "Q4_K", 4096, 1000),
            ExpertTensor("blk.1.ffn_gate_exps.weight", "Q4_K", 12288, 500),
        ),
    )
    m = Manifest(
        schema_version=1,
        format="gguf",
        model_file="model.gguf",
        quant="Q4_K_M",
        source=SourceInfo("hub", "org/model", "a" * 40, {"config.json": "0" * 64}),
        shape=MoEShape("Qwen3MoeForCausalLM", "qwen3moe", 2, (1,), 8, 2, 0, 64, 100, 2048),
        profile=_profile(),
        dense_bytes=777,
        expert_layers=(layer,),
        hot_experts={1: (0, 3)},
        tokenizer={"model": "gpt2"},
        chat_template="{{ x }}",
        files={"model.gguf": FileEntry("f" * 64, 20000)},
        plan=PLAN,
    )
    return dataclasses.replace(m, **changes) if changes else m


def _dict() -> dict:
    return json.loads(_manifest().to_json())


def test_round_trip():
    m = _manifest()
    again = manifest_from_dict(json.loads(m.to_json()))
    assert again == m
    assert again.to_json() == m.to_json()


def test_hot_shares_round_trip_and_are_written_only_when_known():
    ranked = _manifest(hot_experts={1: (3, 0)}, hot_shares={1: (0.6, 0.1)})
    d = json.loads(ranked.to_json())
    assert d["hot_experts"] == {"1": [3, 0]} and d["hot_shares"] == {"1": [0.6, 0.1]}
    assert manifest_from_dict(d) == ranked
    assert "hot_shares" not in _dict()


def test_expert_ranges_follow_offset_and_stride():
    m = _manifest()
    layer = m.expert_layers[0]
    assert layer.expert_bytes == 1500
    assert layer.ranges(2) == [(6096, 7096), (13288, 13788)]
    assert m.layer(1) is layer and m.expert_bytes_total == 12000
    with pytest.raises(KeyError):
        m.layer(0)


def test_snapshots_are_typed():
    m = manifest_from_dict(_dict())
    assert isinstance(m.profile, DeviceProfile) and m.profile == _profile()
    assert m.profile.threads == 4 and m.profile.model_memory_bytes == 3 * 2**30
    assert isinstance(m.plan, PlanSnapshot)
    assert m.plan.quant_experts == "Q4_K_M" and m.plan.fits
    assert m.plan.hot_experts == {1: (0, 3)} and m.plan.expert_bytes_per_layer == {1: 1500}
    # Fields a newer planner adds are kept, and written back unchanged.
    assert m.plan.model_extra == {"a_field_from_a_newer_planner": {"kept": True}}
    assert json.loads(m.to_json())["plan"] == PLAN | {"hot_experts": {"1": [0, 3]}}


def test_models_are_frozen():
    m = _manifest()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.quant = "F16"  # type: ignore[misc]
    with pytest.raises(ValueError):  # pydantic's frozen-instance error
        m.plan.fits = False  # type: ignore[misc]


def test_replace_revalidates():
    with pytest.raises(ValueError, match="model_file"):
        _manifest(model_file="other.gguf")


def test_golden_top_level_fields():
    d = _dict()
    assert sorted(d) == sorted(
        [
            "schema_version",
            "format",
            "model_file",
            "quant",
            "source",
            "shape",
            "profile",
            "dense_bytes",
            "expert_layers",
            "hot_experts",
            "tokenizer",
            "chat_template",
            "files",
            "plan",
            "report_file",
            "created_by",
            "extra",
            "data_file",
            "builds",
            "integrity",
            "sizes",
        ]
    )
    assert d["sizes"] == {
        "dense_bytes": 777,
        "expert_bytes_total": 12000,
        "expert_bytes_per_layer": {"1": 1500},
    }
    assert d["hot_experts"] == {"1": [0, 3]}
    assert d["profile"] == _profile().to_dict()
    assert d["profile"]["device_class"] == "phone" and d["profile"]["path"] is None


def test_optional_fields_may_be_left_out():
    d = _dict()
    for key in ("chat_template", "plan", "report_file", "created_by", "extra"):
        del d[key]
    del d["source"]["revision"]
    m = manifest_from_dict(d)
    assert m.chat_template is None and m.plan is None and m.source.revision is None
    assert m.created_by == "edgemoe" and m.extra == {} and m.hot_shares == {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("quant"), r"^manifest.json: missing field 'quant'$"),
        (
            lambda d: d.update(schema_version=9),
            r"^manifest.json: schema_version 9 is not supported \(this edgemoe reads 1\)$",
        ),
        (
            lambda d: d["shape"].update(top_k="two"),
            r"^manifest.json: field 'shape.top_k' must be an integer, got 'two'$",
        ),
        (
            lambda d: d["shape"].update(top_k="2"),
            r"^manifest.json: field 'shape.top_k' must be an integer, got '2'$",
        ),
        (
            lambda d: d["shape"].update(top_k=99),
            r"^manifest.json: field 'shape.top_k' must be in 1..n_experts \(8\), got 99$",
        ),
        (
            lambda d: d["hot_experts"].update({"1": [42]}),
            r"^manifest.json: field 'hot_experts\[1\]' must be expert ids in 0..7, got \[42\]$",
        ),
        (
            lambda d: d.update(hot_shares={"1": [0.5]}),
            r"^manifest.json: field 'hot_shares\[1\]' must be 2 shares in \[0, 1\], one per hot "
            r"expert, got \[0.5\]$",
        ),
        (
            lambda d: d["hot_experts"].update({"one": [0]}),
            r"^manifest.json: field 'hot_experts' key 'one' must be an integer$",
        ),
        (
            lambda d: d.update(model_file="other.gguf"),
            r"^manifest.json: field 'model_file': 'other.gguf' is not listed in 'files'$",
        ),
        (
            lambda d: d["expert_layers"][0].update(tensors=[]),
            r"^manifest.json: field 'expert_layers\[0\].tensors' must be a list of at least 1",
        ),
        (
            lambda d: d["expert_layers"][0]["tensors"][1].update(offset=None),
            r"^manifest.json: field 'expert_layers\[0\].tensors\[1\].offset' must be an integer",
        ),
        (
            lambda d: d["files"]["model.gguf"].pop("sha256"),
            r"^manifest.json: missing field 'files\['model.gguf'\].sha256'$",
        ),
        (
            lambda d: d["profile"].update(threads=0),
            r"^manifest.json: field 'profile.threads' must be an integer in 1..1024, got 0$",
        ),
        (
            lambda d: d["profile"].update(default_quant="Q9"),
            r"^manifest.json: field 'profile.default_quant': unknown quant type 'Q9'",
        ),
        (
            lambda d: d["profile"].update(speed=1),
            r"^manifest.json: unknown field 'profile.speed'$",
        ),
        (
            lambda d: d["plan"].update(fits="yes"),
            r"^manifest.json: field 'plan.fits' must be true or false, got 'yes'$",
        ),
        (lambda d: d.update(profile=[]), r"^manifest.json: field 'profile' must be an object"),
    ],
)
def test_invalid_manifest_names_the_field(mutate, message):
    d = _dict()
    mutate(d)
    with pytest.raises(ManifestError, match=message):
        manifest_from_dict(d)


def test_every_problem_is_named_on_one_line():
    """A CLI prints `error: ...` once: the problems share one line, the first few named."""
    d = _dict()
    d["shape"]["top_k"] = "two"
    d["profile"]["threads"] = 0
    del d["quant"]
    with pytest.raises(ManifestError) as e:
        manifest_from_dict(d, where="bundles/x/manifest.json")
    assert str(e.value) == (
        "bundles/x/manifest.json: missing field 'quant'; "
        "field 'shape.top_k' must be an integer, got 'two'; "
        "field 'profile.threads' must be an integer in 1..1024, got 0"
    )


def test_unprintable_values_do_not_break_the_message():
    d = _dict()
    d["model_file"] = "\ud800"
    with pytest.raises(ManifestError) as e:
        manifest_from_dict(d, where="m.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("m.json: ")


def test_top_level_must_be_an_object():
    with pytest.raises(ManifestError, match=r"^manifest.json: the top level must be an object"):
        manifest_from_dict([1, 2])


def test_errors_name_the_file(tmp_path):
    d = _dict()
    d["dense_bytes"] = "lots"
    (tmp_path / "manifest.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ManifestError) as e:
        read_manifest(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'manifest.json'}: field 'dense_bytes' must be an integer, got 'lots'"
    )


def test_malformed_json_is_reported_with_position(tmp_path):
    (tmp_path / "manifest.json").write_text('{"schema_version": 1,,}')
    with pytest.raises(ManifestError, match="malformed JSON at line 1"):
        read_manifest(tmp_path)


def test_non_utf8_manifest_is_reported(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b'{"quant": "\xff"}')
    with pytest.raises(ManifestError, match=r"manifest.json: not UTF-8 text \(byte 11\)"):
        read_manifest(tmp_path)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path)


def test_builds_one_per_format_and_listed_files():
    """A bundle may carry a GGUF and an ONNX build; each names files the manifest lists."""
    m = _manifest()
    assert m.formats == ("gguf",) and m.build().format == "gguf" and m.build("gguf") is not None
    with pytest.raises(ManifestError, match="no onnx build"):
        m.build("onnx")
    d = _dict()
    d["files"]["model.onnx"] = {"sha256": "0" * 64, "bytes": 10}
    d["builds"] = [
        {"format": "onnx", "model_file": "model.onnx", "data_file": "model.onnx.data",
         "quant": "fp32", "dense_bytes": 1, "expert_layers": []}
    ]
    with pytest.raises(ManifestError, match=r"builds\[1\]\.data_file|model.onnx.data"):
        manifest_from_dict(d)
    d["files"]["model.onnx.data"] = {"sha256": "0" * 64, "bytes": 10}
    m2 = manifest_from_dict(d)
    assert m2.formats == ("gguf", "onnx")
    assert m2.build("onnx").expert_file == "model.onnx.data"
    d["builds"][0]["format"] = "gguf"
    with pytest.raises(ManifestError, match="one build per format"):
        manifest_from_dict(d)
