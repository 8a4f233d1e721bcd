"""Structure-aware mutation of parsed JSON/TOML documents, and writers that can say anything.

`json.dumps` cannot write a 5,000-digit integer literal, 200,000 levels of nesting, `NaN`, or
an object with a duplicated key, yet a file on a kiosk's disk can hold all of them; so the
writers here accept `Raw` (text written verbatim) and `Pairs` (an object's key/value pairs,
repeats allowed). Mutations walk from the root and stop at a random depth, so top-level fields
and deep leaves (one expert tensor's offset) are both hit often.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
from dataclasses import dataclass
from typing import Any

from tests.fuzz.draw import Draw

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class Raw:
    """Text written verbatim where a value goes (numbers JSON can't encode, deep nesting)."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """An object written from explicit pairs, so a key can appear twice."""

    items: tuple[tuple[str, Any], ...]


def _deep(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# Values no field expects: wrong types, edges of every integer width, numbers past float range
# and past Python's 4,300-digit int-parsing limit, strings that are paths or look like numbers.
NASTY: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 3, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**53 + 1, 2**63 - 1,
    2**63, 2**64, -(2**63) - 1, 10**30, -(10**30),
    0.5, -0.0, 1e308, 2.5e-308,
    Raw("9" * 5000), Raw("-" + "1" * 4301), Raw("1e400"), Raw("-1e400"), Raw("NaN"),
    Raw("Infinity"), Raw("-Infinity"), Raw("-0"), Raw("1.0"), Raw("1E2"),
    "", " ", "x" * 100_000, "\x00", "\u202e", "\ud800", "\U0001f600",
    "../../../../etc/passwd", "/etc/passwd", "/dev/zero", "/proc/self/mem", ".", "..",
    "model.gguf", "manifest.json", "tokenizer.json", "٣", "1", "-1", "0x10", " 1", "1_000",
    "1e3", "nan", "inf", "Q4_K_M", "F16", "gguf", "onnx", "qwen3moe", "%s%s%n",
    "{{ raise_exception('boom') }}", "{% for x in range(10**9) %}{% endfor %}",
    [], {}, [None], [[]], {"": None}, [0] * 10_000, [True, False], ["a"],
    _deep(64, "list"), _deep(999, "list"), _deep(5000, "list"), _deep(200_000, "list"),
    _deep(999, "dict"), _deep(200_000, "dict"),
)  # fmt: skip

# TOML's own types and spellings a device-profile file can hold (sizes are strings there).
NASTY_TOML: tuple[Any, ...] = (
    Raw("inf"), Raw("-inf"), Raw("nan"), Raw("0x7FFFFFFFFFFFFFFF"), Raw("-0x1"), Raw("0o777"),
    Raw("1_000_000"), Raw("1979-05-27T07:32:00Z"), Raw("07:32:00"), Raw("1979-05-27"),
    datetime.date(2024, 2, 29), Raw('"""multi\nline"""'), Raw("'literal\\n'"),
    "0GiB", "-1GiB", "1e9", "1.5.5GB", "9" * 400 + "GiB", "9" * 5000, "1" * 20 + "TiB",
    "0.0000001B", "NaNGiB", "inf GB", "3 GiB ", "3gib", "3GiBB", "\t3GiB", "3\u00a0GiB",
)  # fmt: skip


def nasty_value(draw: Draw, toml: bool = False) -> Any:
    pool = NASTY + NASTY_TOML if toml else NASTY
    if draw.chance(0.15):
        return draw.integer(-(2**64), 2**64)
    if draw.chance(0.1):
        return draw.blob(40).decode("utf-8", "replace")
    return copy.deepcopy(draw.choice(pool))


def confuse_type(value: Any, draw: Draw) -> Any:
    """The same information in the wrong type: "3" for 3, True for a list, [x] for x..."""
    if isinstance(value, bool):
        return draw.choice([int(value), str(value).lower(), [value], None])
    if isinstance(value, int):
        return draw.choice([str(value), float(value), value != 0, [value], {"v": value}])
    if isinstance(value, float):
        return draw.choice([str(value), int(value) if math.isfinite(value) else 0, [value]])
    if isinstance(value, str):
        hexed = value.encode("utf-8", "surrogatepass").hex()
        return draw.choice([len(value), [value], {value: value}, None, hexed])
    if isinstance(value, list):
        return draw.choice([True, False, dict(enumerate(value)), value[0] if value else 0,
                            json.dumps(value)[:100], None])
    if isinstance(value, dict):
        return draw.choice([list(value.values()), list(value), [], True, None, "{}"])
    return draw.choice(NASTY)


def tweak_int(value: int, draw: Draw) -> int:
    """Near misses and wrap-arounds of a number that matters (an offset, a count)."""
    return draw.choice([
        0, -value, value + 1, value - 1, value * 2, value // 2, value << 32,
        value + 2**32, value - 2**32, 2**63, 2**64 - 1, 10**30, -1,
        value + draw.integer(-4096, 4096),
    ])  # fmt: skip


# --- walking -------------------------------------------------------------------------------
def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


def pick_path(doc: Any, draw: Draw, stop: float = 0.3) -> Path_:
    """A random walk down from the root that stops with probability `stop` at each node."""
    path: list[Any] = []
    node = doc
    while True:
        kids = _children(node)
        if not kids or (path and draw.chance(stop)):
            return tuple(path)
        key = draw.choice(kids)
        path.append(key)
        node = node[key]


def get_at(doc: Any, path: Path_) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def set_at(doc: Any, path: Path_, value: Any) -> Any:
    """Replace the node at `path`; returns the new root (a new root when `path` is empty)."""
    if not path:
        return value
    parent = get_at(doc, path[:-1])
    parent[path[-1]] = value
    return doc


def describe(path: Path_) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path) or "<root>"


