"""A hybrid graph's recurrent state between runs, and how the ONNX backend rolls it back.

Recurrent layers take their state as `past_conv.i` / `past_ssm.i` inputs and return the next one
as `present_conv.i` / `present_ssm.i` (packager/onnx_export/recurrent.py); the backend feeds each
run's presents to the next, as it does K and V. Unlike a KV cache the state cannot be cut back
to an earlier position. So before a batch the backend may keep a `RollbackPoint`: the state as
it was and the batch's tokens. Taking back part of that batch (a speculative step's rejected
drafts) restores the state and recomputes the kept tokens: the same computation as if only they
had been decoded, so the next token is exactly what it would have been. Earlier positions than
the last batch's start are out of reach, and refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from runtime.errors import EdgemoeError

_STATE = re.compile(r"^past_(conv|ssm)\.(\d+)$")


def state_names(inputs: Iterable[str]) -> list[str]:
    """The graph's recurrent-state inputs, by layer."""
    found = [(int(m.group(2)), n) for n in inputs if (m := _STATE.match(n))]
    return [n for _, n in sorted(found)]


def present_name(past: str) -> str:
    """The output that carries an input's next value: past_key_values.i.key -> present.i.key,
    past_conv.i -> present_conv.i."""
    if past.startswith("past_key_values."):
        return "present." + past.removeprefix("past_key_values.")
    return "present_" + past.removeprefix("past_")


def initial_state(shape: Iterable[int | str | None]) -> np.ndarray:
    """Zeros: the state before the first token (symbolic dims are the batch of one)."""
    return np.zeros([d if isinstance(d, int) else 1 for d in shape], dtype=np.float32)


@dataclass(frozen=True)
class RollbackPoint:
    """The recurrent state before a batch, and the batch's tokens."""

    n_past: int
    states: dict[str, np.ndarray]
    tokens: tuple[int, ...]

    def replay(self, n_past: int, now: int) -> tuple[int, ...]:
        """The tokens to recompute from this point to stand at `n_past` (from `now`)."""
        if not self.n_past <= n_past <= self.n_past + len(self.tokens):
            raise EdgemoeError(
                f"cannot roll the recurrent state back {now - n_past} positions (the ONNX "
                f"backend keeps it from before its last batch, at {self.n_past})"
            )
        return self.tokens[: n_past - self.n_past]


def no_point(now: int, n_past: int) -> EdgemoeError:
    """Why a truncation without a rollback point is refused."""
    return EdgemoeError(
        f"cannot roll the recurrent state back {now - n_past} positions (no rollback point is "
        "kept: load with a draft to speculate)"
    )
