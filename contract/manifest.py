"""The bundle contract: manifest.json's schema, validation, and (de)serialisation.

Both the packager and the runtime import this module, so it stays free of heavy dependencies
(no torch, no transformers, no llama.cpp): plain data in, frozen dataclasses out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import ManifestError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SourceInfo:
    """Where the checkpoint came from, so a bundle can be traced back and rebuilt."""

    kind: str  # "local" or "hub"
    ref: str  # folder path or repo id
    revision: str | None
    files: dict[str, str]  # input file name -> sha256


@dataclass(frozen=True)
class MoEShape:
    hf_architecture: str
    gguf_arch: str
    n_layers: int
    moe_layers: tuple[int, ...]
    n_experts: int
    top_k: int
    n_shared_experts: int
    hidden_size: int
    vocab_size: int
    context_length: int


@dataclass(frozen=True)
class ExpertTensor:
    """One stacked expert tensor in the GGUF: expert e lives at [offset + e*stride, +stride)."""

    name: str
    ggml_type: str
    offset: int  # absolute byte offset of expert 0 in the model file
    stride: int  # bytes per expert


@dataclass(frozen=True)
class LayerExperts:
    layer: int
    tensors: tuple[ExpertTensor, ...]

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
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    format: str
    model_file: str
    quant: str
    source: SourceInfo
    shape: MoEShape
    profile: dict[str, Any]
    dense_bytes: int
    expert_layers: tuple[LayerExperts, ...]
    hot_experts: dict[int, tuple[int, ...]]
    tokenizer: dict[str, Any]
    chat_template: str | None
    files: dict[str, FileEntry]
    plan: dict[str, Any] | None = None
    report_file: str | None = None
    created_by: str = "edgemoe"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def expert_bytes_total(self) -> int:
        return sum(layer.expert_bytes * self.shape.n_experts for layer in self.expert_layers)

    def layer(self, index: int) -> LayerExperts:
        for layer in self.expert_layers:
            if layer.layer == index:
                return layer
        raise KeyError(f"layer {index} has no routed experts")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hot_experts"] = {str(k): list(v) for k, v in self.hot_experts.items()}
        d["sizes"] = {
            "dense_bytes": self.dense_bytes,
            "expert_bytes_total": self.expert_bytes_total,
            "expert_bytes_per_layer": {str(x.layer): x.expert_bytes for x in self.expert_layers},
        }
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: missing field '{key}'")
    value = d[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ManifestError(f"{where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def _opt(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if d.get(key) is None:
        return None
    return _req(d, key, typ, where)


def manifest_from_dict(d: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Validate a parsed manifest.json; every error names the field and what was expected."""
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: top level must be an object")
    version = _req(d, "schema_version", int, where)
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: schema_version {version} is not supported "
            f"(this edgemoe reads {SCHEMA_VERSION})"
        )
    src = _req(d, "source", dict, where)
    source = SourceInfo(
        kind=_req(src, "kind", str, f"{where}: source"),
        ref=_req(src, "ref", str, f"{where}: source"),
        revision=_opt(src, "revision", str, f"{where}: source"),
        files=dict(_req(src, "files", dict, f"{where}: source")),
    )
    sh = _req(d, "shape", dict, where)
    w = f"{where}: shape"
    shape = MoEShape(
        hf_architecture=_req(sh, "hf_architecture", str, w),
        gguf_arch=_req(sh, "gguf_arch", str, w),
        n_layers=_req(sh, "n_layers", int, w),
        moe_layers=tuple(_req(sh, "moe_layers", list, w)),
        n_experts=_req(sh, "n_experts", int, w),
        top_k=_req(sh, "top_k", int, w),
        n_shared_experts=_req(sh, "n_shared_experts", int, w),
        hidden_size=_req(sh, "hidden_size", int, w),
        vocab_size=_req(sh, "vocab_size", int, w),
        context_length=_req(sh, "context_length", int, w),
    )
    if not 0 < shape.top_k <= shape.n_experts:
        raise ManifestError(
            f"{w}: top_k must be in 1..n_experts ({shape.n_experts}), got {shape.top_k}"
        )
    layers = []
    for i, raw in enumerate(_req(d, "expert_layers", list, where)):
        wl = f"{where}: expert_layers[{i}]"
        tensors = tuple(
            ExpertTensor(
                name=_req(t, "name", str, wl),
                ggml_type=_req(t, "ggml_type", str, wl),
                offset=_req(t, "offset", int, wl),
                stride=_req(t, "stride", int, wl),
            )
            for t in _req(raw, "tensors", list, wl)
        )
        if not tensors:
            raise ManifestError(f"{wl}: 'tensors' is empty")
        layers.append(LayerExperts(layer=_req(raw, "layer", int, wl), tensors=tensors))
    hot: dict[int, tuple[int, ...]] = {}
    for key, experts in _req(d, "hot_experts", dict, where).items():
        try:
            layer = int(key)
        except ValueError as e:
            raise ManifestError(f"{where}: hot_experts key '{key}' is not a layer index") from e
        bad = [e for e in experts if not isinstance(e, int) or not 0 <= e < shape.n_experts]
        if bad:
            raise ManifestError(f"{where}: hot_experts[{key}] has invalid expert ids {bad}")
        hot[layer] = tuple(experts)
    files = {
        name: FileEntry(
            sha256=_req(e, "sha256", str, f"{where}: files[{name}]"),
            bytes=_req(e, "bytes", int, f"{where}: files[{name}]"),
        )
        for name, e in _req(d, "files", dict, where).items()
    }
    model_file = _req(d, "model_file", str, where)
    if model_file not in files:
        raise ManifestError(f"{where}: model_file '{model_file}' is not listed in 'files'")
    return Manifest(
        schema_version=version,
        format=_req(d, "format", str, where),
        model_file=model_file,
        quant=_req(d, "quant", str, where),
        source=source,
        shape=shape,
        profile=dict(_req(d, "profile", dict, where)),
        dense_bytes=_req(d, "dense_bytes", int, where),
        expert_layers=tuple(layers),
        hot_experts=hot,
        tokenizer=dict(_req(d, "tokenizer", dict, where)),
        chat_template=_opt(d, "chat_template", str, where),
        files=files,
        plan=_opt(d, "plan", dict, where),
        report_file=_opt(d, "report_file", str, where),
        created_by=d.get("created_by", "edgemoe"),
        extra=dict(d.get("extra") or {}),
    )


def read_manifest(bundle_dir: Path) -> Manifest:
    """Load and validate `bundle_dir/manifest.json`."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: not found (is '{bundle_dir}' an edgemoe bundle?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    return manifest_from_dict(data, where=str(path))
