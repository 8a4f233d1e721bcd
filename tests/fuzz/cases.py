"""One fuzz case per (kind, draw): write the mutated files, say which entry points run on them.

Kinds: `manifest` (manifest.json of a real bundle, plus files missing or replaced), `gguf`
(model.gguf, with the manifest's recorded size, or everything the open-time checks compare,
brought in line so the damage gets past them), `profile` (device-profile TOML), `trace`
(routing-trace JSON) and `usage` (usage-profile JSON).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz.draw import Draw
from tests.fuzz.gguf_mutate import mutate_gguf
from tests.fuzz.seeds import Seeds, synthetic_usage
from tests.fuzz.trees import (
    Raw,
    damage_text,
    get_at,
    mutate_tree,
    set_at,
    to_json,
    to_toml,
    tweak_int,
)

KINDS = ("manifest", "gguf", "profile", "trace", "usage")
BUNDLE_STEPS = ("api", "cli:inspect", "cli:verify", "cli:run")


@dataclass
class Case:
    kind: str
    index: int
    description: str
    spec: dict[str, Any] = field(default_factory=dict)  # what tests.fuzz.worker runs


def _copy_bundle(seeds: Seeds, case_dir: Path) -> Path:
    out = case_dir / "bundle"
    shutil.copytree(seeds.bundle, out)
    return out


# --- manifest --------------------------------------------------------------------------------
# Fields whose values the runtime trusts (offsets go to madvise, counts size caches): hit them
# with well-typed wrong values so the damage gets past the schema to the deeper checks.
_TARGETS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("shape", "n_experts"), "int"), (("shape", "top_k"), "int"), (("shape", "n_layers"), "int"),
    (("shape", "context_length"), "int"), (("shape", "vocab_size"), "int"),
    (("shape", "moe_layers"), "ints"), (("dense_bytes",), "int"),
    (("expert_layers", "*", "tensors", "*", "offset"), "int"),
    (("expert_layers", "*", "tensors", "*", "stride"), "int"),
    (("expert_layers", "*", "tensors", "*", "ggml_type"), "quant"),
    (("expert_layers", "*", "tensors", "*", "name"), "tensor"),
    (("expert_layers", "*", "layer"), "int"), (("hot_experts", "*"), "ints"),
    (("hot_experts",), "layer_keys"), (("files", "*", "bytes"), "int"),
    (("model_file",), "file"), (("format",), "format"), (("quant",), "quant"),
    (("profile", "context_length"), "int"), (("profile", "threads"), "int"),
    (("profile", "model_memory_bytes"), "int"), (("profile", "kv_cache_type"), "kv"),
    (("tokenizer", "eos_token_id"), "int"), (("tokenizer", "files"), "files"),
    (("chat_template",), "template"), (("builds",), "builds"),
)  # fmt: skip
_POOLS: dict[str, tuple[Any, ...]] = {
    "quant": ("F16", "F32", "BF16", "Q8_0", "Q4_K_M", "IQ1_S", "Q9_Z", "f16", "", "TQ1_0"),
    "tensor": ("blk.0.ffn_gate_inp.weight", "token_embd.weight", "blk.9.ffn_up_exps.weight",
               "blk.0.ffn_gate_up_exps.weight", "blk.1.ffn_down_exps.weight", ""),
    "file": ("../model.gguf", "/etc/passwd", "tokenizer.json", "manifest.json", "missing.gguf",
             "./model.gguf", "model.gguf/", "MODEL.GGUF", "model.gguf\x00.txt", "", ".", "/"),
    "format": ("onnx", "GGUF", "", "safetensors", "gguf "),
    "kv": ("q8_0", "q4_0", "f32", "bf16", "iq4_nl", "q5_1", "F16", "xyz"),
    "files": ([], ["../../etc/passwd"], ["missing.json"], ["tokenizer.json"] * 3, ["/dev/zero"]),
    "template": ("{{ raise_exception('x') }}", "{% for m in messages %}", "{{ x.y.z }}", "",
                 "{% for i in range(99999999) %}x{% endfor %}", "{{ 1/0 }}", "{{ 'x' * 10**9 }}",
                 "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
                 "{{ messages[0].content.__class__.__mro__ }}", "{{ messages[99] }}"),
}  # fmt: skip


def _resolve(doc: Any, pattern: tuple[str, ...], draw: Draw) -> tuple[Any, ...] | None:
    path: list[Any] = []
    node = doc
    for part in pattern:
        if part == "*":
            if not isinstance(node, dict | list) or not node:
                return None  # an earlier mutation already replaced this container
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            part = draw.choice(keys)
        elif not isinstance(node, dict) or part not in node:
            return None
        path.append(part)
        node = node[part]
    return tuple(path)


def targeted_mutation(doc: dict, draw: Draw) -> str:
    """Give one field the runtime trusts a well-typed wrong value; returns what was done."""
    try:
        return _targeted(doc, draw)
    except (TypeError, KeyError, IndexError, AttributeError):
        return "target unusable (an earlier mutation changed its container)"


def _targeted(doc: dict, draw: Draw) -> str:
    pattern, pool = draw.choice(_TARGETS)
    path = _resolve(doc, pattern, draw)
    if path is None:
        return "target missing"
    old = get_at(doc, path)
    where = ".".join(str(p) for p in path)
    if pool == "int":
        new: Any = tweak_int(old if isinstance(old, int) else 1, draw)
    elif pool == "ints":
        new = draw.choice([[], [0, 0], [-1], [2**31], list(range(64)), [7, 3], [99]])
    elif pool == "layer_keys":
        key = draw.choice(["99", "-1", "٣", " 1", "1.0", "0x1", "", "1" * 5000])
        old[key] = [0]
        return f"hot_experts[{key[:20]!r}] = [0]"
    elif pool == "builds":  # a second build claiming another engine's format for the same file
        build = {k: copy.deepcopy(doc.get(k)) for k in
                 ("model_file", "quant", "dense_bytes", "expert_layers", "data_file")}
        build["format"] = draw.choice(["onnx", "gguf", "tflite"])
        if draw.chance(0.5):
            build["data_file"] = draw.choice(["model.gguf", "tokenizer.json", "missing.data"])
        new = [build] * draw.choice([1, 1, 2])
    elif pool == "file":
        new = draw.choice(_POOLS["file"])
        doc["files"][new] = copy.deepcopy(doc["files"].get(old) or {"sha256": "0", "bytes": 1})
    else:
        new = copy.deepcopy(draw.choice(_POOLS[pool]))
    set_at(doc, path, new)
    return f"{where} = {str(new)[:60]!r} (was {str(old)[:40]!r})"


def _bundle_files(bundle: Path, draw: Draw) -> str:
    """Damage to the bundle's files rather than their contents."""
    victim = bundle / draw.choice(["manifest.json", "model.gguf", "tokenizer.json",
                                   "tokenizer_config.json"])
    op = draw.integer(0, 4)
    victim.unlink()
    if op == 0:
        return f"{victim.name} deleted"
    if op == 1:
        victim.mkdir()
        return f"{victim.name} is a directory"
    if op == 2:
        victim.symlink_to(victim.name)
        return f"{victim.name} is a symlink loop"
    if op == 3:
        victim.write_bytes(b"")
        return f"{victim.name} is empty"
    os.mkfifo(victim)
    return f"{victim.name} is a FIFO"


