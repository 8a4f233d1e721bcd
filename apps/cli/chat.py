"""Terminal chat: a read-eval-print loop over `Model.stream_events` with the bundle's template."""

from __future__ import annotations

import sys
from pathlib import Path


def chat_loop(
    bundle: Path,
    *,
    budget: str | None,
    max_tokens: int,
    temperature: float,
    system: str | None,
    stdin=sys.stdin,
    stdout=sys.stdout,
) -> None:
    import runtime

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with runtime.load(bundle, budget=budget) as model:
        stdout.write(f"edgemoe chat — {model.name} (Ctrl-D or /exit to quit)\n")
        while True:
            stdout.write("> ")
            stdout.flush()
            line = stdin.readline()
            if not line or line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            history.append({"role": "user", "content": line.rstrip("\n")})
            prompt = model.apply_chat_template(history)
            reply = []
            for ev in model.stream_events(prompt, max_tokens=max_tokens, temperature=temperature):
                stdout.write(ev.text)
                stdout.flush()
                reply.append(ev.text)
            stdout.write("\n")
            history.append({"role": "assistant", "content": "".join(reply)})
