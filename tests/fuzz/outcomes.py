"""What happened to one fuzz case, in the classes the robustness contract names, and the tables.

The contract: every bad input is one clear error (`error: ...` and exit 1 from the CLI, an
EdgemoeError from the API), never a traceback, a signal, a hang, or exit 0 after an error.
Classes are decided from what a user would see (return code, signal, stderr), never from
message wording, which other engineers are still changing.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    CLEAN = "clean-error"
    TRACEBACK = "traceback"
    CRASH = "crash"
    HANG = "hang"
    EXIT0_AFTER_ERROR = "exit-0-after-error"

    @property
    def bad(self) -> bool:
        return self in BAD


BAD = frozenset({Outcome.TRACEBACK, Outcome.CRASH, Outcome.HANG, Outcome.EXIT0_AFTER_ERROR})
# Worst first: a case's outcome is the worst of its steps.
SEVERITY = (Outcome.CRASH, Outcome.HANG, Outcome.TRACEBACK, Outcome.EXIT0_AFTER_ERROR,
            Outcome.CLEAN, Outcome.OK)
COLUMNS = ("ok", "clean-error", "traceback", "crash", "hang", "exit-0-after-error")


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    seen = set(outcomes)
    return next((o for o in SEVERITY if o in seen), Outcome.OK)


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def classify_cli(returncode: int | None, stderr: str, *, timed_out: bool) -> tuple[Outcome, str]:
    """A CLI run as its user sees it; `returncode` < 0 is death by that signal."""
    if timed_out:
        return Outcome.HANG, "killed after the time limit"
    assert returncode is not None
    if returncode < 0:
        return Outcome.CRASH, signal_name(returncode)
    if "Traceback (most recent call last)" in stderr:
        return Outcome.TRACEBACK, _last_line(stderr)
    said_error = any(
        line.startswith(("error:", "Error:", "FAILED")) for line in stderr.splitlines()
    )
    if returncode == 0:
        return (Outcome.EXIT0_AFTER_ERROR, _last_line(stderr)) if said_error else (Outcome.OK, "")
    if returncode in (1, 2):  # 1: our error line; 2: the argument parser's usage error
        return Outcome.CLEAN, _last_line(stderr)
    return Outcome.CRASH, f"exit code {returncode}"


def one_line_problem(stderr: str) -> str:
    """Why a failed CLI run's stderr is not the promised single `error:` line ('' if it is)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "no message"
    if len(lines) > 1:
        return f"{len(lines)} lines"
    return "" if lines[0].startswith("error: ") else "no 'error:' prefix"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


@dataclass
class CaseResult:
    """One case: its steps' outcomes, the worst of them, and notes (e.g. multi-line errors)."""

    kind: str
    index: int
    description: str
    steps: dict[str, tuple[Outcome, str]]
    notes: list[str] = field(default_factory=list)
    saved: str = ""  # where the failing input was kept

    @property
    def outcome(self) -> Outcome:
        return worst(o for o, _ in self.steps.values())

    def failing_steps(self) -> dict[str, tuple[Outcome, str]]:
        return {k: v for k, v in self.steps.items() if v[0].bad}


@dataclass
class Tally:
    """Counts per kind (case = worst step) and per step, for the printed tables."""

    cases: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)
    by_step: dict[tuple[str, str], Counter] = field(default_factory=dict)
    notes: dict[str, Counter] = field(default_factory=dict)

    def add(self, r: CaseResult) -> None:
        self.cases[r.kind] += 1
        self.by_kind.setdefault(r.kind, Counter())[r.outcome.value] += 1
        for step, (outcome, _) in r.steps.items():
            self.by_step.setdefault((r.kind, step), Counter())[outcome.value] += 1
        for note in r.notes:
            self.notes.setdefault(r.kind, Counter())[note] += 1


def render_table(rows: Mapping[str, Counter], title: str = "kind") -> str:
    """A fixed-width table: one row per kind (or step), columns = outcome classes."""
    head = [title, "cases", *COLUMNS]
    body = [[name, str(sum(c.values())), *(str(c.get(col, 0)) for col in COLUMNS)]
            for name, c in rows.items()]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [head, *body])
