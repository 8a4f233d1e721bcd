"""Exact reproducers of what the fuzzer found and was fixed, so each stays fixed by name.

Bundle cases edit a copy of the session's tiny bundle with the fuzzer's own GGUF codec and
bring the manifest in line (size, hash, layout) the way a hostile re-pack would, so only the
check under test can refuse it; llama.cpp is never reached (it used to abort the process).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.errors import BundleError, EdgemoeError
from tests.fuzz.gguf_model import KV, GGUFModel, parse, serialize


def _rebundle(tiny_bundle: Path, tmp_path: Path, edit: Callable[[GGUFModel], None],
              shape: dict | None = None) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["shape"].update(shape or {})
    model = bundle / manifest["model_file"]
    parsed = parse(model.read_bytes())
    edit(parsed)
    data = serialize(parsed)
    model.write_bytes(data)
    manifest["files"][manifest["model_file"]] = {
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def _set_kv(key_suffix: str, vtype: int, value) -> Callable[[GGUFModel], None]:
    def edit(m: GGUFModel) -> None:
        kv = next(kv for kv in m.kvs if kv.key.endswith(key_suffix))
        kv.vtype, kv.value = vtype, value

    return edit


def _tokens_all(text: str) -> Callable[[GGUFModel], None]:
    def edit(m: GGUFModel) -> None:
        kv = m.kv("tokenizer.ggml.tokens")
        assert kv is not None
        kv.value = (kv.value[0], [text] * len(kv.value[1]))

    return edit


def _cut_token_types(m: GGUFModel) -> None:
    kv = m.kv("tokenizer.ggml.token_type")
    assert kv is not None
    kv.value = (kv.value[0], kv.value[1][:10])


def _add_kv(key_suffix: str, value: int) -> Callable[[GGUFModel], None]:
    def edit(m: GGUFModel) -> None:
        arch = m.kv("general.architecture")
        assert arch is not None
        m.kvs.append(KV(f"{arch.value}.{key_suffix}", 4, value))

    return edit


@pytest.mark.engine
@pytest.mark.parametrize(
    ("case", "edit", "shape", "field"),
    [
        # llama.cpp GGML_ASSERT(n_layer_all <= LLAMA_MAX_LAYERS): SIGABRT when both agreed.
        ("3000 layers", _set_kv(".block_count", 4, 3000), {"n_layers": 3000}, "n_layers"),
        # GGML_ASSERT(n_expert_groups < n_expert)
        ("expert groups", _add_kv("expert_group_count", 8), {}, "expert groups"),
        # GGML_ASSERT(n_layer_nextn <= n_layer_all)
        ("next-n layers", _add_kv("nextn_predict_layers", 9), {}, "nextn_predict_layers"),
        # GGML_ASSERT(n_expert_used_max > 0) when the key is missing
        ("no top-k key", lambda m: m.kvs.remove(next(
            kv for kv in m.kvs if kv.key.endswith(".expert_used_count"))), {}, "missing"),
    ],
)
def test_llama_cpp_limits_are_checked_before_it_asserts(case, edit, shape, field, tiny_bundle,
                                                        tmp_path):
    from runtime.bundle import open_bundle

    with pytest.raises(BundleError) as e:
        open_bundle(_rebundle(tiny_bundle, tmp_path, edit, shape))
    assert field in str(e.value)


@pytest.mark.engine
@pytest.mark.parametrize(
    ("case", "edit", "field"),
    [
        # general.alignment = 1 put tensor data off the 32-byte boundary: GGML_ASSERT, SIGABRT.
        ("alignment 1", lambda m: m.kvs.append(KV("general.alignment", 4, 1)), "aligned"),
        # context_length 2**31-1: llama-cpp-python's tokenize allocated 8 GiB (MemoryError).
        ("huge trained context", _set_kv(".context_length", 4, 2**31 - 1), "context_length"),
        # expert_used_count as an array: int([...]) raised TypeError inside the check.
        ("top-k as an array", _set_kv(".expert_used_count", 9, (4, [1, 2])), "expert_used_count"),
        ("block count off by one", _set_kv(".block_count", 4, 4), "n_layers"),
        ("another architecture", _set_kv("general.architecture", 8, "llama"), "gguf_arch"),
        # every token "<s>": llama-vocab.cpp GGML_ASSERT(id_to_token.size() == ...), SIGABRT.
        ("duplicate tokens", _tokens_all("<s>"), "twice"),
        ("token types cut short", _cut_token_types, "entries"),
        ("tokens retyped", _set_kv("tokenizer.ggml.tokens", 9, (5, [1, 2])), "array of STRING"),
    ],
)
def test_hostile_gguf_is_refused_at_open(case, edit, field, tiny_bundle, tmp_path):
    from runtime.bundle import open_bundle

    bundle = _rebundle(tiny_bundle, tmp_path, edit)
    with pytest.raises(BundleError) as e:
        open_bundle(bundle)
    assert field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.engine
def test_huge_array_count_is_refused_before_gguf_py_loops_over_it(tiny_bundle, tmp_path):
    """A token-type array claiming 2**32+1 items: gguf-py looped over them for minutes."""
    from runtime.bundle import open_bundle

    bundle = _rebundle(tiny_bundle, tmp_path, lambda m: None)
    model = bundle / "model.gguf"
    buf = bytearray(model.read_bytes())
    count = next(r for r in parse(bytes(buf)).regions
                 if r.kind == "kv_arr_count" and r.label == "tokenizer.ggml.token_type")
    struct.pack_into("<Q", buf, count.start, 2**32 + 1)
    model.write_bytes(bytes(buf))
    started = time.monotonic()
    with pytest.raises(BundleError, match="cannot fit"):
        open_bundle(bundle)
    assert time.monotonic() - started < 10


TRACE_DAMAGE = {
    "layer not a number": {"moe_layers": ["gguf"]},
    "meta a string": {"meta": "gguf"},
    "step not a list": {"steps": [{"0": 5}]},
    "layer key not ASCII digits": {"steps": [{"٣": [0]}]},
    "layer key of 5000 digits": {"steps": [{"1" * 5000: [0]}]},
    "absurd expert count": {"n_experts": 4666763413211058810},
    "bool expert count": {"n_experts": True},
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(TRACE_DAMAGE))
def test_trace_file_damage_is_a_trace_error(case, tmp_path):
    from runtime.routing_trace import RoutingTrace, TraceError, synthetic_trace

    doc = {**synthetic_trace(4, 8, (0, 1), 2).to_dict(), **TRACE_DAMAGE[case]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TraceError):
        RoutingTrace.load(path).summary()


@pytest.mark.unit
@pytest.mark.parametrize(
    "blob", [b'{"format": "\xff"}', b"[" * 100_000 + b"]" * 100_000, b'{"n": ' + b"9" * 5000 + b"}"]
)
def test_unreadable_json_is_a_domain_error(blob, tmp_path):
    from packager.usage import UsageProfile
    from runtime.routing_trace import RoutingTrace

    path = tmp_path / "f.json"
    path.write_bytes(blob)
    for load in (RoutingTrace.load, UsageProfile.load):
        with pytest.raises(EdgemoeError):
            load(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["counts"]["0"].__setitem__(0, float("nan")),  # int(nan) raised ValueError
        lambda d: d["counts"]["0"].__setitem__(0, 1e308),  # a count must be an integer
        lambda d: d["weight_sum"]["0"].__setitem__(0, float("inf")),
        lambda d: d.update(layers=[True]),  # a bool is not a layer index
    ],
)
def test_usage_numbers_are_checked(change, tmp_path):
    from packager.usage import UsageError, UsageProfile
    from tests.fuzz.seeds import synthetic_usage

    doc = synthetic_usage(4, 2, (0,), n_tokens=8)
    change(doc)
    path = tmp_path / "u.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError):
        UsageProfile.load(path)
