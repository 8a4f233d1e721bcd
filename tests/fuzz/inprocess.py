"""Property tests of the pure loaders, in-process under hypothesis, so a failure shrinks.

Only readers that never reach llama.cpp run here (manifest validation, profile, trace and usage
loaders); the fork server covers everything else. An exception that is not an EdgemoeError
fails the example, unless it is a known issue in another owner's file (`tests.fuzz.known`),
which is collected so the test can xfail naming the owner instead.
"""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.errors import EdgemoeError
from tests.fuzz.known import KnownIssue, known_issue
from tests.fuzz.worker import origin

HYPOTHESIS_SETTINGS: dict[str, Any] = {"deadline": None, "database": None, "derandomize": True}


def expect_clean(step: str, call: Callable[[], Any], seen: set[KnownIssue]) -> None:
    """Run `call`; success and EdgemoeError are fine, a known issue is recorded, else raise."""
    try:
        call()
    except EdgemoeError:
        return
    except Exception as e:  # RecursionError and MemoryError included
        frames = [f.filename for f in traceback.extract_tb(e.__traceback__)]
        detail = f"{type(e).__name__} at start [{origin(frames)}]: {e}"
        issue = known_issue(step, detail)
        if issue is None:
            raise
        seen.add(issue)


def in_temp_file(name: str, data: bytes, use: Callable[[Path], Any]) -> Any:
    """Write `data` as `name` in a fresh folder and hand `use` its path (hypothesis examples
    cannot use pytest's function-scoped tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="edgemoe-fuzz-") as d:
        path = Path(d) / name
        path.write_bytes(data)
        return use(path)
