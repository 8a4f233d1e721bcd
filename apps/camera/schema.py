"""The event summary's JSON Schema: sent as `response_format` and checked again on arrival.

The server enforces the schema with a grammar while sampling, but the camera never trusts that:
a summary cut short by max_tokens, a server without structured output, or any other surprise is
caught by validating every answer here, and then counted and dropped, never printed. The schema
keeps to what constrained decoding supports (enums, bounded strings and arrays; no `minimum`),
so the one schema is both what the server enforces and what the camera checks.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import jsonschema_rs
except ImportError as e:  # the validator is what makes printed summaries trustworthy
    raise ImportError("apps.camera checks every summary with jsonschema-rs: "
                      "pip install jsonschema-rs") from e

EVENT_TYPES = ("person", "vehicle", "animal", "package", "motion", "other")
SEVERITIES = ("low", "medium", "high")
MAX_COUNT = 99
MAX_OBJECTS = 8
MAX_TEXT_CHARS = 120

SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
        "objects": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 32},
            "maxItems": MAX_OBJECTS,
        },
        # An enum rather than minimum/maximum: the grammar cannot bound a plain integer.
        "count": {"type": "integer", "enum": list(range(MAX_COUNT + 1))},
        "severity": {"type": "string", "enum": list(SEVERITIES)},
        "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS},
    },
    "required": ["event_type", "objects", "count", "severity", "text"],
    "additionalProperties": False,
}

# What the camera prints, one JSON object a line: the window it covers and its summary.
OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "from": {"type": "string"},
        "to": {"type": "string"},
        "events": {"type": "integer", "minimum": 1},
        "zones": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "summary": SUMMARY_SCHEMA,
    },
    "required": ["from", "to", "events", "zones", "summary"],
    "additionalProperties": False,
}

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "event_summary", "schema": SUMMARY_SCHEMA, "strict": True},
}

_summary = jsonschema_rs.validator_for(SUMMARY_SCHEMA)
_output = jsonschema_rs.validator_for(OUTPUT_SCHEMA)


class InvalidSummary(ValueError):
    """An answer that is not a valid event summary (the first error, for the log)."""


def parse_summary(content: str) -> dict[str, Any]:
    """The model's answer as a summary; raises InvalidSummary unless it is exactly one JSON
    object valid against SUMMARY_SCHEMA. The text is put on one line first (the schema cannot
    forbid an escaped line break)."""
    try:
        doc = json.loads(content)
    except (json.JSONDecodeError, RecursionError) as e:
        raise InvalidSummary(f"not JSON: {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        doc["text"] = " ".join(doc["text"].split())
    error = next(_summary.iter_errors(doc), None)
    if error is not None:
        raise InvalidSummary(f"{error.message} (at /{'/'.join(map(str, error.instance_path))})")
    return doc


def output_line(record: dict[str, Any]) -> str:
    """`record` as one output line, checked against OUTPUT_SCHEMA (raises InvalidSummary)."""
    error = next(_output.iter_errors(record), None)
    if error is not None:
        raise InvalidSummary(f"output {error.message}")
    # ASCII only: escapes keep every line encodable, even a lone surrogate the model escaped.
    return json.dumps(record, separators=(",", ":"))
