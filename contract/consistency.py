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
from contract.manifest import Manifest


def check_against_layout(manifest: Manifest, layout: GGUFLayout, path: Path) -> None:
    """Raise BundleError at the first disagreement between `manifest` and the GGUF's own table."""
    where = f"{path.parent / 'manifest.json'}"

    def bad(field: str, manifest_says: object, file_says: object) -> BundleError:
        return BundleError(
            f"{where}: field '{field}' is {manifest_says!r} but {path.name} says {file_says!r} "
            "(manifest and model file do not belong together; re-pack or re-download the bundle)"
        )

    shape = manifest.shape
    if shape.n_experts != layout.n_experts:
        raise bad("shape.n_experts", shape.n_experts, layout.n_experts)
    used = layout.metadata.get(f"{layout.arch}.expert_used_count")
    if used is not None and shape.top_k != int(used):
        raise bad("shape.top_k", shape.top_k, int(used))
    if manifest.dense_bytes != layout.dense_bytes:
        raise bad("dense_bytes", manifest.dense_bytes, layout.dense_bytes)
    dupes = [n for n, c in Counter(x.layer for x in manifest.expert_layers).items() if c > 1]
    if dupes:
        raise BundleError(f"{where}: field 'expert_layers' lists layer {dupes[0]} more than once")
    ours = {x.layer: x for x in manifest.expert_layers}
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