def _all_nodes(doc: Any, path: Path_ = ()) -> list[Path_]:
    out = [path]
    for key in _children(doc):
        out += _all_nodes(doc[key], (*path, key))
    return out


def mutate_tree(doc: Any, draw: Draw, toml: bool = False) -> tuple[Any, str]:
    """One structure-aware mutation; returns the new document and what was done."""
    path = pick_path(doc, draw)
    node = get_at(doc, path)
    where = describe(path)
    op = draw.integer(0, 11)
    if op <= 2:
        new = nasty_value(draw, toml)
        return set_at(doc, path, new), f"{where} = {_short(new)}"
    if op == 3:
        new = confuse_type(node, draw)
        return set_at(doc, path, new), f"{where} = {_short(new)} (type)"
    if op == 4 and isinstance(node, int) and not isinstance(node, bool):
        new = tweak_int(node, draw)
        return set_at(doc, path, new), f"{where} = {new} (was {node})"
    if op == 5 and path:
        parent = get_at(doc, path[:-1])
        del parent[path[-1]]
        return doc, f"delete {where}"
    if op == 6 and isinstance(node, dict):
        key = draw.choice(["unknown_field", "", "Name", "__proto__", "offset", "bytes", "1"])
        node[key] = nasty_value(draw, toml)
        return doc, f"{where}: add key {key!r}"
    if op == 7 and isinstance(node, dict) and node:
        key = draw.choice(list(node))
        first = draw.chance(0.5)
        dup = (key, nasty_value(draw, toml))
        items = list(node.items())
        pairs = Pairs(tuple([dup, *items] if first else [*items, dup]))
        return set_at(doc, path, pairs), f"{where}: duplicate key {key!r}"
    if op == 8 and isinstance(node, list):
        return _list_op(doc, path, node, draw, where)
    if op == 9 and path:
        donor = get_at(doc, draw.choice(_all_nodes(doc)))
        if not isinstance(donor, (Raw, Pairs)):
            return set_at(doc, path, copy.deepcopy(donor)), f"{where} = <subtree from elsewhere>"
    if op == 10 and path and len(_children(get_at(doc, path[:-1]))) > 1:
        parent = get_at(doc, path[:-1])
        other = draw.choice([k for k in _children(parent) if k != path[-1]])
        parent[path[-1]], parent[other] = parent[other], parent[path[-1]]
        return doc, f"{where}: swapped with sibling {other!r}"
    if op == 11 and path:
        wrapped = node
        for _ in range(draw.choice([1, 2, 50])):
            wrapped = [wrapped]
        return set_at(doc, path, wrapped), f"{where}: wrapped in lists"
    new = nasty_value(draw, toml)
    return set_at(doc, path, new), f"{where} = {_short(new)}"


