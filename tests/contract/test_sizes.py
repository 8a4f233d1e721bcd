"""One size grammar for device profiles and runtime budgets (pure)."""

from __future__ import annotations

import pytest

from contract.sizes import parse_size

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "expected"), [
    ("1.5GB", 1_500_000_000),
    ("6GiB", 6 * 2**30),
    ("6 GiB", 6 * 2**30),
    ("800MB", 800_000_000),
    ("800MiB", 800 * 2**20),
    ("800Mi", 800 * 2**20),
    ("512 KiB", 512 * 1024),
    ("2g", 2 * 10**9),
    ("1T", 10**12),
    ("3tib", 3 * 2**40),
    ("123", 123),
    ("123b", 123),
    (" 7 ", 7),
    (0, 0),
    (12345, 12345),
    ("0.5MiB", 2**19),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(("bad", "message"), [
    ("", "is not a size"),
    ("GiB", "is not a size"),
    ("1.5 parsecs", "is not a size"),
    ("-1GB", "is not a size"),
    ("1e9", "is not a size"),
    ("40%", "is not a size"),
    (-3, "cannot be negative"),
    (True, "a string like '6GiB' or an integer"),
    (1.5, "a string like '6GiB' or an integer"),
    (None, "a string like '6GiB' or an integer"),
])
def test_parse_size_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_size(bad)


def test_profiles_and_budgets_share_the_parser():
    import device_profiles
    import runtime.budget

    assert device_profiles.parse_size is parse_size
    assert runtime.budget.parse_size is parse_size
