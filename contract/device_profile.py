"""The device-profile schema: the DeviceProfile dataclass, size parsing, and field validation.

Raw TOML tables never leave this module: `profile_from_table` checks every field and returns a
frozen DeviceProfile, or raises ProfileError naming the file, the field and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import ProfileError, QuantTypeError
from contract.quant_types import KV_CACHE_TYPES, get_quant

DEVICE_CLASSES = ("laptop", "desktop", "phone", "tablet", "sbc", "kiosk", "camera", "other")
FORMATS = ("gguf", "onnx")
ISA_FEATURES = (
    # x86
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16",
    "amx_int8",
    # Arm
    "neon", "dotprod", "i8mm", "fp16", "sve", "sve2", "sme",
    # RISC-V
    "rvv",
)

# Rough sustained GFLOP/s per thread of llama.cpp's quantized CPU matmuls, used only when a
# profile does not state `compute_gflops`. The first matching feature wins.
_GFLOPS_PER_THREAD = (
    ("amx_int8", 150.0), ("avx512_vnni", 80.0), ("avx512f", 60.0), ("avx2", 40.0),
    ("i8mm", 35.0), ("dotprod", 20.0), ("neon", 8.0),
)
_GFLOPS_FALLBACK = 4.0

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class DeviceProfile:
    """What a device gives a model: a memory budget, CPU threads, bandwidths and quant taste."""

    name: str
    description: str
    device_class: str
    model_memory_bytes: int  # weights + KV cache; runtime buffers and the OS live outside it
    context_length: int
    kv_cache_type: str
    threads: int
    isa: tuple[str, ...]
    storage_read_mb_s: float  # MB/s (1e6 B/s) for MB-sized reads of cold experts
    memory_bandwidth_gb_s: float  # GB/s (1e9 B/s) the CPU really sustains
    formats: tuple[str, ...]
    default_quant: str
    quant_preferences: tuple[str, ...]
    compute_gflops: float  # sustained GFLOP/s of quantized matmuls on `threads` threads
    notes: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able snapshot (field names as keys); the bundle manifest stores this."""
        return {
            "name": self.name,
            "description": self.description,
            "device_class": self.device_class,
            "model_memory_bytes": self.model_memory_bytes,
            "context_length": self.context_length,
            "kv_cache_type": self.kv_cache_type,
            "threads": self.threads,
            "isa": list(self.isa),
            "storage_read_mb_s": self.storage_read_mb_s,
            "memory_bandwidth_gb_s": self.memory_bandwidth_gb_s,
            "formats": list(self.formats),
            "default_quant": self.default_quant,
            "quant_preferences": list(self.quant_preferences),
            "compute_gflops": self.compute_gflops,
            "notes": dict(self.notes),
            "path": str(self.path) if self.path else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "profile snapshot") -> DeviceProfile:
        """Inverse of `to_dict`, validated like a file (e.g. a manifest's `profile`)."""
        if not isinstance(d, Mapping):
            raise ProfileError(f"{where}: a profile snapshot must be an object")
        table = {_SNAPSHOT_TO_FILE.get(k, k): v for k, v in d.items() if k != "path"}
        path = d.get("path")
        return profile_from_table(table, where, Path(path) if path else None)


_SNAPSHOT_TO_FILE = {"device_class": "class", "model_memory_bytes": "model_memory"}


