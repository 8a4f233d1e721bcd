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


KNOWN: tuple[KnownIssue, ...] = (
    KnownIssue(
        "read-json-residue", "contract/files.py", r"usage:planner",
        r"(UnicodeDecodeError|ValueError|RecursionError) at \w+ \[contract/files\.py\]",
        "read_json lets UnicodeDecodeError (non-UTF-8 file), ValueError (integer literal over "
        "4,300 digits) and RecursionError (deep nesting) escape; reached by "
        "packager.planning.load_usage (`--usage FILE`)",
    ),
    KnownIssue(
        "validation-surrogate", "contract/validation.py", r".*",
        r"UnicodeEncodeError.*\[contract/validation\.py\]",
        "a JSON string escape for a lone surrogate (\"\\ud800\") in a validated field makes "
        "pydantic's error rendering raise UnicodeEncodeError inside problems()/describe()",
    ),
    KnownIssue(
        "profile-toml-residue", "device_profiles/__init__.py", r"profile|cli:profiles-show",
        r"(ValueError|RecursionError).*\[device_profiles/__init__\.py\]",
        "_parse catches TOMLDecodeError only: tomllib raises RecursionError for deep arrays and "
        "ValueError for an integer over 4,300 digits",
    ),
    KnownIssue(
        "parse-size-overflow", "contract/sizes.py", r"profile|cli:profiles-show|api|cli:.*",
        r"OverflowError.*\[contract/(sizes|device_profile)\.py\]",
        "parse_size('999...9GiB') (400+ digits) -> float inf -> round() OverflowError, which "
        "pydantic does not turn into a validation error",
    ),
    KnownIssue(
        "chat-template-escapes", "runtime/chat_template.py", r"api",
        r"at stream \[runtime/chat_template\.py\]",
        "render_chat catches jinja's TemplateError only: a manifest chat_template such as "
        "'{{ 1/0 }}' (ZeroDivisionError) or '{% for i in range(99999999) %}' (the sandbox's "
        "OverflowError) escapes Model.chat",
    ),
    KnownIssue(
        "chat-template-unbounded", "runtime/chat_template.py", r"api",
        r"(SIGABRT|SIGKILL|killed after the time limit).*\(after stream\)",
        "the sandbox lets a manifest chat_template render without bounds ('{{ \"x\" * 10**9 }}', "
        "nested range(99999) loops): Model.chat then tokenizes a gigabyte prompt (abort on "
        "allocation failure) or never finishes rendering",
    ),
    KnownIssue(
        "replay-trace-shape", "runtime/tracing.py", r"trace",
        r"ValueError at stats \[runtime/expert_cache\.py\]",
        "replay_budgets(bundle, trace) does not check the trace's layers/experts against the "
        "bundle: a well-formed trace of another shape raises ValueError from ExpertCache",
    ),
)


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
