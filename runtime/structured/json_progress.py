"""How far a JSON document being generated is from a valid end, measured against its schema.

Constrained decoding guarantees that every token keeps the text a prefix of some valid document,
not that the document ends before max_tokens: a small model can write a string forever. So the
generation loop asks `JsonProgress.need()` after each token for an upper bound on the bytes the
shortest valid completion still takes (closing quotes and brackets, the required properties not
yet written, minItems, a literal half typed). When the tokens left no longer exceed it, the
sampler is steered to closing tokens (`runtime.structured.closing`); every token is at least one
byte, so the document then ends in time. The reader is incremental: each character is seen once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime.structured.json_schema import Schema

Node = dict[str, Any]
_WORDS = {"t": 4, "f": 5, "n": 4}  # true, false, null


@dataclass
class _Container:
    kind: str  # "obj" | "arr"
    cands: list[Node]  # the schema nodes this value may be (references resolved)
    # obj: open (after "{"), key (after ","), colon, value, after; arr: open, value, after
    phase: str = "open"
    keys: set[str] = field(default_factory=set)
    key: str | None = None
    count: int = 0
    child: bool = False  # one of its values (or a key) is being written


@dataclass
class _Scalar:
    kind: str  # "str" | "num" | "lit"
    role: str  # "key" | "value"
    cands: list[Node]
    n: int = 0  # str: characters so far; lit: characters still to come
    esc: int = 0  # str: -1 just after a backslash, else hex digits still to come
    text: list[str] = field(default_factory=list)


class JsonProgress:
    """Reads a JSON document as it is generated; `need()` bounds the bytes left to a valid end."""

    def __init__(self, schema: Schema | None = None) -> None:
        self.schema = schema or Schema({})
        self.stack: list[_Container | _Scalar] = []
        self.done = False
        self.started = False

    def feed(self, text: str) -> None:
        for ch in text:
            self._char(ch)

    def in_string(self) -> bool:
        """Whether the text so far ends inside a string (a key or a value)."""
        return bool(self.stack) and isinstance(self.stack[-1], _Scalar) and \
            self.stack[-1].kind == "str"

    # --- measuring ---------------------------------------------------------------------------
    def need(self) -> int:
        if self.done:
            return 0
        if not self.stack:
            return self.schema.close_bytes()
        total = 0
        for frame in reversed(self.stack):
            total += self._scalar_need(frame) if isinstance(frame, _Scalar) else self._need(frame)
        return total

    def _scalar_need(self, s: _Scalar) -> int:
        if s.kind == "num":
            return 2  # "-", "1." or "1e" still need a digit; then the number may end
        if s.kind == "lit":
            return max(s.n, 0)
        if s.role == "key":  # finish some key, its colon and the smallest value it can take
            return max((len(json.dumps(k)) for k in self._props(s.cands)), default=2) + 1 + max(
                (self.schema.close_bytes(v) for v in self._props(s.cands).values()), default=2
            )
        extra = 0
        for c in s.cands:
            if "minLength" in c:
                extra = max(extra, c["minLength"] - s.n)
            for lit in _string_literals(c):
                extra = max(extra, len(lit) - 1 - s.n)
            if "format" in c:
                extra = max(extra, 40 - s.n)
        return 1 + max(s.esc, 0) + (1 if s.esc < 0 else 0) + max(extra, 0)

    def _need(self, c: _Container) -> int:
        if c.kind == "obj":
            rem = max((self._missing(n, c) for n in c.cands), default=0)
            if c.phase == "colon":
                return 1 + self._value_min(c.cands, c.key) + rem + 1
            if c.phase == "value":
                return (0 if c.child else self._value_min(c.cands, c.key)) + rem + 1
            if c.phase == "key" and not c.child and rem == 0:  # after ",": some pair must follow
                props = self._props(c.cands)
                pair = max((len(json.dumps(k)) + 1 + self.schema.close_bytes(v)
                            for k, v in props.items()), default=6)
                return pair + 1
            return rem + 1
        item = max((self._item_min(n, c.count) for n in c.cands), default=2)
        left = max(max(self._min_items(n) for n in c.cands) - c.count - int(c.child), 0)
        if c.phase == "value" and not c.child:
            left = max(left, 1)
        return left * (item + 1) + 1

    def _missing(self, node: Node, c: _Container) -> int:
        props = node.get("properties", {})
        return sum(
            len(json.dumps(k)) + 2 + self.schema.close_bytes(props[k])
            for k in node.get("required", [])
            if k not in c.keys and k != c.key
        )

    def _props(self, cands: list[Node]) -> dict[str, Node]:
        out: dict[str, Node] = {}
        for n in cands:
            out.update(n.get("properties", {}))
        return out

    def _value_min(self, cands: list[Node], key: str | None) -> int:
        return max((self.schema.close_bytes(v) for v in self._value_cands(cands, key)), default=2)

    def _item_min(self, node: Node, count: int) -> int:
        return max((self.schema.close_bytes(v) for v in self._item_cands([node], count)), default=2)

    @staticmethod
    def _min_items(node: Node) -> int:
        if "prefixItems" in node:
            return len(node["prefixItems"])
        return int(node.get("minItems", 0))

    # --- reading -------------------------------------------------------------------------------
    def _char(self, ch: str) -> None:
        top = self.stack[-1] if self.stack else None
        if isinstance(top, _Scalar):
            if top.kind == "str":
                self._string_char(top, ch)
                return
            if top.kind == "lit":
                top.n -= 1
                if top.n <= 0:
                    self._finish()
                return
            if ch in "0123456789+-.eE":
                return
            self._finish()  # a number ends at the first character that is not part of it
            top = self.stack[-1] if self.stack else None
        if ch in " \t\n\r":
            return
        if top is None:
            if not self.done:
                self.started = True
                self._start(ch, [self.schema.root])
            return
        assert isinstance(top, _Container)
        if top.kind == "obj":
            if top.phase in ("open", "key") and ch == '"':
                top.child = True
                self.stack.append(_Scalar("str", "key", top.cands))
            elif top.phase in ("open", "after") and ch == "}":
                self._finish()
            elif top.phase == "colon" and ch == ":":
                top.phase = "value"
            elif top.phase == "value":
                top.child = True
                self._start(ch, self._value_cands(top.cands, top.key))
            elif top.phase == "after" and ch == ",":
                top.phase = "key"
        else:
            if top.phase in ("open", "after") and ch == "]":
                self._finish()
            elif top.phase in ("open", "value"):
                top.child = True
                self._start(ch, self._item_cands(top.cands, top.count))
            elif top.phase == "after" and ch == ",":
                top.phase = "value"

    def _string_char(self, s: _Scalar, ch: str) -> None:
        if s.esc < 0:
            s.esc = 4 if ch == "u" else 0
        elif s.esc > 0:
            s.esc -= 1
        elif ch == "\\":
            s.esc, s.n = -1, s.n + 1
        elif ch == '"':
            self._finish()
        else:
            s.n += 1
            if s.role == "key":
                s.text.append(ch)

    def _start(self, ch: str, cands: list[Node]) -> None:
        cands = self._expand(cands)
        if ch == "{":
            self.stack.append(_Container("obj", _of_kind(cands, "obj")))
        elif ch == "[":
            self.stack.append(_Container("arr", _of_kind(cands, "arr")))
        elif ch == '"':
            self.stack.append(_Scalar("str", "value", cands))
        elif ch == "-" or ch.isdigit():
            self.stack.append(_Scalar("num", "value", cands))
        elif ch in _WORDS:
            self.stack.append(_Scalar("lit", "value", cands, n=_WORDS[ch] - 1))

    def _finish(self) -> None:
        """The innermost value (or key) is complete: pop it and advance its container."""
        done = self.stack.pop()
        parent = self.stack[-1] if self.stack else None
        if parent is None:
            self.done = True
            return
        assert isinstance(parent, _Container)
        parent.child = False
        if isinstance(done, _Scalar) and done.role == "key":
            parent.key, parent.phase = "".join(done.text), "colon"
        elif parent.kind == "obj":
            if parent.key is not None:
                parent.keys.add(parent.key)
            parent.key, parent.phase = None, "after"
        else:
            parent.count, parent.phase = parent.count + 1, "after"

    # --- schema navigation ---------------------------------------------------------------------
    def _expand(self, nodes: list[Node], depth: int = 0) -> list[Node]:
        out: list[Node] = []
        for n in nodes:
            n = self.schema.resolve(n)
            if "anyOf" in n and depth < 8:
                out += self._expand(n["anyOf"], depth + 1)
            elif isinstance(n.get("type"), list):
                out += [{"type": t} for t in n["type"]]
            else:
                out.append(n)
        return out or [{}]

    def _value_cands(self, cands: list[Node], key: str | None) -> list[Node]:
        out: list[Node] = []
        for n in cands:
            props, extra = n.get("properties", {}), n.get("additionalProperties")
            if key in props:
                out.append(props[key])
            elif isinstance(extra, dict):
                out.append(extra)
            else:
                out.append({})
        return self._expand(out)

    def _item_cands(self, cands: list[Node], count: int) -> list[Node]:
        out: list[Node] = []
        for n in cands:
            if "prefixItems" in n:
                items = n["prefixItems"]
                out.append(items[count] if count < len(items) else {})
            else:
                out.append(n.get("items", {}))
        return self._expand(out)


def _of_kind(cands: list[Node], kind: str) -> list[Node]:
    """The candidates a container opened with "{" or "[" can be (a free-form value if none)."""
    def kind_of(n: Node) -> str:
        t = n.get("type")
        if t == "object" or "properties" in n or "additionalProperties" in n:
            return "obj"
        if t == "array" or "items" in n or "prefixItems" in n:
            return "arr"
        return "any" if not n else "other"

    return [n for n in cands if kind_of(n) in (kind, "any")] or [{}]


def _string_literals(node: Node) -> list[str]:
    values = node.get("enum", []) + ([node["const"]] if "const" in node else [])
    return [json.dumps(v) for v in values if isinstance(v, str)]