def manifest_case(case: Case, draw: Draw, seeds: Seeds, case_dir: Path) -> None:
    bundle = _copy_bundle(seeds, case_dir)
    case.spec.update(steps=list(BUNDLE_STEPS))
    if draw.chance(0.05):
        case.description = _bundle_files(bundle, draw)
        return
    doc: Any = copy.deepcopy(seeds.manifest)
    what = []
    for _ in range(draw.choice([1, 1, 1, 2, 3])):
        if isinstance(doc, dict) and draw.chance(0.4):
            what.append(targeted_mutation(doc, draw))
        else:
            doc, done = mutate_tree(doc, draw)
            what.append(done)
    data = to_json(doc).encode("utf-8", "surrogatepass")
    if draw.chance(0.15):
        data, done = damage_text(data, draw)
        what.append(done)
    (bundle / "manifest.json").write_bytes(data)
    case.description = "; ".join(what)


# --- gguf ------------------------------------------------------------------------------------
def gguf_case(case: Case, draw: Draw, seeds: Seeds, case_dir: Path) -> None:
    bundle = _copy_bundle(seeds, case_dir)
    data, what = mutate_gguf(seeds.gguf, seeds.gguf_model, draw)
    model = bundle / seeds.manifest["model_file"]
    model.write_bytes(data)
    sync = draw.choice(["none", "size", "size", "full", "full", "full"])
    if sync != "none":  # the size check would stop everything before the GGUF is read
        manifest = copy.deepcopy(seeds.manifest)
        manifest["files"][manifest["model_file"]]["bytes"] = len(data)
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))
    steps = ["sync"] if sync == "full" else []
    case.spec.update(steps=[*steps, "api", "cli:verify", "cli:run"])
    case.description = f"{what} [manifest sync: {sync}]"


