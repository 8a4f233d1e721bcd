"""JSON Schema as constrained decoding accepts it: checked, cleaned for the grammar converter and
measured, so an unsupported keyword is refused up front (naming it) instead of being ignored.

The grammar comes from llama-cpp-python's JSON-Schema-to-GBNF converter, which silently drops
keywords it does not implement (`minimum`, `pattern` with lookarounds, `oneOf` as exclusive, ...).
A dropped keyword would let the sampler produce a document the schema rejects, so every keyword is
either honoured for the branch the converter takes, an annotation, or refused here. The cleaned
copy also strips annotations (the converter mistakes an annotated `{}` for an unknown type) and
renames every `$ref` target to a `$defs` entry with a unique name (the converter names a
referenced rule after the last path segment, which can collide with a property's rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import SamplingError

TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")
# Keywords with no effect on validation; dropped from the copy handed to the converter.
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "$defs", "definitions", "strict",
})
# Bounds that keep the generated grammar small enough for llama.cpp's parser and sampler.
MAX_LENGTH = 1000  # minLength / maxLength
MAX_ITEMS = 100  # minItems / maxItems
MAX_ENUM = 256
MAX_NODES = 2000
MAX_DEPTH = 32
RECURSION_BYTES = 64  # the size assumed for a value of a recursive reference
# The shortest complete value of each string format, quotes included.
_FORMAT_BYTES = {"date": 12, "time": 11, "date-time": 22}
_UUID_BYTES = 38


@dataclass(frozen=True)
class Schema:
    """A checked schema: `root` is the cleaned copy (its `$defs` hold every reference target),
    `defs` the same targets by name, for measuring and for following a document's progress."""

    root: dict[str, Any]
    defs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, node: dict[str, Any], hops: int = 0) -> dict[str, Any]:
        """The node a `$ref` chain ends at (a cycle of bare references ends at a generic value)."""
        while "$ref" in node and hops < 16:
            node = self.defs[node["$ref"].rsplit("/", 1)[1]]
            hops += 1
        return {} if "$ref" in node else node

    def close_bytes(self, node: dict[str, Any] | None = None, seen: frozenset[str] = frozenset()
                  ) -> int:
        """Bytes that steering to the shortest end (runtime/structured/closing.py) writes at most
        for a value of `node` (default: the root): the shortest document, plus the optional space
        the grammar allows before a value, and the longest of alternatives the steering does not
        choose between (enum values, anyOf branches, `true`/`false`)."""
        return 1 + self._close_bytes(self.root if node is None else node, seen)

    def _close_bytes(self, node: dict[str, Any], seen: frozenset[str]) -> int:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            if name in seen:
                return RECURSION_BYTES
            return self._close_bytes(self.defs[name], seen | {name})
        if "anyOf" in node:
            return max(self._close_bytes(b, seen) for b in node["anyOf"])
        t = node.get("type")
        if isinstance(t, list):
            return max(_PRIMITIVE_BYTES[x] for x in t)
        if "const" in node:
            return len(json.dumps(node["const"]))
        if "enum" in node:
            return max(len(json.dumps(v)) for v in node["enum"])
        if "properties" in node:
            req = node.get("required", [])
            props = node["properties"]
            kvs = [len(json.dumps(k)) + 1 + self.close_bytes(props[k], seen) for k in req]
            return 2 + sum(kvs) + max(0, len(kvs) - 1)
        if "prefixItems" in node or isinstance(node.get("items"), list):
            items = node.get("prefixItems") or node["items"]
            return 2 + sum(self.close_bytes(i, seen) for i in items) + max(0, len(items) - 1)
        if "items" in node:
            n = node.get("minItems", 0)
            return 2 + n * self.close_bytes(node["items"], seen) + max(0, n - 1)
        fmt = node.get("format")
        if fmt is not None:
            return _FORMAT_BYTES.get(fmt, _UUID_BYTES)
        if "minLength" in node or "maxLength" in node:
            return 2 + node.get("minLength", 0)
        return _PRIMITIVE_BYTES.get(t, 2) if t is not None else 2


_PRIMITIVE_BYTES = {"string": 2, "number": 2, "integer": 2, "boolean": 5, "null": 4,
                    "object": 2, "array": 2}


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), "unknown")


