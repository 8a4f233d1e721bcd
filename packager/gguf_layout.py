"""Where each expert's bytes live inside a finished GGUF (read back from the file, not predicted).

llama.cpp's quantizer decides the final layout, so byte ranges are always measured on the file
that ships; the runtime pages experts by exactly these ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from contract.manifest import ExpertTensor, LayerExperts

_EXPERT_TENSOR = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down|gate_up)_exps\.weight$")


@dataclass(frozen=True)
class GGUFLayout:
    arch: str
    n_experts: int
    expert_layers: tuple[LayerExperts, ...]
    dense_bytes: int
    tensor_types: dict[str, int]  # ggml type name -> number of tensors
    metadata: dict[str, Any]


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def read_layout(path: Path) -> GGUFLayout:
    reader = gguf.GGUFReader(path)
    arch = str(_field(reader, "general.architecture"))
    n_experts = int(_field(reader, f"{arch}.expert_count") or 0)
    layers: dict[int, list[ExpertTensor]] = {}
    dense = 0
    types: dict[str, int] = {}
    for t in reader.tensors:
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
    return GGUFLayout(arch, n_experts, expert_layers, dense, types, meta)
