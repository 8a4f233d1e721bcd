"""Byte sizes as people write them ("6GiB", "1.5GB", "800MB", "512 KiB", 12345): one parser.

Device profiles (`model_memory`) and runtime budgets (`--budget 1.5GB`) both read sizes; one
grammar keeps "GB" meaning 10**9 and "GiB" 2**30 everywhere, the way disk and RAM vendors do.
"""

from __future__ import annotations

import math
import re

# A decimal number, then an optional unit: b, k/kb/kib/ki, m.., g.., t.. (any case). No sign and
# no exponent: "-5" and "1e9" are more likely mistakes than intentions in a config file.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40,
}
EXAMPLES = "'6GiB', '1.5GB', '800MB' or 12345"
# The largest size accepted: what a signed 64-bit byte count holds (8 EiB). Anything larger is a
# typo or a hostile file, and would overflow C sizes (or, as a float, round() to infinity).
MAX_SIZE = 2**63 - 1


def parse_size(text: str | int) -> int:
    """Bytes from "6GiB", "1.5GB", "800MB", "512 KiB" or an int (decimal G = 1e9, Gi = 2**30).

    Raises ValueError (callers wrap it in their own error, naming the file or option) for
    anything else, including bools, floats and negative numbers.
    """
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(f"a size must be a string like '6GiB' or an integer, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative, got {_short(text)}")
        return _bounded(text, text)
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"'{_short(text)}' is not a size (expected e.g. {EXAMPLES})")
    number, unit = m.group(1), (m.group(2) or "").lower()
    return _bounded(float(number) * _UNITS[unit], text)


def _bounded(value: float | int, text: str | int) -> int:
    """`value` as whole bytes, refused (ValueError, as for any bad size) when it is not finite
    or over MAX_SIZE: a 400-digit size is float inf, and round(inf) raises OverflowError, which
    validators (pydantic, the budget parser) do not turn into a clear error."""
    if (isinstance(value, float) and not math.isfinite(value)) or value > MAX_SIZE:
        raise ValueError(f"size '{_short(text)}' is too large (at most {MAX_SIZE:,} bytes)")
    return round(value)


def _short(text: str | int) -> str:
    """The size as written, cut to 40 characters so a hostile value keeps the error one line."""
    shown = str(text) if isinstance(text, str) or text.bit_length() < 128 else "a huge integer"
    shown = shown.replace("\n", " ")
    return shown if len(shown) <= 40 else shown[:37] + "..."