# --- device profile, trace, usage ------------------------------------------------------------
def _mutated_document(doc: Any, draw: Draw, toml: bool) -> tuple[bytes, str]:
    what = []
    for _ in range(draw.choice([1, 1, 2, 3])):
        doc, done = mutate_tree(doc, draw, toml=toml)
        what.append(done)
    text = to_toml(doc) if toml else to_json(doc)
    data = text.encode("utf-8", "surrogatepass")
    if draw.chance(0.2):
        data, done = damage_text(data, draw)
        what.append(done)
    return data, "; ".join(what)


# Values at the edges of what a profile may say: valid, so they travel on to the renderer and
# into a manifest's snapshot instead of stopping at the schema.
_PROFILE_EDGES: tuple[tuple[str, Any], ...] = (
    ("context_length", 64), ("context_length", 2**20), ("threads", 1), ("threads", 1024),
    ("model_memory", "1MiB"), ("model_memory", "1023TiB"), ("model_memory", 2**62),
    ("model_memory", "0.5 GiB"), ("storage_read_mb_s", 1e-300), ("storage_read_mb_s", 1e300),
    ("memory_bandwidth_gb_s", 5e-324), ("memory_bandwidth_gb_s", 1e308),
    ("compute_gflops", 1e-300), ("compute_gflops", 1e308), ("compute_gflops", None),
    ("isa", []), ("formats", ["onnx"]), ("formats", ["onnx", "gguf"]), ("notes", {}),
    ("description", "x" * 100_000), ("description", "\u202e\x00\U0001f600"), ("class", "other"),
    ("kv_cache_type", "q4_0"), ("kv_cache_type", "F32"), ("name", "a" * 10_000),
)  # fmt: skip


def _profile_edges(table: dict[str, Any], draw: Draw) -> str:
    what = []
    for _ in range(draw.integer(1, 3)):
        key, value = draw.choice(_PROFILE_EDGES)
        if value is None:
            table.pop(key, None)
            table.get("notes", {}).pop(key, None)
        else:
            table[key] = copy.deepcopy(value)
        what.append(f"{key} = {str(value)[:30]!r}")
    if draw.chance(0.3):
        table["quant_preferences"] = ["F32"]
        table["default_quant"] = "F32"
        what.append("quant F32 only")
    return "; ".join(what) + " (valid edges)"


# Well-typed hostile values per field of a profile file (sizes are strings or integers there).
_PROFILE_HOSTILE: dict[str, tuple[Any, ...]] = {
    "model_memory": ("9" * 400 + "GiB", "1" * 30 + "TiB", "0", 0, -1, 2**64, "1.5.5GB", "GiB"),
    "context_length": (0, 63, 2**20 + 1, 2**63 - 1, -(2**63)),
    "threads": (0, 1025, -1, 2**63 - 1),
    "storage_read_mb_s": (0, -1.0, Raw("nan"), Raw("inf"), 0.0),
    "compute_gflops": (0, Raw("nan"), Raw("-inf"), -1e-300),
    "isa": (["avx2", "avx2"], ["x87"], [""], "avx2"),
    "quant_preferences": ([], ["Q4_K_M", "Q4_K_M"], ["q4_k_m"], ["Q9_Z"]),
    "default_quant": ("Q9_Z", "", "q4_k_m", "F16 "),
    "kv_cache_type": ("", "q4_k", "F16\x00"),
    "notes": ({"notes": "x"}, {"nonsense": "x"}, {"threads": ""}),
}


