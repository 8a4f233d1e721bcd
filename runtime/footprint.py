"""A bundle's footprint as the budget sees it: context, KV type, the budget's inputs, the
recurrent-state snapshots speculation keeps, and the smallest budget `load` accepts.

Read from an opened bundle before any engine starts, so `minimum_budget` and `load` (and a
loaded model changing its budget) plan from the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.quant_types import kv_bytes_per_element
from runtime.backends.registry import format_for
from runtime.bundles.open import OpenBundle, attention_shape, open_bundle
from runtime.recurrent import recurrent_shape, speculation_refusal
from runtime.speculative.draft_budget import minimum_total
from runtime.speculative.drafting import NGRAM
from runtime.speculative.switch import DEFAULT_DRAFT_TOKENS

DEFAULT_CTX = 2048


def profile_value(bundle: OpenBundle, key: str, default: Any) -> Any:
    """The device profile's `key`, or `default` where the profile leaves it unset (None/0)."""
    value = getattr(bundle.manifest.profile, key)
    return default if value in (None, 0) else value


def context(opened: OpenBundle, n_ctx: int | None) -> int:
    """The context window: asked for, else the profile's, never past the model's own."""
    m = opened.manifest
    return int(
        n_ctx or min(profile_value(opened, "context_length", DEFAULT_CTX), m.shape.context_length)
    )


def kv_cache_type(opened: OpenBundle) -> str:
    return str(profile_value(opened, "kv_cache_type", "f16"))


def budget_inputs(opened: OpenBundle, n_ctx: int, snapshots: int = 0) -> dict[str, int]:
    """The budget's parts; "kv_bytes" holds the KV cache and any recurrent state (with
    `snapshots` rollback copies of it: runtime/recurrent.py)."""
    m, build = opened.manifest, opened.build
    per_layer = sum(x.expert_bytes for x in build.expert_layers)
    # llama.cpp stores the KV cache in the profile's type; the ONNX graph in its float type.
    kv_type = kv_cache_type(opened) if build.format == "gguf" else "f32"
    per_value = kv_bytes_per_element(kv_type)
    recurrent = recurrent_shape(opened.model_path)
    state = recurrent.state_bytes(snapshots) if recurrent is not None else 0
    return {
        "dense_bytes": build.dense_bytes,
        "kv_bytes": attention_shape(opened.model_path).kv_bytes(n_ctx, per_value) + state,
        "expert_bytes_total": opened.expert_bytes_total,
        "one_token_expert_bytes": m.shape.top_k * per_layer,
    }


def minimum_budget(
    bundle: str | Path,
    n_ctx: int | None = None,
    backend: str | None = None,
    draft: str | Path | None = None,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
) -> int:
    """The smallest budget `load` accepts: dense weights + KV cache (and recurrent state) + one
    token's experts; with a draft bundle, both models' at one expert fraction
    (runtime/speculative/draft_budget.py)."""
    opened = open_bundle(bundle, fmt=format_for(backend))
    n_ctx = context(opened, n_ctx)
    draft_opened = None if draft is None or str(draft) == NGRAM else \
        open_bundle(draft, fmt=format_for(backend))
    snapshots = rollback_snapshots(opened, draft, draft_opened, draft_tokens)[0]
    b = budget_inputs(opened, n_ctx, snapshots)
    if draft_opened is not None:
        return minimum_total(b, budget_inputs(draft_opened, n_ctx))
    return b["dense_bytes"] + b["kv_bytes"] + b["one_token_expert_bytes"]


def rollback_snapshots(opened: OpenBundle, draft: str | Path | None,
                       draft_opened: OpenBundle | None, k: int) -> tuple[int, str | None]:
    """(recurrent-state snapshots the target's context keeps, why drafting is off or None).

    A recurrent target that speculates keeps k snapshots so a verify batch of k drafts can be
    rolled back (runtime/recurrent.py); a pair that cannot roll back does not speculate."""
    if draft is None:
        return 0, None
    target = recurrent_shape(opened.model_path)
    other = recurrent_shape(draft_opened.model_path) if draft_opened is not None else None
    off = speculation_refusal(target, other, draft_opened is not None)
    if off is not None:
        return 0, off
    return (k if target is not None else 0), None
