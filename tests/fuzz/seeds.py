"""The pristine inputs every mutation starts from: a real bundle and real files of each kind.

Mutating real files (rather than generating from nothing) keeps most cases one step away from
valid, so they get past the first parser and reach the checks and the engine behind it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fuzz.gguf_model import GGUFModel, parse

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Seeds:
    bundle: Path
    manifest: dict[str, Any]
    gguf: bytes
    gguf_model: GGUFModel
    profiles: tuple[tuple[str, str], ...]  # (file name, TOML text) of the built-in profiles
    trace: dict[str, Any]
    usage: dict[str, Any]


def synthetic_usage(n_experts: int, top_k: int, layers: tuple[int, ...], n_tokens: int = 64,
                    seed: int = 0) -> dict[str, Any]:
    """A usage profile that satisfies every invariant, built by the real accumulator."""
    import numpy as np

    from packager.usage import from_routing

    rng = np.random.default_rng(seed)
    ids, probs = {}, {}
    for layer in layers:
        logits = rng.normal(size=(n_tokens, n_experts)) * 2
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        probs[layer] = p
        ids[layer] = np.argsort(-p, axis=1)[:, :top_k]
    return from_routing(ids, probs, source="llama.cpp", text_sha256="0" * 64).to_dict()


def load_seeds(bundle: Path) -> Seeds:
    from runtime.experts.routing_trace import synthetic_trace

    manifest = json.loads((bundle / "manifest.json").read_text())
    gguf = (bundle / manifest["model_file"]).read_bytes()
    shape = manifest["shape"]
    layers = tuple(shape["moe_layers"])
    trace = synthetic_trace(40, shape["n_experts"], layers, shape["top_k"], seed=0).to_dict()
    profiles = tuple(
        (p.name, p.read_text(encoding="utf-8"))
        for p in sorted((ROOT / "device_profiles").glob("*.toml"))
    )
    return Seeds(
        bundle=bundle,
        manifest=manifest,
        gguf=gguf,
        gguf_model=parse(gguf),
        profiles=profiles,
        trace=trace,
        usage=synthetic_usage(shape["n_experts"], shape["top_k"], layers),
    )