def profile_case(case: Case, draw: Draw, seeds: Seeds, case_dir: Path) -> None:
    name, text = draw.choice(seeds.profiles)
    if draw.chance(0.3):
        table = tomllib.loads(text)
        what = _profile_edges(table, draw)
        data = to_toml(table).encode("utf-8", "surrogatepass")
    elif draw.chance(0.3):
        table = tomllib.loads(text)
        key = draw.choice(sorted(_PROFILE_HOSTILE))
        table[key] = copy.deepcopy(draw.choice(_PROFILE_HOSTILE[key]))
        what = f"{key} = {str(table[key])[:40]!r}"
        data = to_toml(table).encode("utf-8", "surrogatepass")
    else:
        data, what = _mutated_document(tomllib.loads(text), draw, toml=True)
    (case_dir / name).write_bytes(data)
    case.spec.update(input=name, steps=["profile", "cli:profiles-show"])
    case.description = f"{name}: {what}"


def _layers(draw: Draw) -> list[int]:
    return sorted({draw.integer(0, 5) for _ in range(draw.integer(1, 4))})


def _valid_trace(draw: Draw) -> tuple[dict[str, Any], str]:
    """A well-formed trace of another shape than the bundle's (what replay may be handed)."""
    from runtime.experts.routing_trace import synthetic_trace

    n_experts = draw.choice([1, 2, 7, 8, 9, 64, 4096])
    layers = [] if draw.chance(0.1) else _layers(draw)
    top_k = draw.integer(1, min(n_experts, 8))
    n_steps = draw.choice([0, 1, 5, 40])
    doc = synthetic_trace(n_steps, n_experts, layers, top_k, seed=draw.integer(0, 999)).to_dict()
    return doc, f"valid trace: {n_steps} steps, {n_experts} experts, top-{top_k}, layers {layers}"


def trace_case(case: Case, draw: Draw, seeds: Seeds, case_dir: Path) -> None:
    if draw.chance(0.35):
        doc, what = _valid_trace(draw)
        if draw.chance(0.3):
            doc, done = mutate_tree(doc, draw)
            what += f"; {done}"
        data = to_json(doc).encode("utf-8", "surrogatepass")
    else:
        data, what = _mutated_document(copy.deepcopy(seeds.trace), draw, toml=False)
    (case_dir / "trace.json").write_bytes(data)
    case.spec.update(input="trace.json", steps=["trace"], replay_bundle=str(seeds.bundle))
    case.description = what


def usage_case(case: Case, draw: Draw, seeds: Seeds, case_dir: Path) -> None:
    if draw.chance(0.35):  # well-formed, another shape: reaches the views and the planner
        n_experts = draw.choice([1, 2, 8, 9, 33])
        top_k = draw.integer(1, min(n_experts, 4))
        layers, n_tokens = tuple(_layers(draw)), draw.choice([0, 1, 7])
        doc = synthetic_usage(n_experts, top_k, layers, n_tokens, seed=draw.integer(0, 999))
        what = f"valid usage: {n_experts} experts, top-{top_k}, layers {layers}, {n_tokens} tokens"
        data = to_json(doc).encode()
    else:
        data, what = _mutated_document(copy.deepcopy(seeds.usage), draw, toml=False)
    (case_dir / "usage.json").write_bytes(data)
    case.spec.update(input="usage.json", steps=["usage", "usage:planner"])
    case.description = what


BUILDERS: dict[str, Callable[[Case, Draw, Seeds, Path], None]] = {
    "manifest": manifest_case, "gguf": gguf_case, "profile": profile_case,
    "trace": trace_case, "usage": usage_case,
}


def build_case(kind: str, index: int, draw: Draw, seeds: Seeds, case_dir: Path) -> Case:
    """Write case `index` of `kind` into `case_dir` (created empty) and describe it."""
    case_dir.mkdir(parents=True)
    case = Case(kind, index, "")
    BUILDERS[kind](case, draw, seeds, case_dir)
    case.spec.update(kind=kind, index=index, dir=str(case_dir))
    return case
