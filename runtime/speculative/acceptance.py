"""Speculative acceptance: which drafted tokens the target keeps, and what it emits instead.

Pure numpy over logits rows, so the rule is tested against exact distributions without a model.
Greedy: a drafted token is kept while it is the target's argmax at its position, so the output
is the target's own greedy output token for token. Sampled: the standard speculative rejection
rule (Leviathan et al. 2023; Chen et al. 2023): keep drafted token x with probability
min(1, p(x) / q(x)), else draw from the normalised residual max(0, p - q) and stop; when every
drafted token is kept, draw one more from the target's next row. Each emitted token is then
distributed exactly as the target's sampler would draw it, whatever the draft proposes. The
target's distribution and the draw are the one sampling chain (runtime/backends/sampling.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.backends.sampling import draw


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verify step: the first `accepted` drafted tokens are kept, then
    `token` (the target's correction, or its bonus token when every draft was kept)."""

    accepted: int
    token: int


def accept_greedy(draft: Sequence[int], target_rows: np.ndarray) -> Verdict:
    """Keep drafted tokens while each is the target's argmax; then the target's own argmax.

    target_rows[i] are the target's logits after the i-th verified position: row 0 follows the
    last emitted token, row i follows drafted token i-1, so it has len(draft) + 1 rows.
    """
    for i, token in enumerate(draft):
        best = int(np.argmax(target_rows[i]))
        if best != token:
            return Verdict(i, best)
    return Verdict(len(draft), int(np.argmax(target_rows[len(draft)])))


def accept_sampled(
    draft: Sequence[int],
    draft_probs: Sequence[np.ndarray] | None,
    target_probs: Sequence[np.ndarray],
    rng: np.random.Generator,
) -> Verdict:
    """The speculative rejection rule over probability rows (see the module docstring).

    draft_probs[i] is the distribution drafted token i was drawn from; None for a
    deterministic drafter (n-gram lookup), whose distribution is a point mass on its token:
    then x is kept with probability p(x), and the residual is p without x.
    target_probs has len(draft) + 1 rows, as target_rows in `accept_greedy`.
    """
    for i, token in enumerate(draft):
        p = target_probs[i]
        q_token = 1.0 if draft_probs is None else float(draft_probs[i][token])
        if q_token > 0 and rng.random() * q_token < p[token]:  # u < p/q without dividing
            continue
        if draft_probs is None:
            residual = p.copy()
            residual[token] = 0.0
        else:
            residual = np.maximum(p - draft_probs[i], 0.0)
        if not residual.sum() > 0:  # p == q up to rounding: rejection was p's own draw
            residual = p
        return Verdict(i, draw(residual, rng))
    return Verdict(len(draft), draw(target_probs[len(draft)], rng))
