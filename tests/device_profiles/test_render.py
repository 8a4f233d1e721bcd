"""Text views of profiles: every built-in listed, every field and note shown."""

from __future__ import annotations

import pytest

from device_profiles import (
    format_bytes,
    list_profiles,
    load_profile,
    render_profile,
    render_profile_table,
)

pytestmark = pytest.mark.unit


def test_table_has_a_row_per_profile():
    profiles = list_profiles()
    lines = render_profile_table(profiles).splitlines()
    assert lines[0].split()[:4] == ["name", "class", "memory", "threads"]
    assert len(lines) == 1 + len(profiles)
    camera = next(line for line in lines if line.startswith("camera-arm-2gb"))
    assert camera.split()[:6] == ["camera-arm-2gb", "camera", "1", "GiB", "2", "Q4_0"]


def test_show_lists_fields_and_notes():
    p = load_profile("rpi5-8gb")
    text = render_profile(p)
    assert text.startswith("rpi5-8gb  (built-in)")
    for note in p.notes.values():
        assert note in text
    assert "Q8_0 > Q6_K" in text and "5 GiB (5368709120 bytes)" in text


@pytest.mark.parametrize(("n", "text"), [
    (6 * 2**30, "6 GiB"), (int(1.5 * 2**30), "1.5 GiB"), (800 * 2**20, "800 MiB"), (12, "12 B"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text