def check_schema(schema: Any, param: str, prefix: str = "") -> Schema:
    """Check `schema` and return its cleaned copy; raises SamplingError naming the keyword.

    `param` starts every message (the request field, e.g. "response_format"); `prefix` keeps the
    reference names of several schemas in one grammar apart."""
    checker = _Checker(schema, param, prefix)
    root = checker.clean(schema, "", 0)
    if checker.defs:
        root = {**root, "$defs": dict(checker.defs)}
    return Schema(root, dict(checker.defs))


class _Checker:
    def __init__(self, raw_root: Any, param: str, prefix: str) -> None:
        self.raw_root = raw_root
        self.param = param
        self.prefix = prefix
        self.names: dict[str, str] = {}  # $ref string -> def name
        self.defs: dict[str, dict[str, Any]] = {}
        self.nodes = 0

    def fail(self, where: str, message: str) -> SamplingError:
        return SamplingError(f"{self.param} schema {message} (at '{where or '/'}')")

    def refuse(self, where: str, key: str, allowed: set[str]) -> SamplingError:
        here = ", ".join(sorted(allowed)) or "annotations only"
        return self.fail(where, f"uses the keyword '{key}', which constrained decoding does not "
                                f"support here (supported here: {here})")

    # --- one node --------------------------------------------------------------------------
    def clean(self, node: Any, where: str, depth: int) -> dict[str, Any]:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(where, f"is too large (more than {MAX_NODES} subschemas)")
        if depth > MAX_DEPTH:
            raise self.fail(where, f"nests deeper than {MAX_DEPTH} levels")
        if not isinstance(node, dict):
            raise self.fail(where, "must be a JSON object here (boolean schemas are supported "
                                   "only as additionalProperties)")
        s = {k: v for k, v in node.items() if k not in ANNOTATIONS}
        if "$ref" in s:
            self.only(s, {"$ref"}, where)
            return {"$ref": f"#/$defs/{self.ref(s['$ref'], where, depth)}"}
        if "anyOf" in s:
            self.only(s, {"anyOf"}, where)
            alts = s["anyOf"]
            if not isinstance(alts, list) or not alts:
                raise self.fail(where, "'anyOf' must be a non-empty list of schemas")
            return {"anyOf": [self.clean(a, f"{where}/anyOf/{i}", depth + 1)
                              for i, a in enumerate(alts)]}
        t = s.get("type")
        self.check_type(t, where)
        if isinstance(t, list):
            self.only(s, {"type"}, where)
            return {"type": list(t)}
        if "const" in s:
            self.only(s, {"const", "type"}, where)
            self.of_type([s["const"]], t, "const", where)
            return dict(s)
        if "enum" in s:
            self.only(s, {"enum", "type"}, where)
            if not isinstance(s["enum"], list) or not 0 < len(s["enum"]) <= MAX_ENUM:
                raise self.fail(where, f"'enum' must list 1 to {MAX_ENUM} values")
            self.of_type(s["enum"], t, "enum", where)
            return dict(s)
        extra = s.get("additionalProperties", True)
        if t in (None, "object") and ("properties" in s or extra is not True):
            return self.obj(s, where, depth)
        if t in (None, "array") and ("items" in s or "prefixItems" in s):
            return self.array(s, where, depth)
        if t in (None, "string") and "format" in s:
            self.only(s, {"type", "format"}, where)
            if s["format"] not in FORMATS:
                raise self.fail(where, f"uses the string format {s['format']!r}, which "
                                       f"constrained decoding does not support (supported: "
                                       f"{', '.join(FORMATS)})")
            return dict(s)
        if t == "string" and ("minLength" in s or "maxLength" in s):
            self.only(s, {"type", "minLength", "maxLength"}, where)
            lo, hi = self.bound(s, "minLength", 0, where), self.bound(s, "maxLength", None, where)
            if hi is not None and lo > hi:
                raise self.fail(where, "has minLength > maxLength")
            return dict(s)
        allowed = {"type", "additionalProperties"} if s.get("additionalProperties") else {"type"}
        self.only(s, allowed, where)
        return {"type": t} if t is not None else {}

    def obj(self, s: dict[str, Any], where: str, depth: int) -> dict[str, Any]:
        self.only(s, {"type", "properties", "required", "additionalProperties"}, where)
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise self.fail(where, "'properties' must be an object")
        out: dict[str, Any] = {"type": "object"}
        out["properties"] = {
            k: self.clean(v, f"{where}/properties/{k}", depth + 1) for k, v in props.items()
        }
        required = s.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            raise self.fail(where, "'required' must be a list of property names")
        if len(set(required)) != len(required):
            raise self.fail(where, "'required' lists a property twice")
        missing = [r for r in required if r not in props]
        if missing:
            raise self.fail(where, f"requires '{missing[0]}', which is not in 'properties' "
                                   "(constrained decoding only writes listed properties)")
        if required:
            out["required"] = list(required)
        extra = s.get("additionalProperties")
        if isinstance(extra, bool):
            out["additionalProperties"] = extra
        elif extra is not None:
            out["additionalProperties"] = self.clean(extra, f"{where}/additionalProperties",
                                                     depth + 1)
        return out

    def array(self, s: dict[str, Any], where: str, depth: int) -> dict[str, Any]:
        items = s.get("prefixItems", s.get("items"))
        if "prefixItems" in s and "items" in s:
            raise self.refuse(where, "items", {"type", "prefixItems"})
        if isinstance(items, list):
            key = "prefixItems" if "prefixItems" in s else "items"
            self.only(s, {"type", key}, where)
            return {"type": "array", "prefixItems": [
                self.clean(x, f"{where}/{key}/{i}", depth + 1) for i, x in enumerate(items)
            ]}
        self.only(s, {"type", "items", "minItems", "maxItems"}, where)
        out: dict[str, Any] = {"type": "array",
                               "items": self.clean(items, f"{where}/items", depth + 1)}
        lo, hi = self.bound(s, "minItems", 0, where), self.bound(s, "maxItems", None, where)
        if hi is not None and lo > hi:
            raise self.fail(where, "has minItems > maxItems")
        if "minItems" in s:
            out["minItems"] = lo
        if hi is not None:
            out["maxItems"] = hi
        return out

    # --- helpers ---------------------------------------------------------------------------
    def only(self, s: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in s:
            if key not in allowed:
                raise self.refuse(where, key, allowed)

    def check_type(self, t: Any, where: str) -> None:
        if t is None or (isinstance(t, str) and t in TYPES):
            return
        if (isinstance(t, list) and t and len(set(map(str, t))) == len(t)
                and all(isinstance(x, str) and x in TYPES for x in t)):
            return
        raise self.fail(where, f"has 'type' {t!r}; expected one of {', '.join(TYPES)} or a "
                               "list of them")

    def of_type(self, values: list[Any], t: str | None, key: str, where: str) -> None:
        """The grammar writes enum/const values as given, so each must also match 'type'."""
        for v in values:
            if t is not None and _json_type(v) not in ({t, "integer"} if t == "number" else {t}):
                raise self.fail(where, f"lists {json.dumps(v)} in '{key}', which is not of "
                                       f"type {t!r}")

    def bound(self, s: dict[str, Any], key: str, default: int | None, where: str) -> Any:
        if key not in s:
            return default
        v, top = s[key], MAX_LENGTH if key.endswith("Length") else MAX_ITEMS
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
            raise self.fail(where, f"'{key}' must be an integer in 0..{top}")
        return v

    def ref(self, ref: Any, where: str, depth: int) -> str:
        if not isinstance(ref, str) or not ref.startswith("#/") or "~" in ref or "%" in ref:
            raise self.fail(where, f"has '$ref' {ref!r}; only references into the same "
                                   "schema ('#/$defs/Name') are supported")
        if ref in self.names:
            return self.names[ref]
        target: Any = self.raw_root
        for part in ref[2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise self.fail(where, f"has '$ref' {ref!r}, which points to nothing")
            target = target[part]
        name = self.names[ref] = f"{self.prefix}ref-{len(self.names) + 1}"
        self.defs[name] = {}  # a recursive reference meets the name before the body
        self.defs[name] = self.clean(target, ref[1:], depth + 1)
        return name
