"""Failures the fuzzer has found in code this suite does not own, until their owners fix them.

A fuzz test fails on any failure not listed here; when every failure it saw is listed, it is
marked xfail naming the owners, and once they are fixed the test simply passes. Each entry
matches the failing step's detail (exception type, where it was reached, the innermost
edgemoe frame in brackets), never message wording alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tests.fuzz.outcomes import CaseResult


@dataclass(frozen=True)
class KnownIssue:
    key: str
    owner: str  # the file to fix
    steps: str  # regex over step names
    detail: str  # regex over the step's detail
    summary: str

    def matches(self, step: str, detail: str) -> bool:
        return bool(re.fullmatch(self.steps, step) and re.search(self.detail, detail))


KNOWN: tuple[KnownIssue, ...] = ()


def known_issue(step: str, detail: str) -> KnownIssue | None:
    return next((k for k in KNOWN if k.matches(step, detail)), None)


def split_known(failures: Iterable[CaseResult]) -> tuple[list[CaseResult], set[KnownIssue]]:
    """(cases with at least one unexplained failing step, the known issues seen)."""
    unknown, seen = [], set()
    for r in failures:
        issues = [known_issue(step, detail) for step, (_, detail) in r.failing_steps().items()]
        seen.update(i for i in issues if i is not None)
        if any(i is None for i in issues):
            unknown.append(r)
    return unknown, seen
