"""Where each expert's bytes live inside a finished GGUF (read back from the file, not predicted).

llama.cpp's quantizer decides the final layout, so byte ranges are always measured on the file
that ships; the runtime pages experts by exactly these ranges, after checking that the manifest
says the same (`contract.consistency`). A file that is not a readable GGUF is a BundleError
naming the file, never a traceback from the reader.
"""

from __future__ import annotations

import contextlib
import contextvars
import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.errors import BundleError
from contract.manifest import ExpertTensor, LayerExperts

if TYPE_CHECKING:  # gguf-py is imported when a GGUF is read (an ONNX-only load never does)
    import gguf

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
    """gguf's reader, with anything it raises on a damaged file turned into one BundleError.

    Inside `one_parse_per_file()` a version of a file (its identity, size and times) is parsed
    once: a load reads the layout, the attention shape, the routers and the checksums from one
    header, and gguf-py's parse walks every vocabulary string each time (a quarter of a second
    for a 1k-token fixture on a busy 2-core machine, six times per load)."""
    try:
        cache = _READERS.get()
        if cache is None:
            return _parse(path)
        st = os.stat(path)
        key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in cache:
            cache[key] = _parse(path)
        return cache[key]
    except FileNotFoundError:
        raise BundleError(f"{path}: not found") from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError,
            MemoryError, OSError) as e:
        raise BundleError(f"{path}: not a readable GGUF file ({_reason(e)})") from None


def _parse(path: Path) -> gguf.GGUFReader:
    import gguf

    check_structure(path)
    return gguf.GGUFReader(path)


# The readers parsed in the current one_parse_per_file() scope (per thread: a context variable).
_READERS: contextvars.ContextVar[dict[tuple, gguf.GGUFReader] | None] = contextvars.ContextVar(
    "gguf_readers", default=None)


@contextlib.contextmanager
def one_parse_per_file() -> Iterator[None]:
    """Within: open_reader parses each file version once (callers only read the readers). At
    the end the readers go, and their mappings of the files with them, so routers and
    vocabulary read through them do not stay in the process's RSS."""
    token = _READERS.set({} if _READERS.get() is None else _READERS.get())
    try:
        yield
    finally:
        _READERS.reset(token)


# GGUF value types: fixed sizes of the scalars; 8 is a string, 9 an array (gguf's constants).
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS


class _Scan:
    """A bounds-checked cursor over the metadata of a mapped GGUF file."""

    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def take(self, fmt: str) -> int:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise ValueError(f"the header runs past the end of the file at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise ValueError(f"{what} of {n} bytes at byte {self.pos} runs past the end of "
                             f"the file ({self.size} bytes)")
        self.pos += n

    def count(self, n: int, min_bytes: int, what: str) -> int:
        """A count read from the file, refused if that many items cannot fit in what is left."""
        if n * min_bytes > self.size - self.pos:
            raise ValueError(f"{what} count {n} at byte {self.pos} cannot fit in the file")
        return n

    def value(self, vtype: int) -> None:
        if vtype in _SCALAR_BYTES:
            self.skip(_SCALAR_BYTES[vtype], "a value")
        elif vtype == _STRING:
            self.skip(self.take("<Q"), "a string")
        elif vtype == _ARRAY:
            item = self.take("<I")
            if item == _ARRAY or (item != _STRING and item not in _SCALAR_BYTES):
                raise ValueError(f"array item type {item} at byte {self.pos} is not supported")
            n = self.count(self.take("<Q"), _SCALAR_BYTES.get(item, 8), "array item")
            if item in _SCALAR_BYTES:
                self.skip(n * _SCALAR_BYTES[item], "an array")
            else:
                for _ in range(n):
                    self.skip(self.take("<Q"), "a string")
        else:
            raise ValueError(f"unknown value type {vtype} at byte {self.pos}")


def check_structure(path: Path) -> None:
    """Walk the header, KV section and tensor table with every count and length checked
    against the file's size, before gguf-py reads it: gguf-py loops once per array item a
    header claims, so a damaged count (2**32 items) would hold the device for hours. Raises
    ValueError; the data region is never touched."""
    with open(path, "rb") as f:
        if not f.seek(0, 2):
            raise ValueError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            s = _Scan(buf)
            if buf[:4] != b"GGUF":
                raise ValueError("no GGUF magic")
            s.pos = 4
            if s.take("<I") not in (2, 3):
                raise ValueError("only little-endian GGUF versions 2 and 3 are supported")
            n_tensors, n_kv = s.take("<Q"), s.take("<Q")
            for _ in range(s.count(n_kv, 13, "key-value")):
                s.skip(s.take("<Q"), "a key")
                s.value(s.take("<I"))
            for _ in range(s.count(n_tensors, 24, "tensor")):
                s.skip(s.take("<Q"), "a tensor name")
                n_dims = s.take("<I")
                if n_dims > _MAX_DIMS:
                    raise ValueError(f"a tensor with {n_dims} dimensions (at most {_MAX_DIMS})")
                s.skip(8 * n_dims + 12, "a tensor's shape, type and offset")


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def read_layout(path: Path) -> GGUFLayout:
    reader = open_reader(path)
    try:
        return _layout(reader, path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: unreadable GGUF metadata ({_reason(e)})") from None


# The vocabulary arrays llama.cpp's tokenizer loader reads with GGML_ASSERTs (it aborts the
# process, not throws, on a wrong item type, a length mismatch or a token listed twice).
_VOCAB_ARRAYS = (  # gguf's GGUFValueType member names
    ("tokenizer.ggml.tokens", "STRING"),
    ("tokenizer.ggml.token_type", "INT32"),
    ("tokenizer.ggml.scores", "FLOAT32"),
    ("tokenizer.ggml.merges", "STRING"),
)


def _check_vocab(reader: gguf.GGUFReader, path: Path) -> None:
    """Refuse a vocabulary llama.cpp would abort on, before it is handed one."""
    import gguf

    n_tokens = None
    for key, type_name in _VOCAB_ARRAYS:
        f = reader.fields.get(key)
        if f is None:
            continue
        item = gguf.GGUFValueType[type_name]
        if f.types[:2] != [gguf.GGUFValueType.ARRAY, item]:
            raise BundleError(f"{path}: header key '{key}' must be an array of {item.name}")
        if key == "tokenizer.ggml.tokens":
            raw = [bytes(f.parts[i]) for i in f.data]  # undecoded: duplicates are byte-equal
            n_tokens = len(raw)
            if len(set(raw)) != n_tokens:
                raise BundleError(f"{path}: the vocabulary ('{key}') lists a token twice")
        elif n_tokens is not None and key != "tokenizer.ggml.merges" and len(f.data) != n_tokens:
            raise BundleError(f"{path}: '{key}' has {len(f.data)} entries for {n_tokens} tokens")


def _layout(reader: gguf.GGUFReader, path: Path) -> GGUFLayout:
    _check_vocab(reader, path)
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
        f"{arch}.expert_group_count",
        f"{arch}.expert_group_used_count",
        f"{arch}.nextn_predict_layers",
    )
    meta = {k: _field(reader, k) for k in keys}
    return GGUFLayout(
        arch, n_experts, expert_layers, dense, types, meta,
        file_bytes=int(reader.data.size), data_offset=int(reader.data_offset),
    )
