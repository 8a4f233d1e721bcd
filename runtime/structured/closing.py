"""Steering a constrained generation to a valid end before max_tokens runs out.

When the tokens left no longer exceed what the shortest valid completion needs
(`JsonProgress.need`), the logits get a large bonus on tokens that close what is open. Which
tokens close depends on where the document stands, so there are two bonus vectors:
- inside a string: tokens that start with `"` (they end it), best when nothing but `}` / `]`
  follows the quote, worst when a `,` does (it opens another member);
- elsewhere, in tiers: end-of-generation (the grammar allows it only once the document is
  complete), then tokens made of `}` / `]`, then `,` / `:` (on to the next required property),
  then `"` (a key or string value the grammar demands).
The grammar still masks whatever does not fit, so among the tokens it allows the sampler takes
the one that closes soonest: each token writes at least one byte, so the document ends within
`need` tokens. The bonus is far larger than any logit range, so temperature and top-p cannot
undo it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

STEP = 1.0e4
STRING, STRUCTURE = "string", "structure"
_SPACE = frozenset(" \t\n")
_CLOSERS = frozenset("\"}],:") | _SPACE


def _tiers(piece: bytes) -> tuple[int, int]:
    """(bonus tier inside a string, bonus tier elsewhere) for one token's text."""
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return 0, 0
    if not text or not set(text) <= _CLOSERS or not text.strip():
        return 0, 0
    in_string = 0
    if text[0] == '"':  # ends the string; what follows it decides how much it closes
        after = set(text[1:]) - _SPACE
        in_string = 3 if after <= set("}]") else 2 if "," not in after else 1
    if '"' in text:
        return in_string, 1
    if set(text.strip()) <= set("}]"):
        return in_string, 3
    return in_string, 2


def closing_bias(
    n_vocab: int, token_bytes: Callable[[int], bytes], is_eog: Callable[[int], bool]
) -> dict[str, np.ndarray]:
    """The bonus added to every token's logit in closing mode, per place (STRING, STRUCTURE)."""
    inside = np.zeros(n_vocab, dtype=np.float32)
    outside = np.zeros(n_vocab, dtype=np.float32)
    for t in range(n_vocab):
        if is_eog(t):
            inside[t] = outside[t] = 4 * STEP
            continue
        a, b = _tiers(token_bytes(t))
        inside[t], outside[t] = a * STEP, b * STEP
    return {STRING: inside, STRUCTURE: outside}
