"""File helpers both sides share: atomic writes, hashing, JSON reads with clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from contract.errors import first_line


def atomic_write_text(path: Path, text: str) -> Path:
    """Write to a temp file beside `path` and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path, error: type[Exception], what: str = "") -> Any:
    """Parse a JSON file; whatever is wrong with the file (missing, unreadable, not UTF-8,
    malformed, nested too deeply, a number too long) raises `error` naming it, on one line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what + ' ' if what else ''}not found") from None
    except OSError as e:  # a directory, no permission, an I/O error
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer longer than Python's 4,300-digit limit
        raise error(f"{path}: unreadable JSON ({first_line(e, before=';')})") from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks (models are larger than memory on devices)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
