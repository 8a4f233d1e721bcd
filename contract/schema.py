"""The published JSON Schema of manifest.json, generated from the pydantic models.

`contract/manifest.schema.json` ships with edgemoe so that tools outside Python (a device's
loader, CI checks, other languages) can validate a bundle without importing edgemoe. It is
generated, never hand-edited: `python -m contract.schema` rewrites it, and a unit test fails
when the committed file and the models disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from contract.files import atomic_write_text
from contract.manifest import SCHEMA_VERSION, Manifest

SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def manifest_schema() -> dict[str, Any]:
    """The schema of manifest.json as edgemoe writes it (attribute names, layer keys as
    strings, the derived `sizes` block described but not required)."""
    schema = TypeAdapter(Manifest).json_schema(by_alias=False, mode="validation")
    schema["properties"]["sizes"] = {
        "description": "Derived totals for human readers; recomputed, never read back.",
        "type": "object",
    }
    return {
        "$schema": _DIALECT,
        **schema,
        "title": f"edgemoe bundle manifest (schema_version {SCHEMA_VERSION})",
        "description": (
            "manifest.json of an edgemoe device bundle: where the checkpoint came from, the "
            "MoE shape, the device profile and plan it was packed for, and the byte range of "
            "every expert inside the model file. Generated from contract/manifest.py."
        ),
    }


def schema_text() -> str:
    """The schema as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    """Regenerate the published schema file (after changing a model in contract/)."""
    return atomic_write_text(Path(path), schema_text())


if __name__ == "__main__":
    print(write_schema())
