"""Which tokens end a constrained document soonest: the order the way to an end tries them.

Constrained decoding keeps every token a prefix of some valid document, not that the document
ends before max_tokens: a small model can write a string forever. So the guide
(`runtime.structured.guide`) looks for a way to a valid end — one token per step, the first the
grammar allows in this order — and, once that way only just fits in the tokens left, writes it.
Which tokens close depends on where the text stands (`Place`):
- inside a JSON string: tokens that start with `"` (they end it), best when nothing but `}` / `]`
  follows the quote, worst when a `,` does (it opens another member);
- elsewhere: tokens made of `}` / `]`, then `,` / `:` (on to the next required property), then
  a whole short value (`0`, `null`, `""`, `[]`, ...: a value the grammar demands, at once) or
  the beginning of `null` / `true` / `false`, then `"` (a key, or a string value).
Within a tier, tokens that write more of the closers come first (`}}` closes two levels in one
token), and of those the ones with less whitespace. When the grammar allows none of them (a
pattern, a minimum, an enum still being spelled), the way takes the lowest-numbered token it
allows that it has not written yet (so it does not go round in circles), whitespace last. In a
raw grammar (not JSON) the way first tries a token that ends a line or a sentence, keeping it
if the grammar may end there, and takes no closing token twice. Most steps of a way are one
likely token where the text stands (`first_tries`: a string's closing quote, a key's colon, a
short value, ...), tried before the guide computes a whole mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRING, STRUCTURE = "string", "structure"
_SPACE = frozenset(" \t\n")
_CLOSERS = frozenset("\"}],:") | _SPACE
# Whole short values, in the order the way prefers them.
SHORT_VALUES = ("0", '""', "null", "[]", "{}", "false", "true")
# Beginnings of the words among them: `n` may be all of `null` a vocabulary has.
_WORD_STARTS = frozenset(w[:i] for w in ("null", "true", "false") for i in range(1, len(w)))


def tiers(piece: bytes) -> tuple[int, int]:
    """(tier inside a string, tier elsewhere) for one token's bytes; 0: not a closing token.

    Elsewhere: 5 closes brackets, 4 moves on (`,` `:`), 3 is a whole short value, 2 begins
    `null` / `true` / `false` (preferred to opening a string where either may come), 1 has a
    quote."""
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return 0, 0
    word = text.strip()
    if word in SHORT_VALUES and word != '""':
        return 0, 3
    if word in _WORD_STARTS:
        return 0, 2
    if not text or not set(text) <= _CLOSERS or not word:
        return 0, 0
    in_string = 0
    if text[0] == '"':  # ends the string; what follows it decides how much it closes
        after = set(text[1:]) - _SPACE
        in_string = 3 if after <= set("}]") else 2 if "," not in after else 1
    if word == '""':
        return in_string, 3
    if '"' in text:
        return in_string, 1
    if set(word) <= set("}]"):
        return in_string, 5
    return in_string, 4


def closing_order(tokens: Sequence[bytes]) -> dict[str, np.ndarray]:
    """Per place, the ids of the closing tokens, best first (tier, then among short values
    SHORT_VALUES' order, then closers written, then fewest bytes, then id)."""
    ranked: dict[str, list[tuple[int, int, int, int, int]]] = {STRING: [], STRUCTURE: []}
    for token, piece in enumerate(tokens):
        inside, outside = tiers(piece)
        solid = len(piece) - sum(piece.count(c) for c in b" \t\n")
        word = piece.decode("utf-8", "replace").strip()
        value = SHORT_VALUES.index(word) if word in SHORT_VALUES else 0
        if inside:
            ranked[STRING].append((-inside, 0, -solid, len(piece), token))
        if outside:
            ranked[STRUCTURE].append((-outside, value, -solid, len(piece), token))
    return {place: np.array([r[-1] for r in sorted(rs)], dtype=np.int64)
            for place, rs in ranked.items()}


# What the way tries one by one before it computes a whole mask, by where the text stands
# (`Place.at`): the likely next token there, in the order of the tiers (closing first).
KEY, COLON, VALUE, AFTER = "key", "colon", "value", "after"
_TRIES = {STRING: ('"',), KEY: ("}", '"'), COLON: (":",), AFTER: ("}", "]", ","),
          VALUE: ("]", "0", '""', "null", "n", '"')}


def first_tries(tokens: Sequence[bytes]) -> dict[str, list[int]]:
    """Per `Place.at`, the ids of the tokens the way tries first (those the vocabulary has)."""
    ids = {piece: token for token, piece in reversed(list(enumerate(tokens)))}
    return {at: [ids[t.encode()] for t in texts if t.encode() in ids]
            for at, texts in _TRIES.items()}


_STOPS = frozenset(".!?;")


def ending_tokens(tokens: Sequence[bytes], limit: int = 16) -> list[int]:
    """Tokens that end a line or a sentence (a newline, `.`, `!`, `?`, `;`), shortest first:
    what the way tries first in a raw grammar, keeping one that lets the text end."""
    found = []
    for token, piece in enumerate(tokens):
        text = piece.decode("utf-8", "replace")
        if not text:
            continue
        if ("\n" in text and not text.strip()) or (text.rstrip("\n") in _STOPS):
            found.append((len(piece), token))
    return [t for _, t in sorted(found)[:limit]]


class Place:
    """Where JSON text written so far stands, fed byte by byte: inside a string or not, and
    outside one what comes next (a key, a colon, a value, or what follows a value). A raw
    grammar's text is read the same way, which only changes the order of preference."""

    __slots__ = ("in_string", "escaped", "expect", "stack", "key")

    def __init__(self) -> None:
        self.in_string, self.escaped, self.key = False, False, False
        self.expect = VALUE
        self.stack: list[int] = []

    def copy(self) -> Place:
        other = Place()
        other.in_string, other.escaped, other.key = self.in_string, self.escaped, self.key
        other.expect, other.stack = self.expect, self.stack.copy()
        return other

    def feed(self, data: bytes) -> None:
        for b in data:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif b == 0x5C:  # backslash
                    self.escaped = True
                elif b == 0x22:  # the closing quote
                    self.in_string = False
                    self.expect = COLON if self.key else AFTER
            elif b == 0x22:
                self.in_string, self.key = True, self.expect == KEY
            elif b in b"{[":
                self.stack.append(b)
                self.expect = KEY if b == 0x7B else VALUE
            elif b in b"}]":
                if self.stack:
                    self.stack.pop()
                self.expect = AFTER
            elif b == 0x3A:  # colon
                self.expect = VALUE
            elif b == 0x2C:  # comma
                self.expect = KEY if self.stack and self.stack[-1] == 0x7B else VALUE
            elif b not in b" \t\r\n":
                self.expect = AFTER  # a number or a word (true, false, null) under way

    @property
    def name(self) -> str:
        return STRING if self.in_string else STRUCTURE

    @property
    def at(self) -> str:
        """STRING, or what comes next outside a string (KEY, COLON, VALUE, AFTER)."""
        return STRING if self.in_string else self.expect
