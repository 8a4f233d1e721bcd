"""Constrained decoding through one library (llguidance), the same for every backend.

A backend gives logits; llguidance gives the mask of tokens that keep the output a prefix of the
grammar; the request's own sampler picks among them. Nothing here depends on the engine beyond
the Backend seam (its tokens' bytes, end-of-generation ids, tokenizer), so llama.cpp and
onnxruntime get the same constrained behaviour.

`Vocabulary` is a backend's vocabulary as llguidance sees it (built once per engine: about a
second for 150k tokens) and a small cache of compiled grammars. `Guide` follows one choice:
`step` masks, samples, advances the matcher, and near max_tokens keeps the model's choice only
while a way to a valid end still fits in the tokens left (`runtime.structured.closing`);
otherwise it takes that way's next token. So a document ends within max_tokens whenever its
shortest way to an end fits; when it cannot (max_tokens below the shortest document, or a
grammar with no end in reach) the choice is cut and reports finish_reason "length".
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from runtime.backends.base import Backend
from runtime.errors import SamplingError
from runtime.structured.closing import Place, closing_order, ending_tokens, first_tries
from runtime.structured.grammar import problem

log = logging.getLogger(__name__)
# The longest way to an end the guide looks for; a longer one is not steered to.
WAY_CAP = 128
# Tokens of slack: the way is written once it needs all but SLACK of the tokens left.
SLACK = 2
COMPILED_CACHE = 16  # compiled grammars kept per vocabulary (a camera sends one schema all day)


class _Tokens:
    """What llguidance reads of a tokenizer: each token's bytes, the end-of-sequence id and a
    tokenize function (its protocol for tokenizers it has no binding for)."""

    is_tokenizer_wrapper = True
    bos_token_id = None
    special_token_ids: list[int] = []

    def __init__(self, tokens: list[bytes], eos: int, tokenize: Callable[[str], list[int]]
                 ) -> None:
        self.tokens, self.eos_token_id, self._tokenize = tokens, eos, tokenize

    def __call__(self, text: str) -> list[int]:
        return self._tokenize(text)


class Vocabulary:
    """A vocabulary for llguidance, plus what the guide needs to know of its tokens: each
    token's bytes, the end-of-generation ids (`eos` the one llguidance knows as EOS) and the
    tokenizer's function for text (llguidance tokenizes the text a grammar forces)."""

    def __init__(self, tokens: list[bytes], eog_ids: list[int], eos: int,
                 tokenize: Callable[[str], list[int]]) -> None:
        import llguidance

        @lru_cache(maxsize=4096)  # llguidance tokenizes forced text (keys) again and again
        def tokenized(text: str) -> tuple[int, ...]:
            return tuple(tokenize(text))

        self.n_vocab = len(tokens)
        self.eos = eos
        self.tokens = tokens
        self.eog = np.zeros(self.n_vocab, dtype=bool)
        self.eog[list(eog_ids)] = True
        self.eog_ids = np.flatnonzero(self.eog)
        # What a way to an end may write when no closing token fits: text, not whitespace.
        self.plain = np.array([bool(p.strip()) for p in tokens], dtype=bool) & ~self.eog
        self.order = closing_order(tokens)
        self.order_head = first_tries(tokens)
        self.enders = ending_tokens(tokens)
        self.tokenizer = llguidance.LLTokenizer(
            _Tokens(tokens, eos, lambda text: list(tokenized(text))))
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, engine: Backend) -> Vocabulary:
        """`engine`'s vocabulary (about a second for 150k tokens; see `vocabulary`)."""
        n = engine.n_vocab
        prefix = engine.tokenize("", special=False)  # what the engine adds to any text (BOS)

        def tokenize(text: str) -> list[int]:
            ids = engine.tokenize(text, special=False)
            return ids[len(prefix):] if prefix and ids[: len(prefix)] == prefix else ids

        return cls([engine.token_bytes(t) for t in range(n)],
                   [t for t in range(n) if engine.is_eog(t)], engine.eos_token(), tokenize)

    def matcher(self, grammar: str, source: str) -> Any:
        """A fresh llguidance matcher for `grammar` (compiled once, then copied); raises
        SamplingError starting with `source` when this vocabulary cannot run it."""
        import llguidance

        with self._lock:
            template = self._compiled.get(grammar)
            if template is not None:
                self._compiled.move_to_end(grammar)
                return template.deep_copy()
        why = problem(grammar, self.tokenizer)
        if why is not None:
            raise SamplingError(f"{source} could not be compiled: {why}")
        template = llguidance.LLMatcher(
            self.tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0
        )
        if template.is_error():
            raise SamplingError(f"{source} could not be compiled: {template.get_error()}")
        with self._lock:
            self._compiled[grammar] = template
            while len(self._compiled) > COMPILED_CACHE:
                self._compiled.popitem(last=False)
            return template.deep_copy()


_VOCABULARIES: weakref.WeakKeyDictionary[Any, Vocabulary] = weakref.WeakKeyDictionary()
_BUILDING = threading.Lock()


def vocabulary(engine: Backend) -> Vocabulary:
    """The engine's Vocabulary, built on first use and kept as long as the engine lives."""
    with _BUILDING:
        vocab = _VOCABULARIES.get(engine)
        if vocab is None:
            vocab = _VOCABULARIES[engine] = Vocabulary.of(engine)
        return vocab


