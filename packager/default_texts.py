"""General-purpose texts that ship with edgemoe, used only when the user gives none.

See `packager/texts/README.md`. Reports name the text they used (`DEFAULT_TEXT_NAME`), so a
bundle calibrated or measured on the default says so instead of passing it off as the user's.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

DEFAULT_TEXT_NAME = "edgemoe default (general)"


@cache
def _read(name: str) -> str:
    return resources.files("packager").joinpath("texts", name).read_text(encoding="utf-8")


def default_calibration_text() -> str:
    """Prose, instructions, dialogue, numbers and code for usage calibration and the imatrix."""
    return _read("calibration.txt")


def default_heldout_text() -> str:
    """Disjoint from the calibration text: the fidelity report's held-out text."""
    return _read("heldout.txt")
