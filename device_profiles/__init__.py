"""Device profiles: the built-in `*.toml` presets and the loader for users' own files.

A profile says what a device gives a model (memory budget, threads, bandwidths) and which quant
types suit it; the planner (`packager.plan`) turns it into a concrete packing plan.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from contract.device_profile import (
    DEVICE_CLASSES,
    KNOWN_FIELDS,
    NUMERIC_FIELDS,
    DeviceProfile,
    ProfileError,
    default_gflops,
    parse_size,
    profile_from_table,
)
from contract.errors import first_line
from device_profiles.render import format_bytes, render_profile, render_profile_table

__all__ = [
    "DEVICE_CLASSES",
    "KNOWN_FIELDS",
    "NUMERIC_FIELDS",
    "DeviceProfile",
    "ProfileError",
    "builtin_names",
    "default_gflops",
    "format_bytes",
    "list_profiles",
    "load_profile",
    "load_profile_file",
    "parse_size",
    "render_profile",
    "render_profile_table",
]

_SUFFIX = ".toml"


def _builtin_dir():
    return resources.files(__name__)


def builtin_names() -> list[str]:
    """Names of the profiles shipped with edgemoe, sorted."""
    return sorted(
        p.name[: -len(_SUFFIX)]
        for p in _builtin_dir().iterdir()
        if p.name.endswith(_SUFFIX) and p.is_file()
    )


def _parse(text: str, where: str, path: Path | None) -> DeviceProfile:
    """Parse and validate one profile's TOML. Besides TOMLDecodeError, tomllib raises
    RecursionError for deeply nested arrays and ValueError for an integer over Python's
    4,300-digit limit: both are a bad file, so both are a ProfileError naming it."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # a ValueError subclass: caught first for its position
        raise ProfileError(f"{where}: not valid TOML: {e}") from None
    except RecursionError:
        raise ProfileError(f"{where}: not valid TOML: nested too deeply") from None
    except ValueError as e:
        raise ProfileError(f"{where}: not valid TOML: {first_line(e, before=';')}") from None
    return profile_from_table(table, where, path)


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Load and validate a profile from a .toml file anywhere on disk."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read: {e}") from None
    return _parse(text, str(path), path.resolve())


def _looks_like_path(ref: str | Path) -> bool:
    text = str(ref)
    return isinstance(ref, Path) or text.endswith(_SUFFIX) or "/" in text or "\\" in text


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A built-in profile by name (e.g. "phone-8gb"), or a user's profile by .toml path."""
    if _looks_like_path(name_or_path):
        return load_profile_file(name_or_path)
    name = str(name_or_path).strip()
    resource = _builtin_dir() / f"{name}{_SUFFIX}"
    if not resource.is_file():
        raise ProfileError(
            f"unknown device profile '{name}' (built-in: {', '.join(builtin_names())}; "
            "or give a path to your own .toml file)"
        )
    where = f"device_profiles/{name}{_SUFFIX}"
    profile = _parse(resource.read_text(encoding="utf-8"), where, None)
    if profile.name != name:
        raise ProfileError(f"{where}: field 'name' must match the file name '{name}'")
    return profile


def list_profiles() -> list[DeviceProfile]:
    """Every built-in profile, sorted by name."""
    return [load_profile(name) for name in builtin_names()]
