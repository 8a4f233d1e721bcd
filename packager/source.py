"""A Hugging Face checkpoint on disk: resolving (folder or Hub id), validating, reading tensors.

Tensors are read lazily, one at a time, so packing a model needs memory for the largest stacked
tensor rather than for the whole checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from contract.files import sha256_file
from contract.manifest import SourceInfo
from packager.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
OPTIONAL_FILES = ("generation_config.json", "special_tokens_map.json", "chat_template.jinja")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class TensorInfo:
    name: str  # as stored in its file (a composite's text view renames the key, not this)
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string: F32, F16, BF16, ...


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint folder: config, weight files, tokenizer files and provenance."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    weight_files: tuple[Path, ...]
    source: SourceInfo
    # Opened from a vision+text checkpoint (packager/composite.py): its architecture, and the
    # stored tensors the text model does not use (the vision tower).
    composite: str | None = None
    left_out: tuple[str, ...] = ()

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else str(self.config.get("model_type", "unknown"))

    def read(self, name: str) -> np.ndarray:
        """One tensor as float32 (BF16 widened exactly; numpy has no bfloat16); packed bytes
        (U8, e.g. gpt-oss's MXFP4 blocks and scales) as they are stored."""
        info = self.tensors[name]
        try:
            with safe_open(str(info.file), framework="np") as f:
                if info.dtype == "BF16":
                    return _bf16_tensor(info, f.metadata())
                if info.dtype == "U8":
                    return np.asarray(f.get_tensor(info.name), dtype=np.uint8)
                return np.asarray(f.get_tensor(info.name), dtype=np.float32)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{info.file.name}: cannot read tensor '{name}': {e}") from e


def _bf16_tensor(info: TensorInfo, _meta: Any) -> np.ndarray:
    """Read a BF16 tensor from the raw safetensors layout and widen it to float32 bit-exactly."""
    with open(info.file, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
        start, end = header[info.name]["data_offsets"]
        fh.seek(8 + header_len + start)
        raw = np.frombuffer(fh.read(end - start), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info.shape)


def looks_like_repo_id(src: str) -> bool:
    return bool(_REPO_ID.match(src)) and not src.startswith((".", "/"))


def resolve_source(
    src: str | Path, revision: str | None = None, cache_dir: Path | None = None
) -> tuple[Path, str, str | None]:
    """Map SRC to a local folder: a path as is, or a Hub repo id through huggingface_hub.

    The local Hub cache is tried first so that offline devices and CI never touch the network;
    only if the snapshot is not cached do we ask the Hub (which fails fast when offline).
    Returns (folder, kind, revision).
    """
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a checkpoint folder, got a file")
        return path.resolve(), "local", None
    src = str(src)
    if not looks_like_repo_id(src):
        raise CheckpointError(f"{src}: no such folder, and not a Hub repo id (expected 'org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.jinja", "tokenizer*"]
    kwargs = dict(repo_id=src, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    try:
        folder = snapshot_download(local_files_only=True, **kwargs)
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise CheckpointError(
                f"{src}: not in the local Hub cache and HF_HUB_OFFLINE is set"
            ) from None
        try:
            folder = snapshot_download(**kwargs)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
            raise CheckpointError(
                f"{src}: not in the local Hub cache and not downloadable: {e}"
            ) from None
    folder_path = Path(folder)
    return folder_path, "hub", folder_path.name


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path.name}: malformed JSON at line {e.lineno}: {e.msg}") from None


def _weight_files(folder: Path) -> tuple[Path, ...]:
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = _load_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index.name}: missing or empty 'weight_map'")
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (folder / name).is_file():
                raise CheckpointError(f"{index.name}: names shard '{name}', which does not exist")
        return tuple(folder / n for n in files)
    single = folder / SINGLE_NAME
    if single.is_file():
        return (single,)
    loose = sorted(folder.glob("*.safetensors"))
    if loose:
        return tuple(loose)
    raise CheckpointError(f"{folder}: no {SINGLE_NAME} or {INDEX_NAME} (only safetensors is read)")


def _scan_tensors(files: tuple[Path, ...]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="np") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    tensors[name] = TensorInfo(name, file, tuple(sl.get_shape()), sl.get_dtype())
        except SafetensorError as e:
            raise CheckpointError(
                f"{file.name}: corrupt or truncated safetensors file ({e})"
            ) from e
    return tensors


def _index(folder: Path) -> tuple[dict[str, Any], tuple[Path, ...], dict[str, TensorInfo]]:
    """config.json, weight files and tensor index of a folder (headers only, no weights read)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no config.json (is this a Hugging Face checkpoint?)")
    config = _load_json(config_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path.name}: top level must be an object")
    files = _weight_files(folder)
    return config, files, _scan_tensors(files)


def open_checkpoint(
    src: str | Path, revision: str | None = None, cache_dir: Path | None = None
) -> Checkpoint:
    """Resolve, validate and index a checkpoint; every failure is a one-line CheckpointError."""
    folder, kind, rev = resolve_source(src, revision, cache_dir)
    config, files, tensors = _index(folder)
    config_path = folder / "config.json"
    hashed = [config_path, *files]
    hashed += [folder / n for n in TOKENIZER_FILES + OPTIONAL_FILES if (folder / n).is_file()]
    if (folder / INDEX_NAME).is_file():
        hashed.append(folder / INDEX_NAME)
    source = SourceInfo(
        kind=kind,
        ref=str(src) if kind == "hub" else str(folder),
        revision=rev,
        files={p.name: sha256_file(p) for p in hashed},
    )
    return _text_model(Checkpoint(folder, config, tensors, files, source))


def _text_model(ckpt: Checkpoint) -> Checkpoint:
    """A vision+text checkpoint a family packs the text model of, or a text model stored under
    a composite's tensor names, seen as that text model."""
    from packager.composite import has_text_prefix, text_view
    from packager.families.registry import composite_text_architecture

    text_arch = composite_text_architecture(ckpt.config)
    if text_arch is None and not has_text_prefix(ckpt.tensors):
        return ckpt
    return text_view(ckpt, text_arch)


def open_derived(folder: Path, source: SourceInfo) -> Checkpoint:
    """A checkpoint edgemoe wrote from another one (a pruned copy), opened for the next stage.

    It is indexed like any checkpoint but keeps `source`, the provenance of the checkpoint it
    came from: the bundle names the user's model, not a scratch folder, and nothing is hashed
    a second time.
    """
    folder = Path(folder).resolve()
    config, files, tensors = _index(folder)
    return Checkpoint(folder, config, tensors, files, source)