class Guide:
    """One choice's constrained decoding: mask, sample, advance, and end in time."""

    def __init__(self, vocab: Vocabulary, grammar: str, source: str, left: int,
                 written: str = "") -> None:
        """`left`: tokens the choice may still write; `written`: text before the grammar's
        start (an auto-mode tool call's opening), for knowing where the text stands."""
        self.vocab = vocab
        self.text = source == "grammar"  # a raw grammar, not a JSON document or tool call
        self.matcher = vocab.matcher(grammar, source)
        self.place = Place()
        self.place.feed(written.encode("utf-8"))
        self.done = False  # complete, and the grammar admits nothing more
        self._words = np.empty((vocab.n_vocab + 31) // 32, dtype=np.int32)
        self._words_at = (self._words.ctypes.data, self._words.nbytes)
        self._bytes = self._words.view(np.uint8)
        self._masked = np.empty(vocab.n_vocab, dtype=np.float32)
        self._way_out: deque[int] = deque()  # the way to an end, once it is being written
        self._check_at = left  # the tokens left at which to look for the way next

    # --- one step ---------------------------------------------------------------------------
    def step(self, logits: np.ndarray, sample: Callable[[np.ndarray], int], left: int
             ) -> int | None:
        """The next token among those the grammar allows (`left` tokens left, this one
        included), consumed by the matcher unless it ends the generation; None when no token
        can continue. Near the end, the way to a valid end instead of the model's choice."""
        if not self._way_out and left <= self._check_at:
            way = self._way(min(left, WAY_CAP))
            if way is not None and len(way) + SLACK >= left:
                self._way_out.extend(way)
            else:
                self._check_at = self._next_check(left, way)
        if self._way_out:
            token = self._way_out.popleft()
        else:
            allowed = self._allowed()
            if not self._words.any() and not self.matcher.is_accepting():
                return None
            masked = self._masked
            masked.fill(-np.inf)
            np.copyto(masked, logits, where=allowed)
            token = int(sample(masked))
        if not self.vocab.eog[token] and not self._consume(token):
            return None
        return token

    def _consume(self, token: int) -> bool:
        """Advance past `token`; False when the matcher failed (a grammar past the library's
        limits on what one step may cost), which ends the choice as cut."""
        if not self.matcher.consume_token(token):
            log.warning("constrained decoding stopped: %s",
                        self.matcher.get_error().split("\n", 1)[0])
            return False
        self.place.feed(self.vocab.tokens[token])
        self.done = self.matcher.is_stopped()
        return True

    def _allowed(self) -> np.ndarray:
        """The mask for the next token: what llguidance allows, with every end-of-generation
        token (not only the one llguidance knows as EOS) allowed exactly when it may end."""
        self.matcher.unsafe_compute_mask_ptr(*self._words_at)
        bits = np.unpackbits(self._bytes, bitorder="little", count=self.vocab.n_vocab)
        allowed = bits.view(bool)
        allowed[self.vocab.eog_ids] = self.matcher.is_accepting()
        return allowed

    # --- the way to an end ------------------------------------------------------------------
    def _advance(self, m: Any, place: Place, used: set[int]) -> int | None:
        """Take the way's next token on matcher `m` (closing.py's order); None when nothing
        can follow. Of the other tokens, one the way has not written yet, so it does not go
        round in circles where an end needs some particular character (an email's `@`)."""
        order = self.vocab.order[place.name]
        if self.text:  # a raw grammar: first a token after which it may end (a newline)
            for token in self.vocab.enders:
                if m.try_consume_tokens([token]) == 1:
                    if m.is_accepting():
                        return token
                    m.rollback(1)
            order = np.array([t for t in order.tolist() if t not in used], dtype=np.int64)
        else:
            for token in self.vocab.order_head[place.name]:  # usually one of these: no mask
                if m.try_consume_tokens([token]) == 1:
                    return token
        m.unsafe_compute_mask_ptr(*self._words_at)
        hits = np.flatnonzero((self._words[order >> 5] >> (order & 31)) & 1)
        if hits.size:
            token = int(order[hits[0]])
        else:
            allowed = np.unpackbits(self._bytes, bitorder="little", count=self.vocab.n_vocab)
            rest = np.flatnonzero(allowed.view(bool) & self.vocab.plain)
            fresh = [t for t in rest[:256].tolist() if t not in used]
            token = fresh[0] if fresh else int(rest[0]) if rest.size else -1
        return token if token >= 0 and m.try_consume_tokens([token]) == 1 else None

    def _way(self, limit: int) -> list[int] | None:
        """The tokens of the way to an end from here (ending with an end-of-generation token
        when the grammar needs one), or None when none of at most `limit` tokens is found.
        Walked on a copy of the matcher, so a failed search leaves the choice as it was."""
        m, place, way, used = self.matcher.deep_copy(), self.place.copy(), [], set()
        while not m.is_stopped():
            if m.is_accepting():
                way.append(self.vocab.eos)
                break
            if len(way) >= limit:
                return None
            forced = m.compute_ff_tokens()  # what the grammar allows alone (a key's text)
            if forced:
                forced = forced[: m.try_consume_tokens(forced)]
            else:
                token = self._advance(m, place, used)
                if token is None:
                    return None
                forced = [token]
            if not forced or m.is_error():
                return None
            for token in forced:
                place.feed(self.vocab.tokens[token])
            way.extend(forced)
            used.update(forced)
        return way if len(way) <= limit else None

    @staticmethod
    def _next_check(left: int, way: list[int] | None) -> int:
        """When (in tokens left) to look for the way again: three quarters of the way to where
        it would have to be written (the way grows slowly while the model writes), so the
        search runs a few times per choice; a way not found is looked for again after a
        quarter of what is left."""
        if way is None:
            return left - max(1, left // 4)
        return left - max(1, -(-(left - len(way) - SLACK) * 3 // 4))