def parse_size(text: str | int) -> int:
    """Bytes from "6GiB", "1.5GB", "800MB", "512 KiB" or an int (decimal G = 1e9, Gi = 2**30)."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"a size must be a string like '6GiB' or an integer, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative, got {text}")
        return text
    m = _SIZE.match(text)
    if not m:
        raise ValueError(
            f"'{text}' is not a size (expected e.g. '6GiB', '1.5GB', '800MB' or 12345)"
        )
    number, unit = m.group(1), (m.group(2) or "").lower()
    return round(float(number) * _UNITS[unit])


class _Fields:
    """Reads one table field by field; every failure names the file and the field."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        self.table = table
        self.where = where

    def fail(self, key: str, expected: str, value: Any) -> ProfileError:
        return ProfileError(f"{self.where}: field '{key}' must be {expected}, got {value!r}")

    def get(self, key: str, check: Callable[[Any], bool], expected: str, default: Any = ...) -> Any:
        if key not in self.table:
            if default is not ...:
                return default
            raise ProfileError(f"{self.where}: missing field '{key}' ({expected})")
        value = self.table[key]
        if not check(value):
            raise self.fail(key, expected, value)
        return value

    def text(self, key: str) -> str:
        return self.get(key, lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")

    def integer(self, key: str, low: int, high: int) -> int:
        return self.get(key, lambda v: _is_int(v) and low <= v <= high,
                        f"an integer in {low}..{high}")

    def number(self, key: str, default: Any = ...) -> float:
        value = self.get(key, lambda v: _is_number(v) and v > 0, "a positive number", default)
        return value if value is None else float(value)

    def choices(self, key: str, allowed: tuple[str, ...], min_len: int) -> tuple[str, ...]:
        value = self.get(key, lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                         "a list of strings")
        bad = [x for x in value if x not in allowed]
        if bad:
            raise self.fail(key, f"a list drawn from {', '.join(allowed)}", bad)
        if len(value) < min_len or len(set(value)) != len(value):
            raise self.fail(key, f"a list of at least {min_len} distinct entries", value)
        return tuple(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


KNOWN_FIELDS = (
    "name", "description", "class", "model_memory", "context_length", "kv_cache_type", "threads",
    "isa", "storage_read_mb_s", "memory_bandwidth_gb_s", "formats", "default_quant",
    "quant_preferences", "compute_gflops", "notes",
)
# Fields every file must set; compute_gflops and notes may be left out.
REQUIRED_FIELDS = tuple(k for k in KNOWN_FIELDS if k not in ("compute_gflops", "notes"))
# The numeric fields whose note (source or rationale) built-in profiles must give.
NUMERIC_FIELDS = ("model_memory", "context_length", "threads", "storage_read_mb_s",
                  "memory_bandwidth_gb_s", "compute_gflops")


def _quant(f: _Fields, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise f.fail(key, "a llama.cpp quant type name such as 'Q4_K_M'", value)
    try:
        return get_quant(value).name
    except QuantTypeError as e:
        raise ProfileError(f"{f.where}: field '{key}': {e}") from None


def _memory(f: _Fields) -> int:
    value = f.get("model_memory", lambda v: True, "a size such as '6GiB' or a byte count")
    try:
        size = parse_size(value)
    except ValueError as e:
        raise ProfileError(f"{f.where}: field 'model_memory': {e}") from None
    if size < 2**20:
        raise f.fail("model_memory", "at least 1MiB (is a unit missing?)", value)
    return size


def _notes(f: _Fields) -> dict[str, str]:
    notes = f.get("notes", lambda v: isinstance(v, Mapping), "a table of field = \"reason\"", {})
    for key, text in notes.items():
        if key not in KNOWN_FIELDS or key == "notes":
            raise ProfileError(
                f"{f.where}: notes.{key} names no profile field (fields: {', '.join(KNOWN_FIELDS)})"
            )
        if not isinstance(text, str) or not text.strip():
            raise f.fail(f"notes.{key}", "a non-empty string", text)
    return dict(notes)


def default_gflops(isa: tuple[str, ...], threads: int) -> float:
    """A rough compute figure from the ISA when a profile states none (see _GFLOPS_PER_THREAD)."""
    per_thread = next((g for feat, g in _GFLOPS_PER_THREAD if feat in isa), _GFLOPS_FALLBACK)
    return per_thread * threads


def profile_from_table(table: Any, where: str, path: Path | None = None) -> DeviceProfile:
    """Validate one parsed profile table (TOML file layout) into a DeviceProfile."""
    if not isinstance(table, Mapping):
        raise ProfileError(f"{where}: a profile must be a table of fields")
    unknown = [k for k in table if k not in KNOWN_FIELDS]
    if unknown:
        raise ProfileError(
            f"{where}: unknown field(s) {', '.join(repr(k) for k in unknown)} "
            f"(known fields: {', '.join(KNOWN_FIELDS)})"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in table]
    if missing:
        raise ProfileError(f"{where}: missing field(s) {', '.join(repr(k) for k in missing)}")
    f = _Fields(table, where)
    name = f.get("name", lambda v: isinstance(v, str) and bool(_NAME.match(v)),
                 "lower-case letters, digits, '.', '_' or '-'")
    threads = f.integer("threads", 1, 1024)
    isa = f.choices("isa", ISA_FEATURES, 0)
    prefs = f.get("quant_preferences", lambda v: isinstance(v, list) and len(v) > 0,
                  "a non-empty list of quant names, best first")
    prefs = tuple(_quant(f, "quant_preferences", q) for q in prefs)
    if len(set(prefs)) != len(prefs):
        raise f.fail("quant_preferences", "distinct quant names", list(prefs))
    default_quant = _quant(f, "default_quant", f.get("default_quant", lambda v: True, "a quant"))
    if default_quant not in prefs:
        raise f.fail("default_quant", f"one of quant_preferences ({', '.join(prefs)})",
                     default_quant)
    kv = f.get("kv_cache_type", lambda v: isinstance(v, str) and v.lower() in KV_CACHE_TYPES,
               f"one of {', '.join(KV_CACHE_TYPES)}")
    notes = _notes(f)
    gflops = f.number("compute_gflops", None)
    if gflops is None:
        gflops = default_gflops(isa, threads)
        notes.setdefault("compute_gflops", "not stated; estimated from isa and threads")
    return DeviceProfile(
        name=name,
        description=f.text("description"),
        device_class=f.get("class", lambda v: v in DEVICE_CLASSES,
                           f"one of {', '.join(DEVICE_CLASSES)}"),
        model_memory_bytes=_memory(f),
        context_length=f.integer("context_length", 64, 2**20),
        kv_cache_type=kv.lower(),
        threads=threads,
        isa=isa,
        storage_read_mb_s=f.number("storage_read_mb_s"),
        memory_bandwidth_gb_s=f.number("memory_bandwidth_gb_s"),
        formats=f.choices("formats", FORMATS, 1),
        default_quant=default_quant,
        quant_preferences=prefs,
        compute_gflops=gflops,
        notes=notes,
        path=path,
    )
