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
from runtime.structured.closing import KEY, Place, closing_order, ending_tokens, first_tries
from runtime.structured.grammar import problem

log = logging.getLogger(__name__)
# The longest way to an end the guide looks for; a longer one is not steered to.
WAY_CAP = 128
# Tokens of slack: the way is written once it needs all but SLACK (and an eighth of its
# length: a long way is looked for again less often near the end) of the tokens left.
SLACK = 3
# A way found within NEAR tokens of having to be written is written at once: looking for it
# again (~0.2 ms) costs more than the model's NEAR tokens are worth to the answer.
NEAR = 2
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


class _Bounded(OrderedDict):  # type: ignore[type-arg]
    """A dict that forgets its oldest entries beyond `size` (entries are plain values, so
    threads racing on one key at worst compute it twice)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.size:
            self.popitem(last=False)


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
        self.order_word = {place: ids >> 5 for place, ids in self.order.items()}
        self.order_bit = {place: (ids & 31).astype(np.int32) for place, ids in self.order.items()}
        self.tries = first_tries(tokens)
        bits = np.zeros(((self.n_vocab + 31) // 32) * 32, dtype=np.uint8)
        bits[: self.n_vocab] = self.plain
        self.plain_words = np.packbits(bits, bitorder="little").view(np.int32)
        self.enders = ending_tokens(tokens)
        self.tokenizer = llguidance.LLTokenizer(
            _Tokens(tokens, eos, lambda text: list(tokenized(text))))
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        # The way to an end from a grammar's start (and the text before it), by grammar.
        self.first_ways: _Bounded = _Bounded(COMPILED_CACHE * 4)

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


def _slack(way: list[int]) -> int:
    return SLACK + len(way) // 8


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
        self._way_out: deque[int] = deque()  # the way to an end, once it is being written
        self._check_at = left  # the tokens left at which to look for the way next
        self._way_len: int | None = None  # the length of the way found at the last look
        self._first: tuple[str, str] | None = (grammar, written)  # the start, for its way
        self._restart = 0  # tokens within which a token after a possible end is checked
        self._last_way: tuple[list[int], list[int]] | None = None  # and its members' starts

    # --- one step ---------------------------------------------------------------------------
    def step(self, logits: np.ndarray, sample: Callable[[np.ndarray], int], left: int,
             draw_first: bool = False) -> int | None:
        """The next token among those the grammar allows (`left` tokens left, this one
        included), consumed by the matcher unless it ends the generation; None when no token
        can continue. Near the end, the way to a valid end instead of the model's choice.

        `draw_first`: the sampler is greedy or draws from the whole softmax (no top-k/top-p),
        so drawing from the unmasked logits and keeping the token when the grammar allows it
        (else drawing again among the allowed ones) picks each allowed token with exactly the
        masked probability — and most steps need no mask. (Putting the mask first after a mask
        that allowed few tokens was tried: json_schema 1.08x instead of 1.10x of unconstrained
        on the trained fixture, but json_object 1.15x instead of 1.11x.)"""
        if not self._way_out and left <= self._check_at:
            way = self._first_way(left) if self._first else self._way(min(left, WAY_CAP))
            if way is not None and len(way) + _slack(way) + NEAR >= left:
                self._way_out.extend(way)
            else:
                self._check_at = self._next_check(left, way, self._way_len)
                self._way_len = None if way is None else len(way)
        if self._way_out:
            token = self._way_out.popleft()
            if not self.vocab.eog[token] and not self._consume(token):
                return None
            return token
        # Where the output may end but need not (between tool calls, after a line), a token
        # can open something long: near the end it must leave a way that fits, else it ends.
        was_accepting = self.matcher.is_accepting()
        guard = was_accepting and left - 1 < self._restart
        before = self.place.copy() if guard else self.place
        if draw_first and (token := self._drawn(logits, sample)) is not None:
            pass
        else:  # the sampler draws among the allowed tokens only (see Sampler)
            allowed = self._allowed()
            if not allowed.size:
                return None
            token = int(allowed[sample(logits[allowed])])
            if not self.vocab.eog[token] and not self._consume(token):
                return None
        if guard and not self.vocab.eog[token] and self._way(min(left - 1, WAY_CAP)) is None:
            self.matcher.rollback(1)
            self.place, self.done = before, False
            return self.vocab.eos
        if was_accepting and not self.vocab.eog[token]:  # went on past a possible end:
            self._check_at = max(self._check_at, left - 1)  # what is left to do is new
            self._way_len = None
        return token

    def _drawn(self, logits: np.ndarray, sample: Callable[[np.ndarray], int]) -> int | None:
        """The token drawn from the unmasked logits when the grammar allows it (consumed)."""
        token = int(sample(logits))
        if self.vocab.eog[token]:
            return token if self.matcher.is_accepting() else None
        if self.matcher.try_consume_tokens([token]) != 1:
            return None
        self.place.feed(self.vocab.tokens[token])
        self.done = self.matcher.is_stopped()
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
        """The ids the next token may take, ascending: what llguidance allows, with every
        end-of-generation token (not only the one llguidance knows as EOS) allowed exactly when
        the output may end."""
        self.matcher.unsafe_compute_mask_ptr(*self._words_at)
        bits = np.unpackbits(self._bytes, bitorder="little", count=self.vocab.n_vocab)
        bits[self.vocab.eog_ids] = self.matcher.is_accepting()
        return np.flatnonzero(bits)

    # --- the way to an end ------------------------------------------------------------------
    def _advance(self, m: Any, place: Place, used: set[int]) -> int | None:
        """Take the way's next token on matcher `m` (closing.py's order); None when nothing
        can follow. Of the other tokens, one the way has not written yet, so it does not go
        round in circles where an end needs some particular character (an email's `@`)."""
        vocab, name = self.vocab, place.name
        order, word_of, bit_of = vocab.order[name], vocab.order_word[name], vocab.order_bit[name]
        if self.text:  # a raw grammar: first a token after which it may end (a newline)
            for token in vocab.enders:
                if m.try_consume_tokens([token]) == 1:
                    if m.is_accepting():
                        return token
                    m.rollback(1)
            fresh = np.array([t not in used for t in order.tolist()], dtype=bool)
            order, word_of, bit_of = order[fresh], word_of[fresh], bit_of[fresh]
        else:
            for token in vocab.tries[place.at]:  # usually one of these: no mask needed
                if m.try_consume_tokens([token]) == 1:
                    return token
        m.unsafe_compute_mask_ptr(*self._words_at)
        words = self._words
        hits = np.flatnonzero((words[word_of] >> bit_of) & 1)
        token = int(order[hits[0]]) if hits.size else self._first_fresh(words, used)
        return token if token >= 0 and m.try_consume_tokens([token]) == 1 else None

    def _first_fresh(self, words: np.ndarray, used: set[int]) -> int:
        """The lowest allowed text token (not whitespace) the way has not written yet, else
        the lowest allowed one; -1 when none is allowed."""
        first = -1
        candidates = words & self.vocab.plain_words
        for index in np.flatnonzero(candidates).tolist():
            word = int(candidates[index]) & 0xFFFFFFFF
            while word:
                token = index * 32 + (word & -word).bit_length() - 1
                if token not in used:
                    return token
                first = token if first < 0 else first
                word &= word - 1
        return first

    def _first_way(self, left: int) -> list[int] | None:
        """The way from the grammar's start: the same for every request with this grammar,
        so it is looked for once (up to WAY_CAP tokens) and kept with the compiled grammar."""
        key, self._first = self._first, None
        assert key is not None
        way = self.vocab.first_ways.get(key, False)
        if way is False:
            way = self.vocab.first_ways[key] = self._way(WAY_CAP)
        # what a fresh start of the grammar (another tool call) would need
        self._restart = WAY_CAP if way is None else len(way) + _slack(way)
        return way if way is not None and len(way) <= left else None

    def _way(self, limit: int) -> list[int] | None:
        """The tokens of the way to an end from here (ending with an end-of-generation token
        when the grammar needs one), or None when none of at most `limit` tokens is found.
        Walked on a copy of the matcher, so a failed search leaves the choice as it was.

        At the start of an object member the rest of the previous way is tried first: while
        the model writes the members that way would have written, what follows is the same,
        and one check of it replaces walking it again."""
        m, place, way, used = self.matcher.deep_copy(), self.place.copy(), [], set()
        members: list[int] = []  # where in `way` an object member starts
        while not m.is_stopped():
            if m.is_accepting():
                way.append(self.vocab.eos)
                break
            if len(way) >= limit:
                return None
            if place.at == KEY:
                members.append(len(way))
                rest = self._rest_of_last_way(m)
                if rest is not None:
                    way.extend(rest)
                    break
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
        if len(way) > limit:
            return None
        self._last_way = (way, members)
        return way

    def _rest_of_last_way(self, m: Any) -> list[int] | None:
        """The shortest tail of the last way, from one of its object members on, that leads
        from `m`'s state to an end (None when none does)."""
        if self._last_way is None:
            return None
        way, members = self._last_way
        end = len(way) - 1 if way and self.vocab.eog[way[-1]] else len(way)
        for start in reversed(members):
            tail = way[start:end]
            trial = m.deep_copy()
            if tail and trial.try_consume_tokens(tail) == len(tail) and (
                    trial.is_stopped() or (end < len(way) and trial.is_accepting())):
                return way[start:]
        return None

    @staticmethod
    def _next_check(left: int, way: list[int] | None, before: int | None) -> int:
        """When (in tokens left) to look for the way again. `before`: the way's length at the
        look before (None: none, or the output went on past a possible end since).

        A way no longer than before (the model is filling in what it opened, the usual case)
        is looked for next where it would have to be written, so one more look most often
        writes it (NEAR lets a way that shrank meanwhile by up to NEAR tokens be written there
        too). Otherwise three quarters of the way there (the way grows slowly while the model
        writes; going on past a possible end, where it may grow a lot, looks again at once).
        A way not found is looked for again after a quarter of what is left."""
        if way is None:
            return left - max(1, left // 4)
        gap = left - len(way) - _slack(way)
        if before is not None and len(way) <= before:
            return left - max(1, gap)
        return left - max(1, -(-gap * 3 // 4))
