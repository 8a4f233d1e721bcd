"""Where a mutator's choices come from: a seeded `random.Random` or hypothesis' `st.data()`.

Mutators only ask a `Draw` for integers, choices and bytes, so the same operators serve a
reproducible campaign (case i of seed S is `RandomDraw.for_case(S, kind, i)`, regenerated
without replaying cases 0..i-1) and property tests whose failures hypothesis shrinks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Draw(Protocol):
    def integer(self, lo: int, hi: int) -> int:
        """A uniform-ish integer in [lo, hi]."""

    def choice(self, items: Sequence[T]) -> T:
        """One of `items` (non-empty)."""

    def chance(self, p: float) -> bool:
        """True with probability about `p`."""

    def blob(self, max_len: int) -> bytes:
        """Arbitrary bytes, at most `max_len` long."""


class RandomDraw:
    """A `Draw` over `random.Random`; string seeds hash the same on every run and platform."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    @classmethod
    def for_case(cls, seed: int, kind: str, index: int) -> RandomDraw:
        return cls(random.Random(f"edgemoe-fuzz/{seed}/{kind}/{index}"))

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, items: Sequence[T]) -> T:
        return items[self.rng.randrange(len(items))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def blob(self, max_len: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_len))


class HypothesisDraw:
    """A `Draw` over hypothesis' interactive `data` object, so failing cases shrink."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self._st = st
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self._st.integers(lo, hi))

    def choice(self, items: Sequence[T]) -> T:
        return items[self.data.draw(self._st.integers(0, len(items) - 1))]

    def chance(self, p: float) -> bool:
        # An integer rather than st.booleans(): shrinks towards "no" and honours p roughly.
        return self.data.draw(self._st.integers(0, 999)) >= 1000 - int(p * 1000)

    def blob(self, max_len: int) -> bytes:
        return self.data.draw(self._st.binary(max_size=max_len))