def _list_op(doc: Any, path: Path_, node: list, draw: Draw, where: str) -> tuple[Any, str]:
    op = draw.integer(0, 4)
    if op == 0 or not node:
        node.clear()
        return doc, f"{where}: emptied"
    if op == 1:
        node.append(copy.deepcopy(draw.choice(node)))
        return doc, f"{where}: duplicated an item"
    if op == 2:
        node.pop(draw.integer(0, len(node) - 1))
        return doc, f"{where}: dropped an item"
    if op == 3:
        node.reverse()
        return doc, f"{where}: reversed"
    node.extend(copy.deepcopy(node) * draw.choice([1, 100, 5000]))
    return doc, f"{where}: repeated"


def _short(value: Any) -> str:
    text = value.text if isinstance(value, Raw) else repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} chars)"


# --- writers -------------------------------------------------------------------------------
def to_json(value: Any) -> str:
    """JSON text, with Raw written verbatim and Pairs allowed to repeat keys."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items) + "}"
    if isinstance(value, dict):
        body = ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items())
        return "{" + body + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if isinstance(value, datetime.date | datetime.time):
        return json.dumps(value.isoformat())
    return json.dumps(value)


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if key and all(c.isalnum() or c in "-_" for c in key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(
            value) else repr(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, dict | Pairs):
        items = value.items if isinstance(value, Pairs) else tuple(value.items())
        body = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in items if v is not None)
        return "{" + body + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if value is None:
        return '""'  # TOML has no null; an empty string is the closest wrong value
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # JSON's string escapes are TOML basic-string escapes


def to_toml(doc: Any) -> str:
    """TOML text for a top-level table: scalars first, then one [table] per nested table."""
    if not isinstance(doc, dict | Pairs):
        return f"value = {_toml_value(doc)}\n"
    items = doc.items if isinstance(doc, Pairs) else tuple(doc.items())
    lines, tables = [], []
    for key, value in items:
        if value is None:
            continue
        if isinstance(value, dict | Pairs):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, table in tables:
        sub = table.items if isinstance(table, Pairs) else tuple(table.items())
        lines.append(f"\n[{_toml_key(key)}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sub if v is not None]
    return "\n".join(lines) + "\n"


# --- byte-level damage ---------------------------------------------------------------------
def damage_text(data: bytes, draw: Draw) -> tuple[bytes, str]:
    """Damage a serialised file the way a bad disk, copy or editor would."""
    op = draw.integer(0, 8)
    n = len(data)
    if op == 0:
        cut = draw.integer(0, max(n - 1, 0))
        return data[:cut], f"truncated to {cut} of {n} bytes"
    if op == 1:
        at = draw.integer(0, n)
        junk = draw.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80", b"\xfe\xff"])
        return data[:at] + junk + data[at:], f"invalid UTF-8 {junk!r} at byte {at}"
    if op == 2:
        out = bytearray(data)
        for _ in range(draw.integer(1, 8)):
            if out:
                out[draw.integer(0, len(out) - 1)] ^= 1 << draw.integer(0, 7)
        return bytes(out), "bit flips"
    if op == 3:
        return b"\xef\xbb\xbf" + data, "UTF-8 byte-order mark"
    if op == 4:
        text = data.decode("utf-8", "replace")
        return text.encode("utf-16"), "re-encoded as UTF-16"
    if op == 5:
        return draw.choice([b"", b" ", b"null", b"[]", b"0", b'"x"', b"\x00" * 64]), "replaced"
    if op == 6:
        return data + draw.choice([b"}", b"garbage", b"\x00", data]), "trailing bytes"
    if op == 7:
        at = draw.integer(0, n)
        return data[:at] + draw.blob(64) + data[at:], f"random bytes at {at}"
    return data.replace(b"\n", b"\r"), "CR line endings"
