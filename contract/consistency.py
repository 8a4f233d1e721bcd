"""The manifest against the model file it describes: every number the runtime will trust.

The runtime hands the manifest's expert offsets and strides to madvise/fadvise and sizes its
cache from them, so a manifest that disagrees with the model file (damaged, hand-edited, or
from another build) must be refused when the bundle is opened, with one line naming the field,
what the file says and what the manifest says. Pure comparison of two plain records.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from contract.errors import BundleError
from contract.gguf_layout import GGUFLayout
from contract.manifest import Build, Manifest

# The longest trained context accepted (16 Mi tokens, above any released model); llama.cpp
# sizes some buffers by it, so a damaged value would be an allocation of gigabytes.
MAX_CONTEXT = 1 << 24
# llama.cpp's compile-time limits (llama-hparams.h); beyond them it aborts while loading.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024


def check_against_layout(
    manifest: Manifest, layout: GGUFLayout, path: Path, build: Build | None = None
) -> None:
    """Raise BundleError at the first disagreement between `manifest` (its GGUF build) and the
    GGUF's own table."""
    where = f"{path.parent / 'manifest.json'}"
    build = build or manifest.build("gguf")

    def bad(field: str, manifest_says: object, file_says: object) -> BundleError:
        return BundleError(
            f"{where}: field '{field}' is {manifest_says!r} but {path.name} says {file_says!r} "
            "(manifest and model file do not belong together; re-pack or re-download the bundle)"
        )

    shape = manifest.shape
    if shape.gguf_arch != layout.arch:
        raise bad("shape.gguf_arch", shape.gguf_arch, layout.arch)
    if shape.n_experts != layout.n_experts:
        raise bad("shape.n_experts", shape.n_experts, layout.n_experts)
    # Numbers llama.cpp sizes buffers from: they must be the ones the manifest was checked for.
    for field, key, ours in (
        ("shape.top_k", "expert_used_count", shape.top_k),
        ("shape.n_layers", "block_count", shape.n_layers),
        ("shape.context_length", "context_length", shape.context_length),
    ):
        theirs = _metadata_int(layout, f"{layout.arch}.{key}", path)
        if theirs is None and key == "expert_used_count":  # llama.cpp asserts it is > 0
            raise BundleError(f"{path}: header key '{layout.arch}.{key}' is missing")
        if theirs is not None and theirs != ours:
            raise bad(field, ours, theirs)
    nextn = _metadata_int(layout, f"{layout.arch}.nextn_predict_layers", path) or 0
    if not 0 <= nextn <= shape.n_layers:  # GGML_ASSERT(n_layer_nextn <= n_layer_all)
        raise BundleError(f"{path}: header key '{layout.arch}.nextn_predict_layers' is {nextn}, "
                          f"more than the {shape.n_layers} layers")
    # llama.cpp allocates per-token buffers of the trained context (e.g. when tokenizing), and
    # GGML_ASSERTs (aborts the process, no error to catch) on the other two limits.
    for field, value, limit in (("shape.context_length", shape.context_length, MAX_CONTEXT),
                                ("shape.n_layers", shape.n_layers, LLAMA_MAX_LAYERS),
                                ("shape.n_experts", shape.n_experts, LLAMA_MAX_EXPERTS)):
        if not 0 < value <= limit:
            raise BundleError(f"{where}: field '{field}' must be in 1..{limit}, got {value}")
    _check_expert_groups(layout, shape.n_experts, path)
    if build.dense_bytes != layout.dense_bytes:
        raise bad("dense_bytes", build.dense_bytes, layout.dense_bytes)
    dupes = [n for n, c in Counter(x.layer for x in build.expert_layers).items() if c > 1]
    if dupes:
        raise BundleError(f"{where}: field 'expert_layers' lists layer {dupes[0]} more than once")
    ours = {x.layer: x for x in build.expert_layers}
    theirs = {x.layer: x for x in layout.expert_layers}
    if sorted(ours) != sorted(theirs):
        raise bad("expert_layers[].layer", sorted(ours), sorted(theirs))
    if sorted(shape.moe_layers) != sorted(theirs):
        raise bad("shape.moe_layers", list(shape.moe_layers), sorted(theirs))
    for layer, mine in sorted(ours.items()):
        file_tensors = {t.name: t for t in theirs[layer].tensors}
        if sorted(t.name for t in mine.tensors) != sorted(file_tensors):
            raise bad(
                f"expert_layers[layer={layer}].tensors",
                sorted(t.name for t in mine.tensors),
                sorted(file_tensors),
            )
        for t in mine.tensors:
            f = file_tensors[t.name]
            for name in ("ggml_type", "offset", "stride"):
                if getattr(t, name) != getattr(f, name):
                    raise bad(f"{t.name}.{name}", getattr(t, name), getattr(f, name))
            check_range(t.name, t.offset, t.stride, shape.n_experts, layout, where)


def _check_expert_groups(layout: GGUFLayout, n_experts: int, path: Path) -> None:
    """Expert groups (DeepSeek-style group-limited routing), as llama.cpp asserts them."""
    groups = _metadata_int(layout, f"{layout.arch}.expert_group_count", path) or 0
    used = _metadata_int(layout, f"{layout.arch}.expert_group_used_count", path) or 0
    if groups and not (groups < n_experts and (groups == 1 or (
            n_experts % groups == 0 and 0 < used < groups))):
        raise BundleError(
            f"{path}: expert groups ({groups} groups, {used} used) do not divide "
            f"{n_experts} experts the way llama.cpp requires"
        )


def _metadata_int(layout: GGUFLayout, key: str, path: Path) -> int | None:
    """An integer GGUF header value, None when absent; any other type is a damaged file."""
    value = layout.metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BundleError(f"{path}: header key '{key}' must be an integer, got {value!r:.60}")
    return value


def check_range(
    name: str, offset: int, stride: int, n_experts: int, layout: GGUFLayout, where: str
) -> None:
    """Expert bytes must lie inside the file's data region: what madvise may be given."""
    end = offset + stride * n_experts
    if stride <= 0 or offset < layout.data_offset or end > layout.file_bytes:
        raise BundleError(
            f"{where}: {name}: experts at [{offset}, {end}) with stride {stride} fall outside "
            f"the data region [{layout.data_offset}, {layout.file_bytes}) of the model file"
        )
