"""The device-profile schema: the DeviceProfile model, its rules, and the TOML-table loader.

A profile is validated once, at the edge (a `.toml` file, or the snapshot inside a manifest),
into a frozen pydantic dataclass; raw tables never travel further. Every problem is reported by
`contract.validation` as one line naming the file, the field and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from contract.errors import ProfileError, QuantTypeError
from contract.quant_types import KV_CACHE_TYPES, QUANT_TYPES, get_quant
from contract.sizes import EXAMPLES, parse_size
from contract.validation import expect, problem, rule, validate

__all__ = [
    "DEVICE_CLASSES",
    "FORMATS",
    "ISA_FEATURES",
    "KNOWN_FIELDS",
    "NUMERIC_FIELDS",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "DeviceProfile",
    "ProfileError",
    "default_gflops",
    "parse_size",
    "profile_from_table",
]

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
_ESTIMATED = "not stated; estimated from isa and threads"

# The keys of a profile file. A snapshot (`to_dict`, stored in manifests) spells two of them
# after the attribute instead ("device_class", "model_memory_bytes") and adds "path".
KNOWN_FIELDS = (
    "name", "description", "class", "model_memory", "context_length", "kv_cache_type", "threads",
    "isa", "storage_read_mb_s", "memory_bandwidth_gb_s", "formats", "default_quant",
    "quant_preferences", "compute_gflops", "cores", "ttft_ms_target", "itl_ms_target", "notes",
)
# Fields a file may leave out (the rest are required).
OPTIONAL_FIELDS = ("compute_gflops", "cores", "ttft_ms_target", "itl_ms_target", "notes")
REQUIRED_FIELDS = tuple(k for k in KNOWN_FIELDS if k not in OPTIONAL_FIELDS)
# The numeric fields whose note (source or rationale) built-in profiles must give.
NUMERIC_FIELDS = ("model_memory", "context_length", "threads", "storage_read_mb_s",
                  "memory_bandwidth_gb_s", "compute_gflops")
_MIN_FILE_MEMORY = 2**20
_FILE = "profile_file"  # validation-context key: the table is a hand-written file (its path)


def _in_range(low: int, high: int) -> Any:
    expected = f"an integer in {low}..{high}"
    return Annotated[int, Field(strict=True, ge=low, le=high), expect(expected)]


def _drawn_from(allowed: tuple[str, ...], min_len: int) -> Any:
    """A list of distinct strings from `allowed`, at least `min_len` long, kept as a tuple."""

    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [x for x in value if x not in allowed]
        if bad:
            raise rule(f"a list drawn from {', '.join(allowed)}", got=bad)
        if len(value) < min_len or len(set(value)) != len(value):
            raise rule(f"a list of at least {min_len} distinct entries")
        return value

    return Annotated[
        tuple[Annotated[str, Field(strict=True)], ...],
        Field(json_schema_extra={"items": {"type": "string", "enum": list(allowed)}}),
        expect("a list of strings", check),
    ]


def _quant_name(value: str) -> str:
    try:
        return get_quant(value).name
    except QuantTypeError as e:
        raise problem(str(e)) from None


Text = Annotated[str, Field(strict=True, pattern=r"\S"), expect("a non-empty string")]
Positive = Annotated[float, Field(strict=True, gt=0), expect("a positive number")]
QuantName = Annotated[
    str,
    Field(strict=True, json_schema_extra={"enum": list(QUANT_TYPES)}),  # as written: normalised
    expect("a llama.cpp quant type name such as 'Q4_K_M'", _quant_name),
]
ContextLength = _in_range(64, 2**20)
Threads = _in_range(1, 1024)
IsaFeatures = _drawn_from(ISA_FEATURES, 0)
Formats = _drawn_from(FORMATS, 1)


@dataclass(frozen=True, config=ConfigDict(extra="forbid", populate_by_name=True))
class DeviceProfile:
    """What a device gives a model: a memory budget, CPU threads, bandwidths and quant taste."""

    name: Annotated[
        str,
        Field(strict=True, pattern=r"^[a-z0-9][a-z0-9._-]*$"),
        expect("lower-case letters, digits, '.', '_' or '-'"),
    ]
    description: Text
    device_class: Annotated[
        Literal[DEVICE_CLASSES],  # type: ignore[valid-type]
        Field(alias="class"),
        expect(f"one of {', '.join(DEVICE_CLASSES)}"),
    ]
    # Weights + KV cache, in bytes; runtime buffers and the OS live outside it.
    model_memory_bytes: Annotated[int, Field(strict=True, ge=1, alias="model_memory")]
    context_length: ContextLength
    kv_cache_type: Annotated[
        str,
        Field(strict=True, json_schema_extra={"enum": list(KV_CACHE_TYPES)}),
        expect(f"one of {', '.join(KV_CACHE_TYPES)}", lambda v: _choice(v.lower(), KV_CACHE_TYPES)),
    ]
    threads: Threads
    isa: IsaFeatures
    storage_read_mb_s: Positive  # MB/s (1e6 B/s) for MB-sized reads of cold experts
    memory_bandwidth_gb_s: Positive  # GB/s (1e9 B/s) the CPU really sustains
    formats: Formats
    default_quant: QuantName
    quant_preferences: Annotated[
        tuple[QuantName, ...],
        Field(min_length=1),
        expect("a non-empty list of quant names, best first"),
    ]
    # Sustained GFLOP/s of quantized matmuls on `threads` threads; None (or left out of a file)
    # is replaced by an estimate from `isa` and `threads` during validation.
    compute_gflops: Positive | None = None
    # Cores the model may use (None: as many as `threads`); the runtime never runs more
    # threads than this, so a device that shares its CPU with other work stays responsive.
    cores: Threads | None = None
    # Latency the device's users should see (`edgemoe bench` checks them): time to first
    # token and time between generated tokens, in milliseconds.
    ttft_ms_target: Positive = 200.0
    itl_ms_target: Positive = 50.0
    notes: dict[str, Text] = Field(default_factory=dict)
    path: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _file_layout(cls, data: Any, info: ValidationInfo) -> Any:
        """A file may use only the file's keys; `path` is where it was read from, not a key."""
        if not (info.context and _FILE in info.context) or not isinstance(data, Mapping):
            return data
        unknown = [k for k in data if k not in KNOWN_FIELDS]
        if unknown:
            raise problem(
                f"unknown field(s) {', '.join(repr(k) for k in unknown)} "
                f"(known fields: {', '.join(KNOWN_FIELDS)})"
            )
        return {**data, "path": info.context[_FILE]}

    @field_validator("model_memory_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any, info: ValidationInfo) -> Any:
        """Files write sizes ("6GiB"); a tiny one there is a missing unit, not a real device."""
        if isinstance(value, str | int) and not isinstance(value, bool):
            try:
                value = parse_size(value)
            except ValueError as e:
                raise problem(str(e)) from None
        else:
            raise rule(f"a size such as {EXAMPLES}")
        if info.context and _FILE in info.context and value < _MIN_FILE_MEMORY:
            raise rule("at least 1MiB (is a unit missing?)")
        return value

    @field_validator("notes", mode="after")
    @classmethod
    def _notes_name_fields(cls, notes: dict[str, str]) -> dict[str, str]:
        for key in notes:
            if key not in KNOWN_FIELDS or key == "notes":
                raise problem(
                    f"key '{key}' names no profile field (fields: {', '.join(KNOWN_FIELDS)})"
                )
        return notes

    @model_validator(mode="after")
    def _consistent(self) -> DeviceProfile:
        prefs = self.quant_preferences
        if len(set(prefs)) != len(prefs):
            raise rule("distinct quant names", got=list(prefs), field=("quant_preferences",))
        if self.default_quant not in prefs:
            raise rule(f"one of quant_preferences ({', '.join(prefs)})",
                       got=self.default_quant, field=("default_quant",))
        if self.compute_gflops is None:  # frozen: fill the estimate in place, once
            object.__setattr__(self, "compute_gflops", default_gflops(self.isa, self.threads))
            notes = dict(self.notes)
            notes.setdefault("compute_gflops", _ESTIMATED)
            object.__setattr__(self, "notes", notes)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able snapshot (attribute names as keys); the bundle manifest stores this."""
        return _ADAPTER.dump_python(self, mode="json")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "profile snapshot") -> DeviceProfile:
        """Inverse of `to_dict`, validated by the same rules as a file (e.g. a manifest's
        `profile`); errors name `where` and the field."""
        return validate(_ADAPTER, d, where, ProfileError)


_ADAPTER: TypeAdapter[DeviceProfile] = TypeAdapter(DeviceProfile)


def _choice(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(value)
    return value


def default_gflops(isa: tuple[str, ...], threads: int) -> float:
    """A rough compute figure from the ISA when a profile states none (see _GFLOPS_PER_THREAD)."""
    per_thread = next((g for feat, g in _GFLOPS_PER_THREAD if feat in isa), _GFLOPS_FALLBACK)
    return per_thread * threads


def profile_from_table(table: Any, where: str, path: Path | None = None) -> DeviceProfile:
    """Validate one parsed profile table (TOML file layout) into a DeviceProfile."""
    if not isinstance(table, Mapping):
        raise ProfileError(f"{where}: a profile must be a table of fields")
    return validate(_ADAPTER, table, where, ProfileError, context={_FILE: path})
