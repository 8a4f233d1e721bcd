"""Harness preparation for GGUF cases: make the manifest agree with a damaged model file.

A careless or hostile re-pack produces exactly this: a GGUF with damage in it and a manifest
(sizes, hashes, sampled block hashes, expert offsets, counts) recomputed from it, so every
open-time comparison passes and the damage reaches llama.cpp. It runs in a forked child of the
worker like any step (reading the damaged file may fail or hang); its outcome is not scored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def step_sync(case: dict, stage: dict) -> None:
    """Harness preparation, not a check: make the manifest agree with a damaged model file
    (as a careless or hostile re-pack would) so the damage reaches llama.cpp."""
    from contract.gguf_layout import read_layout

    bundle = Path(case["dir"]) / "bundle"
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    model = bundle / d["model_file"]
    layout = read_layout(model)
    d["dense_bytes"] = layout.dense_bytes
    d["expert_layers"] = [
        {"layer": x.layer, "tensors": [
            {"name": t.name, "ggml_type": t.ggml_type, "offset": t.offset, "stride": t.stride}
            for t in x.tensors]}
        for x in layout.expert_layers
    ]
    shape = d["shape"]
    shape["n_experts"] = layout.n_experts
    shape["gguf_arch"] = layout.arch
    for field, key in (("top_k", "expert_used_count"), ("n_layers", "block_count"),
                       ("context_length", "context_length")):
        value = layout.metadata.get(f"{layout.arch}.{key}")
        if isinstance(value, int):
            shape[field] = value
    shape["moe_layers"] = [x.layer for x in layout.expert_layers]
    d["hot_experts"] = {
        str(x.layer): [e for e in d["hot_experts"].get(str(x.layer), []) if e < layout.n_experts]
        for x in layout.expert_layers
    }
    data = model.read_bytes()
    d["files"][d["model_file"]] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _resample_integrity(d, model)
    path.write_text(json.dumps(d, indent=1))
    stage["reached"] = "synced"


def _resample_integrity(d: dict, model: Path) -> None:
    """The sampled block hashes (manifest `integrity`) of the damaged file, as a re-pack would
    record them; dropped (a bundle from before the check) if they cannot be computed."""
    integrity = d.get("integrity")
    if not isinstance(integrity, dict) or model.name not in integrity:
        return
    try:
        from contract.integrity import gguf_regions, sample_file

        s = sample_file(model, gguf_regions(model))
        integrity[model.name] = {"scheme": s.scheme, "block_bytes": s.block_bytes,
                                 "blocks": {str(k): v for k, v in s.blocks.items()}}
    except Exception:  # noqa: BLE001 - any failure: fall back to "nothing recorded"
        del integrity[model.name]
