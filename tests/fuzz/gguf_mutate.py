"""Damage to a GGUF file: field-aware overwrites, bit flips, cuts, and semantic re-encodes.

Byte-level operators hit a chosen field (a count, a string length, a tensor's dims or offset)
with the values that break readers: zero, all-ones, the sign bit, near misses. Semantic
operators edit the parsed model (another architecture, a missing or retyped key, transposed
dims, a duplicated tensor) and re-encode it with the data region re-aligned, so the file is
well-formed and only its meaning is hostile: the damage that reaches llama.cpp.
"""

from __future__ import annotations

import copy
import math
import struct

from tests.fuzz.draw import Draw
from tests.fuzz.gguf_model import ARRAY, KV, SCALAR, STRING, GGUFModel, Region, serialize

_HEADER = ("magic", "version", "n_tensors", "n_kv")
_KV = ("kv_key_len", "kv_key", "kv_type", "kv_value", "kv_str_len", "kv_str", "kv_arr_type",
       "kv_arr_count", "kv_arr_items")
_TENSOR = ("ti_name_len", "ti_name", "ti_ndims", "ti_dim", "ti_type", "ti_offset")
_TYPE_FIELDS = ("kv_type", "kv_arr_type", "ti_type")
ARCHES = ("llama", "qwen2moe", "qwen3", "mixtral", "deepseek2", "olmoe", "", "x" * 300,
          "qwen3moe\x00", "QWEN3MOE", "bert", "mamba", "t5")


def _interesting_int(value: int, bits: int, signed: bool, draw: Draw) -> int:
    top = 1 << bits
    pool = [0, 1, value + 1, value - 1, value * 2, value + (top >> 1), top - 1, top >> 1,
            (top >> 1) - 1, draw.integer(0, top - 1), draw.integer(0, 64), 2**31, 2**32 - 1]
    v = draw.choice(pool) % top
    if signed and v >= top >> 1:
        v -= top
    return v


def _interesting_float(value: float, draw: Draw) -> float:
    return draw.choice([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e38, 1e-45, -value,
                        value * 1e6])


def _overwrite_number(buf: bytearray, r: Region, draw: Draw) -> str:
    fmt = "<" + r.fmt
    (value,) = struct.unpack_from(fmt, buf, r.start)
    if r.kind in _TYPE_FIELDS:
        new = draw.choice([13, 14, 31, 40, 255, 2**31, 2**32 - 1, draw.integer(0, 40)])
    elif r.fmt in "fd":
        new = _interesting_float(value, draw)
    elif r.fmt == "?":
        new = draw.choice([2, 255, 128])
        struct.pack_into("<B", buf, r.start, new)
        return f"{r.kind}[{r.label}] bool byte = {new}"
    else:
        bits = struct.calcsize(fmt) * 8
        new = _interesting_int(int(value), bits, r.fmt.islower(), draw)
    struct.pack_into(fmt, buf, r.start, new)
    return f"{r.kind}[{r.label}] {value} -> {new}"


def _overwrite_bytes(buf: bytearray, r: Region, model: GGUFModel, draw: Draw) -> str:
    if r.size == 0:
        return f"{r.kind}[{r.label}] empty, untouched"
    if r.kind == "ti_name" and draw.chance(0.5):  # another tensor's name of the same length
        same = [t.name for t in model.tensors
                if len(t.name.encode()) == r.size and t.name != r.label]
        if same:
            name = draw.choice(same)
            buf[r.start : r.start + r.size] = name.encode()
            return f"tensor name {r.label} -> {name} (duplicate)"
    at = r.start + draw.integer(0, r.size - 1)
    junk = draw.choice([b"\xff", b"\x00", b"\xc3", b".", b"/", b"%"])
    buf[at : at + 1] = junk
    return f"{r.kind}[{r.label}] byte {at - r.start} = {junk!r}"


def _pick_region(model: GGUFModel, draw: Draw, size: int) -> Region:
    """A field, chosen by group first so the 1,000 token strings don't drown the header."""
    group = draw.choice([_HEADER, _KV, _KV, _TENSOR, _TENSOR, ("tensor_data", "padding")])
    kind = draw.choice(group)
    inside = [r for r in model.regions if r.start + r.size <= size]  # after a re-encode
    return draw.choice([r for r in inside if r.kind == kind] or inside)


