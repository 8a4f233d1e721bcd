"""`python -m apps.kiosk BUNDLE`: answer visitors' questions offline, forgetting them after idle.

A kiosk has no operator: inputs are capped, answers are bounded, the conversation resets after a
quiet period, and a failed answer never takes the kiosk down.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TextIO

from runtime.generation import GenerationRequest, SamplingParams

if TYPE_CHECKING:
    from runtime.api import Model

DEFAULT_SYSTEM = "You are the information kiosk. Answer briefly and politely."
SORRY = "Sorry, I cannot answer that right now."
# Short answers with a little variety: a kiosk screen shows a line or two.
KIOSK_SAMPLING = SamplingParams(max_tokens=96, temperature=0.3)


@dataclass
class KioskSession:
    system: str = DEFAULT_SYSTEM
    max_input_chars: int = 500
    max_turns: int = 6
    idle_reset_s: float = 120.0
    history: list[dict[str, str]] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)

    def messages_for(self, question: str, now: float | None = None) -> list[dict[str, str]]:
        """The conversation to send for `question`: trimmed, and reset when idle too long."""
        now = time.monotonic() if now is None else now
        if now - self.last_seen > self.idle_reset_s:
            self.history.clear()
        self.last_seen = now
        self.history.append({"role": "user", "content": question[: self.max_input_chars]})
        self.history = self.history[-2 * self.max_turns + 1 :]
        return [{"role": "system", "content": self.system}, *self.history]

    def remember(self, answer: str) -> None:
        self.history.append({"role": "assistant", "content": answer})

    def forget_question(self) -> None:
        """Drop the question just asked, after a failed answer: a question that cannot be
        answered (too long for the context window, say) must not spoil the next ones."""
        if self.history and self.history[-1]["role"] == "user":
            self.history.pop()


def _printable(text: str) -> str:
    """One display line: a kiosk screen shows no control characters or raw line breaks."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


@dataclass(frozen=True)
class KioskTally:
    """How a kiosk run went: questions the model answered, and those it failed on (the visitor
    saw SORRY instead)."""

    answered: int = 0
    failed: int = 0


def run_kiosk(
    model: Model,
    session: KioskSession,
    stdin: TextIO,
    stdout: TextIO,
    sampling: SamplingParams = KIOSK_SAMPLING,
) -> KioskTally:
    """Serve questions from `stdin` until EOF; a failed answer is logged and apologised for."""
    answered = failed = 0
    stdout.write("Ask me anything (Ctrl-D to leave).\n")
    for line in stdin:
        question = line.strip()
        if not question:
            continue
        request = GenerationRequest(messages=session.messages_for(question), params=sampling)
        try:
            r = model.generate_prepared(model.prepare(request))
        except Exception as e:  # a kiosk keeps running; the error goes to its log
            print(f"kiosk: answer failed: {e}", file=sys.stderr)
            session.forget_question()
            answer = SORRY
            failed += 1
        else:
            answer = _printable(r.text) or "(no answer)"
            session.remember(answer)
            answered += 1
        stdout.write(answer + "\n")
        stdout.flush()
    return KioskTally(answered, failed)


def main(argv: list[str] | None = None) -> None:
    import runtime

    ap = argparse.ArgumentParser(prog="python -m apps.kiosk")
    ap.add_argument("bundle")
    ap.add_argument("--budget", default=None, help="'40%%', '1.5GB' or bytes")
    ap.add_argument("--system", default=DEFAULT_SYSTEM)
    ap.add_argument("--max-tokens", type=int, default=KIOSK_SAMPLING.max_tokens)
    args = ap.parse_args(argv)
    sampling = replace(KIOSK_SAMPLING, max_tokens=args.max_tokens)
    with runtime.load(args.bundle, budget=args.budget) as model:
        run_kiosk(model, KioskSession(system=args.system), sys.stdin, sys.stdout, sampling)


if __name__ == "__main__":
    main()
