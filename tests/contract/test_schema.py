"""The published JSON Schema of manifest.json: committed file = generated, and an independent
validator (jsonschema-rs, not pydantic) accepts what edgemoe writes and rejects what it refuses."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema_rs
import pytest

from contract.manifest import read_manifest
from contract.schema import SCHEMA_FILE, manifest_schema, schema_text, write_schema
from tests.contract.test_manifest import _dict


def _validator() -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


@pytest.mark.unit
def test_committed_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "contract/manifest.schema.json is stale: run `python -m contract.schema`"
    )


@pytest.mark.unit
def test_schema_ships_as_package_data():
    shipped = resources.files("contract").joinpath("manifest.schema.json")
    assert json.loads(shipped.read_text(encoding="utf-8")) == manifest_schema()


@pytest.mark.unit
def test_write_schema(tmp_path):
    path = write_schema(tmp_path / "schema.json")
    assert path.read_text(encoding="utf-8") == schema_text()


@pytest.mark.unit
def test_schema_accepts_a_written_manifest():
    _validator().validate(_dict())


@pytest.mark.unit
@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d["shape"].update(top_k="two"), ["shape", "top_k"]),
    (lambda d: d.pop("quant"), []),
    (lambda d: d.update(schema_version=2), ["schema_version"]),
    (lambda d: d["profile"].update(threads=0), ["profile", "threads"]),
    (lambda d: d["profile"].update(speed=1), ["profile"]),
    (lambda d: d["expert_layers"][0].update(tensors=[]), ["expert_layers", 0, "tensors"]),
    (lambda d: d["plan"].update(fits="yes"), ["plan"]),  # plan is "object or null": anyOf
])
def test_schema_rejects_what_the_reader_rejects(mutate, path):
    d = _dict()
    mutate(d)
    errors = list(_validator().iter_errors(d))
    assert errors and [list(e.instance_path) for e in errors] == [path]


@pytest.mark.engine
def test_a_packed_bundle_validates_against_the_published_schema(tiny_bundle):
    data = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
    errors = [f"{list(e.instance_path)}: {e.message}" for e in _validator().iter_errors(data)]
    assert not errors, errors
    assert read_manifest(tiny_bundle).to_json() == (tiny_bundle / "manifest.json").read_text()
