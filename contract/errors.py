"""The root of every deliberate edgemoe error, and the contract's own errors.

Each is a one-line message for the user (the CLI prints it, the HTTP layer maps it); nothing
deliberate is ever shown as a traceback.
"""

from __future__ import annotations


def first_line(error: BaseException, *, before: str | None = None) -> str:
    """An error's first line (or its type's name), cut at `before` when given: a library's
    message may quote a source over many lines or end in advice for programmers (Python's
    int-digits ValueError: "...; use sys.set_int_max_str_digits()"), and ours stay one line."""
    text = str(error).strip()
    text = text.splitlines()[0] if text else ""
    if before is not None:
        text = text.split(before)[0].strip()
    return text or type(error).__name__


class EdgemoeError(Exception):
    """Base of every error edgemoe raises on purpose; its message is meant for the user."""


class ManifestError(EdgemoeError, ValueError):
    """A manifest that does not match the schema; the message names the file and the field."""


class BundleError(EdgemoeError):
    """A bundle that is missing, corrupt, or does not match its manifest."""


class QuantTypeError(EdgemoeError, ValueError):
    """An unknown quant name; the message lists the valid ones."""


class ProfileError(EdgemoeError, ValueError):
    """An unusable device profile; the message names the file, the field and what was expected."""
