"""The bundle contract: manifest.json's schema (pydantic models), validation, (de)serialisation.

Both the packager and the runtime import this module, so it stays free of heavy dependencies
(no torch, no transformers, no llama.cpp): plain data in, frozen models out. The models are
pydantic dataclasses, so they still build positionally, `dataclasses.replace` still works and
every nested snapshot (device profile, plan) arrives typed. `contract/manifest.schema.json` is
generated from them (`contract.schema`).
"""

from __future__ import annotations

import json
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.dataclasses import dataclass

from contract.device_profile import DeviceProfile
from contract.errors import ManifestError
from contract.validation import problem, rule, validate

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

Int = Annotated[int, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
Number = Annotated[float, Field(strict=True)]  # an int is a number too; a bool or "1.5" is not
Bool = Annotated[bool, Field(strict=True)]
# JSON object keys are strings; layer indices are written as "3" and read back as ints.
LayerIndex = Annotated[int, Field(strict=False)]


def _optional_on_read(*names: str) -> Any:
    """Schema hook: fields the writer always writes but the reader fills in when absent, so
    the published schema lists them as optional too."""

    def hook(schema: dict[str, Any]) -> None:
        schema["required"] = [k for k in schema.get("required", []) if k not in names]

    return hook


def _fill(data: Any, defaults: dict[str, Any]) -> Any:
    """Absent (or null) optional keys take their defaults, as the hand-written reader did."""
    if isinstance(data, dict):
        return {**defaults, **{k: v for k, v in data.items() if v is not None or k not in defaults}}
    return data


@dataclass(frozen=True, config=ConfigDict(json_schema_extra=_optional_on_read("revision")))
class SourceInfo:
    """Where the checkpoint came from, so a bundle can be traced back and rebuilt."""

    kind: Annotated[str, Field(strict=True, description='"local" or "hub"')]
    ref: Annotated[str, Field(strict=True, description="folder path or Hub repo id")]
    revision: Str | None
    files: Annotated[dict[str, Str], Field(description="input file name -> sha256")]

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        return _fill(data, {"revision": None})


@dataclass(frozen=True)
class MoEShape:
    hf_architecture: Str
    gguf_arch: Str
    n_layers: Int
    moe_layers: tuple[Int, ...]
    n_experts: Int
    top_k: Int
    n_shared_experts: Int
    hidden_size: Int
    vocab_size: Int
    context_length: Int

    @model_validator(mode="after")
    def _top_k_fits(self) -> MoEShape:
        if not 0 < self.top_k <= self.n_experts:
            raise rule(f"in 1..n_experts ({self.n_experts})", got=self.top_k, field=("top_k",))
        return self


@dataclass(frozen=True)
class ExpertTensor:
    """One stacked expert tensor in the GGUF: expert e lives at [offset + e*stride, +stride)."""

    name: Str
    ggml_type: Str
    offset: Annotated[int, Field(strict=True, description="absolute byte offset of expert 0")]
    stride: Annotated[int, Field(strict=True, description="bytes per expert")]


@dataclass(frozen=True)
class LayerExperts:
    layer: Int
    tensors: Annotated[tuple[ExpertTensor, ...], Field(min_length=1)]

    @property
    def expert_bytes(self) -> int:
        return sum(t.stride for t in self.tensors)

    def ranges(self, expert: int) -> list[tuple[int, int]]:
        """Byte ranges [start, end) of one expert's weights inside the model file."""
        return [
            (t.offset + expert * t.stride, t.offset + (expert + 1) * t.stride) for t in self.tensors
        ]


@dataclass(frozen=True)
class FileEntry:
    sha256: Str
    bytes: Int


FORMATS = ("gguf", "onnx")


@dataclass(frozen=True)
class Build:
    """One engine's build of the checkpoint inside a bundle: its files and where experts live.

    GGUF: the expert offsets address `model_file` (llama.cpp maps it whole). ONNX: `model_file`
    is the graph and the offsets address `data_file`, its external data, which onnxruntime maps
    per initializer. Either way expert e of a tensor lives at [offset + e*stride, +stride) of
    `expert_file`, and the runtime pages exactly those bytes.
    """

    format: Literal["gguf", "onnx"]
    model_file: Str
    quant: Str
    dense_bytes: Int
    expert_layers: tuple[LayerExperts, ...]
    data_file: Str | None = None
    block_size: Int | None = None  # block-wise quantization (ONNX int8/int4)
    opset: Int | None = None

    @property
    def expert_file(self) -> str:
        return self.data_file or self.model_file


# Block offsets are JSON object keys (strings), read back as non-negative ints.
BlockOffset = Annotated[int, Field(strict=False, ge=0)]
Sha256Hex = Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$")]


@dataclass(frozen=True)
class SampledHashes:
    """sha256 of a few fixed-size blocks of one file, so opening a bundle catches damaged data
    by reading those blocks only (`contract/integrity.py` chooses them and says why).

    Block `offset` is the bytes [offset, min(offset + block_bytes, file size)). The scheme is a
    plain string, not an enum: a reader meeting a scheme it does not know skips the check rather
    than refusing a bundle a newer packager wrote.
    """

    scheme: Annotated[str, Field(strict=True, description='"sha256-blocks-v1"')]
    # Bounded: the reader allocates one block per read, and a manifest is untrusted input.
    block_bytes: Annotated[int, Field(strict=True, gt=0, le=1 << 24)]
    blocks: Annotated[
        dict[BlockOffset, Sha256Hex],
        Field(description="byte offset of a block -> sha256 (hex) of its bytes"),
    ]


Xxh3Hex = Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{16}$")]


@dataclass(frozen=True)
class RangeChecksum:
    """A fast checksum of one byte range of a file: a dense tensor, or a header."""

    offset: Annotated[int, Field(strict=True, ge=0)]
    bytes: Annotated[int, Field(strict=True, ge=0)]
    xxh3: Xxh3Hex


@dataclass(frozen=True)
class FileChecksums:
    """Fast checksums of every weight byte range of one model or data file, so the runtime can
    verify each expert the first time it reads it and the dense tensors after load
    (`contract/checksums.py` says what is covered and why).

    `experts` maps each stacked expert tensor (by its name in the build's `expert_layers`) to
    one digest per expert, of the bytes [offset + e*stride, +stride). The scheme is a plain
    string: a reader meeting one it does not know treats the bundle as having no checksums.
    """

    scheme: Annotated[str, Field(strict=True, description='"xxh3-64-v1"')]
    dense: Annotated[
        dict[Str, RangeChecksum],
        Field(description="dense tensor (or '(header)', '(graph)') -> its range and xxh3-64"),
    ] = field(default_factory=dict)
    experts: Annotated[
        dict[Str, tuple[Xxh3Hex, ...]],
        Field(description="stacked expert tensor name -> xxh3-64 of each expert's slice"),
    ] = field(default_factory=dict)


class PlanSnapshot(BaseModel):
    """The planner's decision as the packager recorded it (`packager.plan.Plan.to_dict()`).

    The fields readers use are typed; the planner may add more, which are kept as they are
    (`model_extra`) so an older reader neither rejects nor drops them.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    profile: Str
    quant_dense: Str
    quant_experts: Str  # the llama.cpp file type quantized with
    context_length: Int
    fits: Bool
    resident: Bool = False  # every kept expert stays in memory; nothing streams
    tensor_types: dict[str, Str] = Field(default_factory=dict)  # regex -> ggml type overrides
    dense_bytes: Int = 0
    kv_bytes: Int = 0
    stream_bytes: Int = 0
    budget_bytes: Int = 0
    hot_bytes: Int = 0
    expert_bytes_total: Int = 0
    expert_bytes_per_layer: dict[LayerIndex, Int] = Field(default_factory=dict)
    hot_experts: dict[LayerIndex, tuple[Int, ...]] = Field(default_factory=dict)
    pruned_experts: dict[LayerIndex, tuple[Int, ...]] = Field(default_factory=dict)
    prune_fraction: Number = 0.0
    expected_hit_rate: Number | None = None
    est_decode_tok_s: Number | None = None
    est_prefill_tok_s: Number | None = None
    suggestions: tuple[Str, ...] = ()
    rationale: tuple[Str, ...] = ()


_OPTIONAL_ON_READ = {
    "chat_template": None, "plan": None, "report_file": None, "extra": {}, "data_file": None,
    "builds": [], "integrity": {}, "hot_shares": {}, "checksums": {},
}


@dataclass(frozen=True, config=ConfigDict(
    json_schema_extra=_optional_on_read(*_OPTIONAL_ON_READ, "created_by")))
class Manifest:
    schema_version: Literal[1]
    format: Str
    model_file: Str
    quant: Str
    source: SourceInfo
    shape: MoEShape
    profile: DeviceProfile
    dense_bytes: Int
    expert_layers: tuple[LayerExperts, ...]
    hot_experts: Annotated[
        dict[LayerIndex, tuple[Int, ...]],
        Field(description="layer -> expert ids the runtime pins (kept resident), hottest first"),
    ]
    tokenizer: dict[str, Any]
    chat_template: Str | None
    files: dict[str, FileEntry]
    plan: PlanSnapshot | None = None
    report_file: Str | None = None
    created_by: Str = "edgemoe"
    extra: dict[str, Any] = field(default_factory=dict)
    data_file: Str | None = None  # the primary build's external data (ONNX)
    builds: tuple[Build, ...] = ()  # further builds of the same checkpoint (e.g. ONNX + GGUF)
    # Sampled block hashes per model/data file, checked at every open (absent in older bundles).
    integrity: Annotated[
        dict[str, SampledHashes],
        Field(description="file name -> sampled block hashes checked when the bundle is opened"),
    ] = field(default_factory=dict)
    # Each hot expert's share of its layer's routings, in hot_experts' order (absent in bundles
    # packed before it was recorded, or without calibration: the list order is the rank then).
    hot_shares: Annotated[
        dict[LayerIndex, tuple[Number, ...]],
        Field(description="layer -> share of the layer's routings of each hot expert, in order"),
    ] = field(default_factory=dict)
    # Fast checksums per dense tensor and per expert slice, per model/data file, verified as
    # the runtime first reads them (absent in bundles packed before they were recorded).
    checksums: Annotated[
        dict[str, FileChecksums],
        Field(description="file name -> xxh3-64 of each dense tensor and each expert's slice"),
    ] = field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _version_first(cls, data: Any) -> Any:
        """Another schema version is one clear error, not a list of every field that moved."""
        if isinstance(data, dict):
            version = data.get("schema_version")
            if isinstance(version, int) and not isinstance(version, bool) and version != 1:
                raise problem(f"schema_version {version} is not supported "
                              f"(this edgemoe reads {SCHEMA_VERSION})")
        return _fill(data, _OPTIONAL_ON_READ)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = self.shape.n_experts
        for layer, experts in self.hot_experts.items():
            bad = [e for e in experts if not 0 <= e < n]
            if bad:
                raise rule(f"expert ids in 0..{n - 1}", got=bad, field=("hot_experts", layer))
        for layer, shares in self.hot_shares.items():
            want = len(self.hot_experts.get(layer, ()))
            if len(shares) != want or not all(0 <= s <= 1 for s in shares):
                raise rule(f"{want} shares in [0, 1], one per hot expert", got=list(shares),
                           field=("hot_shares", layer))
        if self.model_file not in self.files:
            raise problem(f"'{self.model_file}' is not listed in 'files'", field=("model_file",))
        if self.format not in FORMATS:
            raise rule(f"one of {', '.join(FORMATS)}", got=self.format, field=("format",))
        for i, b in enumerate(self.all_builds()):
            for name, value in (("model_file", b.model_file), ("data_file", b.data_file)):
                if value is not None and value not in self.files:
                    raise problem(f"'{value}' is not listed in 'files'", field=("builds", i, name))
        formats = [b.format for b in self.all_builds()]
        if len(set(formats)) != len(formats):
            raise rule("one build per format", got=formats, field=("builds",))
        for name in [*self.integrity, *self.checksums]:
            if name not in self.files:
                where = "integrity" if name in self.integrity else "checksums"
                raise problem(f"'{name}' is not listed in 'files'", field=(where, name))
        return self

    def all_builds(self) -> tuple[Build, ...]:
        """The primary build (the top-level fields) first, then the others."""
        primary = Build(
            self.format, self.model_file, self.quant, self.dense_bytes,  # type: ignore[arg-type]
            self.expert_layers, self.data_file,
        )
        return (primary, *self.builds)

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(b.format for b in self.all_builds())

    def build(self, fmt: str | None = None) -> Build:
        """The build for an engine format (None: the primary one)."""
        for b in self.all_builds():
            if fmt is None or b.format == fmt:
                return b
        raise ManifestError(
            f"this bundle has no {fmt} build (it has: {', '.join(self.formats)})"
        )

    @property
    def expert_bytes_total(self) -> int:
        return sum(layer.expert_bytes * self.shape.n_experts for layer in self.expert_layers)

    def layer(self, index: int) -> LayerExperts:
        for layer in self.expert_layers:
            if layer.layer == index:
                return layer
        raise KeyError(f"layer {index} has no routed experts")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (layer keys as strings), plus derived `sizes` for human readers;
        `hot_shares` and `checksums` only when known (a bundle without them keeps its bytes)."""
        d = _ADAPTER.dump_python(self, mode="json")
        for optional in ("hot_shares", "checksums"):
            if not getattr(self, optional):
                del d[optional]
        d["sizes"] = {
            "dense_bytes": self.dense_bytes,
            "expert_bytes_total": self.expert_bytes_total,
            "expert_bytes_per_layer": {str(x.layer): x.expert_bytes for x in self.expert_layers},
        }
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


_ADAPTER: TypeAdapter[Manifest] = TypeAdapter(Manifest)


def manifest_from_dict(d: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Validate a parsed manifest.json; every problem is one line naming the field and what
    was expected (see contract.validation)."""
    return validate(_ADAPTER, d, where, ManifestError)


def read_manifest(bundle_dir: Path) -> Manifest:
    """Load and validate `bundle_dir/manifest.json`."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: not found (is '{bundle_dir}' an edgemoe bundle?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from None
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise ManifestError(f"{path}: JSON nested too deeply to be a manifest") from None
    except ValueError as e:  # e.g. an integer longer than Python's 4,300-digit limit
        raise ManifestError(f"{path}: unreadable JSON ({e})") from None
    return manifest_from_dict(data, where=str(path))