def byte_mutation(buf: bytes, model: GGUFModel, draw: Draw) -> tuple[bytes, str]:
    """One byte-level operator; lengths change only for cuts, insertions and deletions."""
    out = bytearray(buf)
    op = draw.integer(0, 9)
    if op <= 3:
        r = _pick_region(model, draw, len(out))
        if r.fmt:
            return bytes(out), _overwrite_number(out, r, draw)
        return bytes(out), _overwrite_bytes(out, r, model, draw)
    if op == 4:
        r = _pick_region(model, draw, len(out))
        for _ in range(draw.integer(1, 4)):
            at = r.start + draw.integer(0, max(r.size - 1, 0))
            if at < len(out):
                out[at] ^= 1 << draw.integer(0, 7)
        return bytes(out), f"bit flips in {r.kind}[{r.label}]"
    if op == 5:
        r = _pick_region(model, draw, len(out))
        cut = max(0, r.start + draw.integer(-2, r.size + 2))
        return bytes(out[:cut]), f"truncated at {cut} (inside {r.kind}[{r.label}])"
    if op == 6:
        extra = draw.choice([b"\0" * 4096, bytes(draw.blob(256)), buf[: draw.integer(1, 4096)]])
        return bytes(out) + extra, f"{len(extra)} bytes appended"
    if op == 7:
        r = _pick_region(model, draw, len(out))
        junk = draw.blob(16) or b"\0"
        return bytes(out[: r.start] + junk + out[r.start :]), f"{len(junk)} bytes inserted " \
            f"before {r.kind}[{r.label}]"
    if op == 8:
        r = _pick_region(model, draw, len(out))
        n = min(r.size or 1, draw.choice([1, 4, 8, r.size or 1]))
        return bytes(out[: r.start] + out[r.start + n :]), f"{n} bytes deleted at {r.kind}" \
            f"[{r.label}]"
    r = draw.choice([r for r in model.regions if r.kind == "tensor_data" and r.start < len(out)]
                    or [Region(0, len(out), "file")])
    fill = draw.choice([b"\x00\x7e", b"\x00\x7c", b"\x00\x00\xc0\x7f", b"\xff\xff"])
    n = min(r.size, 4096) // len(fill) * len(fill)
    out[r.start : r.start + n] = fill * (n // len(fill))
    return bytes(out), f"tensor data {r.label} filled with {fill!r} (NaN/Inf)"


# --- semantic edits on the parsed model ---------------------------------------------------
def _numeric_kvs(model: GGUFModel) -> list[KV]:
    return [kv for kv in model.kvs if kv.vtype in SCALAR and kv.vtype not in (6, 7, 12)]


def _semantic_kv(m: GGUFModel, draw: Draw) -> str:
    op = draw.integer(0, 7)
    if op <= 2:
        kv = draw.choice(_numeric_kvs(m))
        bits = struct.calcsize("<" + SCALAR[kv.vtype]) * 8
        old = kv.value
        kv.value = draw.choice([0, 1, old + 1, old - 1 if old else 0, old * 1000, 2**31 - 1,
                                2**bits - 1, 65536]) % (1 << bits)
        if SCALAR[kv.vtype].islower() and kv.value >= 1 << (bits - 1):
            kv.value -= 1 << bits
        return f"kv {kv.key}: {old} -> {kv.value}"
    if op == 3:
        kv = draw.choice(m.kvs)
        m.kvs.remove(kv)
        return f"kv {kv.key} removed"
    if op == 4:  # any key, arrays included: llama.cpp asserts on some array item types
        kv = draw.choice(_numeric_kvs(m) + [kv for kv in m.kvs if kv.vtype in (ARRAY, STRING)])
        old = kv.vtype
        kv.vtype, kv.value = draw.choice([
            (STRING, str(kv.value)), (6, float("nan")), (ARRAY, (4, [1, 2, 3])), (11, -1),
            (7, True), (12, 1e300), (ARRAY, (STRING, [])),
        ])
        return f"kv {kv.key}: type {old} -> {kv.vtype}"
    if op == 5:
        kv = copy.deepcopy(draw.choice(m.kvs))
        if kv.vtype in SCALAR and kv.vtype not in (6, 7, 12):
            kv.value = 0
        m.kvs.insert(draw.integer(0, len(m.kvs)), kv)
        return f"kv {kv.key} duplicated"
    if op == 6:
        kv = m.kv("general.architecture")
        arch = draw.choice(ARCHES)
        if kv is not None:
            kv.value = arch
        return f"architecture -> {arch!r}"
    return _semantic_tokens(m, draw)


def _semantic_tokens(m: GGUFModel, draw: Draw) -> str:
    arrays = [kv for kv in m.kvs if kv.vtype == ARRAY]
    kv = draw.choice(arrays)
    item, items = kv.value
    op = draw.integer(0, 4)
    if op == 0:
        kv.value = (item, items[: draw.integer(0, max(len(items) - 1, 0))])
        return f"kv {kv.key}: array cut to {len(kv.value[1])} of {len(items)}"
    if op == 1:
        kv.value = (item, [])
        return f"kv {kv.key}: empty array"
    if op == 2 and item == STRING:
        kv.value = (item, [draw.choice(["", "\udcff", "a" * 70000, "<s>"])] * len(items))
        return f"kv {kv.key}: every string replaced"
    if op == 3 and item in SCALAR and item not in (6, 7, 12):
        kv.value = (item, [draw.choice([0, 2**31 - 1 if item == 5 else 255, 7])] * len(items))
        return f"kv {kv.key}: every item replaced"
    key = draw.choice(["tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
                       "tokenizer.ggml.padding_token_id"])
    value = draw.choice([2**32 - 1, 2**31, len(items), 0])
    existing = m.kv(key)
    if existing is not None:
        existing.vtype, existing.value = 4, value
    else:
        m.kvs.append(KV(key, 4, value))
    return f"kv {key} = {value}"


def _semantic_tensor(m: GGUFModel, draw: Draw) -> str:
    t = draw.choice(m.tensors)
    op = draw.integer(0, 8)
    if op == 0 and len(t.dims) >= 2:
        t.dims[0], t.dims[1] = t.dims[1], t.dims[0]
        return f"tensor {t.name}: dims transposed to {t.dims}"
    if op == 1:
        i = draw.integer(0, len(t.dims) - 1)
        old = t.dims[i]
        t.dims[i] = draw.choice([0, 1, old * 2, old + 1, 2**32, 2**62, 2**63 + 1])
        return f"tensor {t.name}: dim {i} {old} -> {t.dims[i]}"
    if op == 2:
        t.dims = draw.choice([[*t.dims, 1], t.dims[:-1] or [1], [], [1] * 5, t.dims * 3])
        return f"tensor {t.name}: dims -> {t.dims}"
    if op == 3:
        old = t.ggml_type
        t.ggml_type = draw.choice([0, 1, 2, 8, 12, 14, 30, 4, 5, 39, 40, 1000])
        return f"tensor {t.name}: type {old} -> {t.ggml_type}"
    if op == 4:
        old = t.offset
        other = draw.choice(m.tensors)
        t.offset = draw.choice([old + 1, old + 32, other.offset, 0, len(m.data), 2**63,
                                len(m.data) - 32])
        return f"tensor {t.name}: offset {old} -> {t.offset}"
    if op == 5:
        m.tensors.append(copy.deepcopy(t))
        return f"tensor {t.name} duplicated"
    if op == 6:
        m.tensors.remove(t)
        return f"tensor {t.name} removed"
    if op == 7:
        new = draw.choice([t.name.replace("blk.0.", "blk.9."), t.name.replace("exps", "inp"),
                           "token_embd.weight", "blk.0.ffn_gate_up_exps.weight", "", "x" * 200,
                           t.name + ".bias"])
        old, t.name = t.name, new
        return f"tensor {old} renamed {new!r}"
    m.tensors.reverse()
    return "tensor table reversed"


def _semantic_file(m: GGUFModel, draw: Draw) -> str:
    op = draw.integer(0, 4)
    if op == 4:  # keys llama.cpp reads for every architecture, asserting on their values
        arch = m.kv("general.architecture")
        key = f"{arch.value if arch else 'x'}." + draw.choice(
            ["expert_group_count", "expert_group_used_count", "nextn_predict_layers",
             "leading_dense_block_count", "expert_shared_count"])
        value = draw.choice([0, 1, 2, 3, 8, 9, 512, 2**31])
        m.kvs.append(KV(key, 4, value))
        return f"kv {key} = {value} (added)"
    if op == 0:
        m.version = draw.choice([1, 2, 4, 0, 2**31])
        return f"version -> {m.version}"
    if op == 1:
        value = draw.choice([0, 1, 3, 8, 64, 4096, 2**31])
        m.kvs.append(KV("general.alignment", 4, value))
        return f"general.alignment = {value}"
    if op == 2:
        n = draw.integer(1, max(len(m.data) - 1, 1))
        m.data = m.data[:n]
        return f"data region cut to {n} bytes"
    m.data = m.data + b"\0" * draw.choice([1, 31, 4096])
    return "data region extended"


def semantic_mutation(model: GGUFModel, draw: Draw) -> tuple[bytes, str]:
    """Edit a copy of the parsed model and re-encode it (well-formed, meaning hostile)."""
    m = copy.deepcopy(model)
    m.regions = []
    what = draw.choice([_semantic_kv, _semantic_kv, _semantic_tensor, _semantic_tensor,
                        _semantic_file])(m, draw)
    try:
        return serialize(m), what
    except (struct.error, UnicodeEncodeError, OverflowError) as e:
        return serialize(model), f"{what} (not encodable: {e}; unchanged)"


def mutate_gguf(buf: bytes, model: GGUFModel, draw: Draw) -> tuple[bytes, str]:
    """1-2 operators: semantic re-encodes, field-aware byte damage, or both."""
    steps = []
    if draw.chance(0.45):
        buf, what = semantic_mutation(model, draw)
        steps.append(what)
        if draw.chance(0.25):
            buf, what = byte_mutation(buf, model, draw)
            steps.append(what)
    else:
        for _ in range(draw.choice([1, 1, 1, 2])):
            buf, what = byte_mutation(buf, model, draw)
            steps.append(what)
    return buf, "; ".join(steps)

