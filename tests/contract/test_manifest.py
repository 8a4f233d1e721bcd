"""The bundle contract: round trip, golden field names, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from contract.manifest import (
    ExpertTensor,
    FileEntry,
    LayerExperts,
    Manifest,
    ManifestError,
    MoEShape,
    SourceInfo,
    manifest_from_dict,
    read_manifest,
)


def _manifest() -> Manifest:
    layer = LayerExperts(
        1,
        (
            ExpertTensor("blk.1.ffn_down_exps.weight", "Q4_K", 4096, 1000),
            ExpertTensor("blk.1.ffn_gate_exps.weight", "Q4_K", 12288, 500),
        ),
    )
    return Manifest(
        schema_version=1,
        format="gguf",
        model_file="model.gguf",
        quant="Q4_K_M",
        source=SourceInfo("hub", "org/model", "a" * 40, {"config.json": "0" * 64}),
        shape=MoEShape("Qwen3MoeForCausalLM", "qwen3moe", 2, (1,), 8, 2, 0, 64, 100, 2048),
        profile={"name": "phone-8gb"},
        dense_bytes=777,
        expert_layers=(layer,),
        hot_experts={1: (0, 3)},
        tokenizer={"model": "gpt2"},
        chat_template="{{ x }}",
        files={"model.gguf": FileEntry("f" * 64, 20000)},
    )


def test_round_trip():
    m = _manifest()
    again = manifest_from_dict(json.loads(m.to_json()))
    assert again == m


def test_expert_ranges_follow_offset_and_stride():
    layer = _manifest().expert_layers[0]
    assert layer.expert_bytes == 1500
    assert layer.ranges(2) == [(6096, 7096), (13288, 13788)]


def test_golden_top_level_fields():
    d = json.loads(_manifest().to_json())
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
            "sizes",
        ]
    )
    assert d["sizes"] == {
        "dense_bytes": 777,
        "expert_bytes_total": 12000,
        "expert_bytes_per_layer": {"1": 1500},
    }
    assert d["hot_experts"] == {"1": [0, 3]}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("quant"), "missing field 'quant'"),
        (lambda d: d.update(schema_version=9), "schema_version 9 is not supported"),
        (lambda d: d["shape"].update(top_k="2"), "field 'top_k' must be int"),
        (lambda d: d["shape"].update(top_k=99), "top_k must be in 1..n_experts"),
        (
            lambda d: d["hot_experts"].update({"1": [42]}),
            r"hot_experts\[1\] has invalid expert ids \[42\]",
        ),
        (lambda d: d.update(model_file="other.gguf"), "not listed in 'files'"),
        (
            lambda d: d["expert_layers"][0].update(tensors=[]),
            r"expert_layers\[0\]: 'tensors' is empty",
        ),
    ],
)
def test_invalid_manifest_names_the_field(mutate, message):
    d = json.loads(_manifest().to_json())
    mutate(d)
    with pytest.raises(ManifestError, match=message):
        manifest_from_dict(d)


def test_malformed_json_is_reported_with_position(tmp_path):
    (tmp_path / "manifest.json").write_text('{"schema_version": 1,,}')
    with pytest.raises(ManifestError, match="malformed JSON at line 1"):
        read_manifest(tmp_path)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path)
