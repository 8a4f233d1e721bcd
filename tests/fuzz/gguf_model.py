"""A small, independent GGUF (v2/v3) reader/writer for the fuzzer: a field map and a re-encoder.

Byte-level damage needs to know where each field lies (the header's counts, a KV's string
length, a tensor's dims) to hit them on purpose rather than by luck; semantic damage (another
architecture string, a missing key, a token array shorter than the vocabulary) changes lengths,
so the metadata must be re-encoded and the data region re-aligned. Written from the format
description, deliberately not with gguf-py: the reader under test must not also be the oracle.
Only pristine seed files are parsed, so the parser is strict.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value type codes and their fixed-width struct formats (little-endian).
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class Region:
    """One field of the file: `kind` says what it is, `label` which key or tensor it belongs to."""

    start: int
    size: int
    kind: str
    label: str = ""
    fmt: str = ""  # struct format when the field is a fixed-width number


@dataclass
class KV:
    key: str
    vtype: int
    value: Any  # scalar, str, or (item_type, list) for arrays


@dataclass
class TensorInfo:
    name: str
    dims: list[int]
    ggml_type: int
    offset: int  # relative to the data region


@dataclass
class GGUFModel:
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    data: bytes  # the data region (everything after the aligned metadata)
    regions: list[Region] = field(default_factory=list)  # only for a parsed file
    data_start: int = 0

    @property
    def alignment(self) -> int:
        for kv in self.kvs:
            if kv.key == "general.alignment" and isinstance(kv.value, int) and kv.value > 0:
                return kv.value
        return DEFAULT_ALIGNMENT

    def kv(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)


class _Cursor:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0
        self.regions: list[Region] = []

    def num(self, fmt: str, kind: str, label: str = "") -> Any:
        size = struct.calcsize("<" + fmt)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.regions.append(Region(self.pos, size, kind, label, fmt))
        self.pos += size
        return value

    def string(self, kind: str, label: str = "") -> str:
        n = self.num("Q", f"{kind}_len", label)
        raw = self.buf[self.pos : self.pos + n]
        if len(raw) != n:
            raise ValueError("string runs past the end of the file")
        self.regions.append(Region(self.pos, n, kind, label))
        self.pos += n
        return raw.decode("utf-8")

    def value(self, vtype: int, label: str) -> Any:
        if vtype in SCALAR:
            return self.num(SCALAR[vtype], "kv_value", label)
        if vtype == STRING:
            return self.string("kv_str", label)
        if vtype == ARRAY:
            item = self.num("I", "kv_arr_type", label)
            count = self.num("Q", "kv_arr_count", label)
            start = self.pos
            items = [self.value(item, label) for _ in range(count)]
            # one region for the whole array body, so a mutator can hit "the items" at once
            self.regions.append(Region(start, self.pos - start, "kv_arr_items", label))
            return (item, items)
        raise ValueError(f"unknown GGUF value type {vtype}")


def parse(buf: bytes) -> GGUFModel:
    c = _Cursor(buf)
    if buf[:4] != MAGIC:
        raise ValueError("not a GGUF file")
    c.regions.append(Region(0, 4, "magic"))
    c.pos = 4
    version = c.num("I", "version")
    n_tensors = c.num("Q", "n_tensors")
    n_kv = c.num("Q", "n_kv")
    kvs = []
    for _ in range(n_kv):
        key = c.string("kv_key")
        vtype = c.num("I", "kv_type", key)
        kvs.append(KV(key, vtype, c.value(vtype, key)))
    tensors = []
    for _ in range(n_tensors):
        name = c.string("ti_name")
        n_dims = c.num("I", "ti_ndims", name)
        dims = [c.num("Q", "ti_dim", name) for _ in range(n_dims)]
        ggml_type = c.num("I", "ti_type", name)
        offset = c.num("Q", "ti_offset", name)
        tensors.append(TensorInfo(name, dims, ggml_type, offset))
    model = GGUFModel(version, kvs, tensors, b"")
    data_start = _align(c.pos, model.alignment)
    c.regions.append(Region(c.pos, data_start - c.pos, "padding"))
    by_offset = sorted(tensors, key=lambda t: t.offset)
    ends = [t.offset for t in by_offset[1:]] + [len(buf) - data_start]
    for t, end in zip(by_offset, ends, strict=True):
        c.regions.append(Region(data_start + t.offset, end - t.offset, "tensor_data", t.name))
    model.data, model.regions, model.data_start = buf[data_start:], c.regions, data_start
    return model


def _align(pos: int, alignment: int) -> int:
    return pos + (-pos % alignment)


def _enc_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def _enc_value(vtype: int, value: Any) -> bytes:
    if vtype in SCALAR:
        return struct.pack("<" + SCALAR[vtype], value)
    if vtype == STRING:
        return _enc_string(value)
    if vtype == ARRAY:
        item, items = value
        return struct.pack("<IQ", item, len(items)) + b"".join(_enc_value(item, v) for v in items)
    raise ValueError(f"cannot encode GGUF value type {vtype}")


def serialize(model: GGUFModel) -> bytes:
    """The file for `model`: header, KVs, tensor infos, padding to the alignment, data."""
    out = [MAGIC, struct.pack("<IQQ", model.version, len(model.tensors), len(model.kvs))]
    for kv in model.kvs:
        out += [_enc_string(kv.key), struct.pack("<I", kv.vtype), _enc_value(kv.vtype, kv.value)]
    for t in model.tensors:
        out += [_enc_string(t.name), struct.pack("<I", len(t.dims))]
        out += [struct.pack("<Q", d) for d in t.dims]
        out += [struct.pack("<IQ", t.ggml_type, t.offset)]
    head = b"".join(out)
    head += b"\0" * (-len(head) % model.alignment)
    return head + model.data
