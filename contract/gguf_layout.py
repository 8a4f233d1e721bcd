"""Where each expert's bytes live inside a finished GGUF (read back from the file, not predicted).

llama.cpp's quantizer decides the final layout, so byte ranges are always measured on the file
that ships; the runtime pages experts by exactly these ranges, after checking that the manifest
says the same (`contract.consistency`). A file that is not a readable GGUF is a BundleError
naming the file, never a traceback from the reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from contract.errors import BundleError
from contract.manifest import ExpertTensor, LayerExperts

_EXPERT_TENSOR = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down|gate_up)_exps\.weight$")
# llama.cpp maps the file and uses tensor data in place; ggml aborts the process (GGML_ASSERT)
# when a tensor's bytes do not start on this boundary, so such a file is refused here.
TENSOR_ALIGNMENT = 32


@dataclass(frozen=True)
class GGUFLayout:
    arch: str
    n_experts: int
    expert_layers: tuple[LayerExperts, ...]
    dense_bytes: int
    tensor_types: dict[str, int]  # ggml type name -> number of tensors
    metadata: dict[str, Any]
    file_bytes: int = 0
    data_offset: int = 0  # where the tensor data region starts


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def open_reader(path: Path) -> gguf.GGUFReader:
    """gguf's reader, with anything it raises on a damaged file turned into one BundleError."""
    try:
        return gguf.GGUFReader(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: not found") from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError,
            MemoryError, OSError) as e:
        raise BundleError(f"{path}: not a readable GGUF file ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def read_layout(path: Path) -> GGUFLayout:
    reader = open_reader(path)
    try:
        return _layout(reader, path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: unreadable GGUF metadata ({_reason(e)})") from None


def _layout(reader: gguf.GGUFReader, path: Path) -> GGUFLayout:
    arch = str(_field(reader, "general.architecture"))
    n_experts = int(_field(reader, f"{arch}.expert_count") or 0)
    layers: dict[int, list[ExpertTensor]] = {}
    dense = 0
    types: dict[str, int] = {}
    for t in reader.tensors:
        if int(t.data_offset) % TENSOR_ALIGNMENT:
            raise BundleError(
                f"{path}: tensor '{t.name}' data at byte {int(t.data_offset)} is not "
                f"{TENSOR_ALIGNMENT}-byte aligned (llama.cpp cannot map it)"
            )
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        m = _EXPERT_TENSOR.match(t.name)
        if not m or not n_experts:
            dense += int(t.n_bytes)
            continue
        stride = int(t.n_bytes) // n_experts
        layers.setdefault(int(m.group(1)), []).append(
            ExpertTensor(t.name, t.tensor_type.name, int(t.data_offset), stride)
        )
    expert_layers = tuple(
        LayerExperts(layer, tuple(sorted(ts, key=lambda x: x.name)))
        for layer, ts in sorted(layers.items())
    )
    keys = (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "general.file_type",
        f"{arch}.context_length",
        f"{arch}.expert_used_count",
        f"{arch}.block_count",
    )
    meta = {k: _field(reader, k) for k in keys}
    return GGUFLayout(
        arch, n_experts, expert_layers, dense, types, meta,
        file_bytes=int(reader.data.size), data_offset=int(reader.data_offset),
    )
