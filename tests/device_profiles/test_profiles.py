"""Device profiles: the built-ins load and are documented; bad files fail naming file and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from contract.quant_types import QUANT_TYPES
from device_profiles import (
    NUMERIC_FIELDS,
    DeviceProfile,
    ProfileError,
    builtin_names,
    list_profiles,
    load_profile,
    parse_size,
)

pytestmark = pytest.mark.unit

REQUIRED = ("laptop-16gb", "laptop-8gb", "phone-12gb", "phone-8gb", "rpi5-8gb", "jetson-8gb",
            "kiosk-x86-8gb", "camera-arm-2gb")
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "device_profiles"

GOOD = """\
name = "my-board"
description = "test board"
class = "sbc"
model_memory = "2.5GiB"
context_length = 2048
kv_cache_type = "f16"
threads = 4
isa = ["neon", "dotprod"]
storage_read_mb_s = 300
memory_bandwidth_gb_s = 4.5
formats = ["gguf"]
default_quant = "Q4_0"
quant_preferences = ["Q4_K_M", "Q4_0", "Q2_K"]

[notes]
threads = "four cores"
"""


def _write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _set(text: str, key: str, value: str) -> str:
    """Replace (or add, before [notes]) one top-level `key = value` line."""
    line = re.compile(rf"^{re.escape(key)} = .*$", re.MULTILINE)
    if line.search(text):
        return line.sub(f"{key} = {value}", text, count=1)
    return text.replace("\n[notes]", f"{key} = {value}\n\n[notes]", 1)


def test_required_builtins_exist():
    assert set(REQUIRED) <= set(builtin_names())
    assert builtin_names() == sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_is_valid_and_documented(name):
    p = load_profile(name)
    assert p.name == name
    assert p.description
    assert p.default_quant in p.quant_preferences
    assert all(q in QUANT_TYPES for q in p.quant_preferences)
    missing = [f for f in NUMERIC_FIELDS if f not in p.notes]
    assert not missing, f"{name}: numbers without a [notes] source: {missing}"
    assert all("estimated from isa" not in v for v in p.notes.values())
    # The budget must leave room for the OS: below the RAM the name advertises.
    ram = parse_size(re.search(r"(\d+)gb$", name).group(1) + "GiB")
    assert p.model_memory_bytes < ram


def test_readme_documents_every_builtin_and_field():
    readme = (BUILTIN_DIR / "README.md").read_text(encoding="utf-8")
    for p in list_profiles():
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{p.name}`"))
        assert p.default_quant in row and str(p.context_length) in row and str(p.threads) in row
    from device_profiles import KNOWN_FIELDS

    for field in KNOWN_FIELDS:
        assert f"`{field}`" in readme or f"`[{field}]`" in readme, field


def test_camera_is_tight_and_laptop_generous():
    camera, laptop = load_profile("camera-arm-2gb"), load_profile("laptop-16gb")
    assert camera.model_memory_bytes <= 1.5 * 2**30
    assert camera.threads <= 2
    assert camera.default_quant in ("Q4_0", "Q4_K_M")
    assert camera.storage_read_mb_s < 500
    assert laptop.model_memory_bytes >= 8 * 2**30
    assert laptop.quant_preferences[0] in ("F16", "Q8_0")
    assert laptop.default_quant in ("F16", "Q8_0")


def test_list_profiles_matches_names():
    assert [p.name for p in list_profiles()] == builtin_names()


def test_snapshot_round_trip_through_json():
    for p in list_profiles():
        d = json.loads(json.dumps(p.to_dict()))
        assert d["model_memory_bytes"] == p.model_memory_bytes
        assert DeviceProfile.from_dict(d) == p


def test_user_file_by_path(tmp_path, monkeypatch):
    path = _write(tmp_path, GOOD)
    p = load_profile(path)
    assert p.name == "my-board"
    assert p.model_memory_bytes == int(2.5 * 2**30)
    assert p.isa == ("neon", "dotprod")
    assert p.path == path.resolve()
    assert load_profile(str(path)) == p
    monkeypatch.chdir(tmp_path)
    assert load_profile("board.toml").name == "my-board"


def test_compute_gflops_defaults_from_isa(tmp_path):
    p = load_profile(_write(tmp_path, GOOD))
    assert p.compute_gflops > 0
    assert "compute_gflops" in p.notes
    stated = load_profile(_write(tmp_path, _set(GOOD, "compute_gflops", "42")))
    assert stated.compute_gflops == 42.0


def test_quant_names_are_normalised(tmp_path):
    text = _set(_set(GOOD, "default_quant", '"q4_0"'), "quant_preferences", '["q4_k", "Q4_0"]')
    p = load_profile(_write(tmp_path, text))
    assert p.default_quant == "Q4_0"
    assert p.quant_preferences == ("Q4_K_M", "Q4_0")


def test_unknown_name_lists_builtins():
    with pytest.raises(ProfileError) as e:
        load_profile("toaster-1gb")
    assert "toaster-1gb" in str(e.value)
    for name in REQUIRED:
        assert name in str(e.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ProfileError, match="nope.toml: no such profile file"):
        load_profile(tmp_path / "nope.toml")


def test_malformed_toml_names_the_file(tmp_path):
    path = _write(tmp_path, GOOD + "threads = = 3\n")
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert str(path) in str(e.value) and "not valid TOML" in str(e.value)


BAD_FIELDS = [
    ("threads", "0", "1..1024"),
    ("threads", '"4"', "integer"),
    ("threads", "true", "integer"),
    ("model_memory", '"lots"', "not a size"),
    ("model_memory", "0", "at least 1MiB"),
    ("model_memory", "-5", "negative"),
    ("model_memory", '"6"', "at least 1MiB"),
    ("context_length", "10", "64..1048576"),
    ("kv_cache_type", '"f8"', "f16"),
    ("isa", '["avx3"]', "avx2"),
    ("isa", '"neon"', "list of strings"),
    ("storage_read_mb_s", "0", "positive number"),
    ("storage_read_mb_s", "true", "positive number"),
    ("memory_bandwidth_gb_s", '"fast"', "positive number"),
    ("compute_gflops", "-1", "positive number"),
    ("formats", "[]", "at least 1"),
    ("formats", '["safetensors"]', "gguf"),
    ("default_quant", '"Q9_K"', "Q4_K_M"),
    ("default_quant", '"Q8_0"', "one of quant_preferences"),
    ("default_quant", "4", "quant type name"),
    ("quant_preferences", '["Q4_0", "Q4_0"]', "distinct"),
    ("quant_preferences", "[]", "non-empty"),
    ("quant_preferences", '["Q4_0", "Q7"]', "valid: F32"),
    ("class", '"toaster"', "laptop"),
    ("name", '"Has Spaces"', "lower-case"),
    ("description", '""', "non-empty string"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD_FIELDS)
def test_bad_field_names_file_field_and_expectation(tmp_path, field, value, expected):
    path = _write(tmp_path, _set(GOOD, field, value))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    msg = str(e.value)
    assert str(path) in msg
    assert f"field '{field}" in msg  # the field, or one item of it ('quant_preferences[1]')
    assert expected in msg
    assert "\n" not in msg  # one problem, one line


def test_unknown_field_lists_known_fields(tmp_path):
    path = _write(tmp_path, GOOD.replace("threads = 4", "thread = 4"))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    msg = str(e.value)
    assert str(path) in msg and "'thread'" in msg
    assert "known fields:" in msg and "threads" in msg


def test_missing_field_is_named(tmp_path):
    path = _write(tmp_path, GOOD.replace('kv_cache_type = "f16"\n', ""))
    with pytest.raises(ProfileError, match=r"board.toml: missing field 'kv_cache_type'$"):
        load_profile(path)


def test_every_problem_is_named_on_one_line(tmp_path):
    text = GOOD.replace('kv_cache_type = "f16"\n', "").replace("threads = 4", "threads = 0")
    path = _write(tmp_path, text)
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert str(e.value) == (
        f"{path}: missing field 'kv_cache_type'; "
        "field 'threads' must be an integer in 1..1024, got 0"
    )


@pytest.mark.parametrize(("notes", "expected"), [
    ('bogus = "x"', "field 'notes': key 'bogus' names no profile field"),
    ("threads = 3", "field 'notes.threads' must be a non-empty string"),
])
def test_bad_notes(tmp_path, notes, expected):
    path = _write(tmp_path, GOOD.replace('threads = "four cores"', notes))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_snapshot_errors_name_the_source():
    d = load_profile("phone-8gb").to_dict()
    d["threads"] = 0
    with pytest.raises(ProfileError, match=r"manifest.json: profile: field 'threads'"):
        DeviceProfile.from_dict(d, where="manifest.json: profile")


@pytest.mark.parametrize(("text", "expected"), [
    ("1.5GB", 1_500_000_000),
    ("6GiB", 6 * 2**30),
    ("800MB", 800_000_000),
    ("512 KiB", 512 * 1024),
    ("2gib", 2 * 2**30),
    ("1T", 10**12),
    ("123", 123),
    (12345, 12345),
    ("0.5MiB", 2**19),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "1.5 parsecs", "-1GB", "1e9", -3, True, 1.5, None])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)
