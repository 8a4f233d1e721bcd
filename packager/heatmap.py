"""Heat map of expert usage (layers x experts) as a PNG, drawn headless with matplotlib's Agg."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from packager.usage import UsageProfile


def usage_matrix(profile: UsageProfile) -> np.ndarray:
    """[n_layers, n_experts] selection frequency (each row sums to top_k)."""
    freq = profile.frequencies()
    return np.array([freq[layer] for layer in profile.layers], dtype=np.float64)


def write_heatmap(profile: UsageProfile, out_png: Path, title: str | None = None) -> Path:
    """Render and write atomically: a reader never sees a half-written PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on devices and CI; must precede pyplot
    import matplotlib.pyplot as plt

    data = usage_matrix(profile)
    n_layers, n_experts = data.shape
    fig, ax = plt.subplots(figsize=(min(4 + 0.25 * n_experts, 24), min(2 + 0.3 * n_layers, 16)))
    try:
        image = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0)
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_yticks(range(n_layers), [str(layer) for layer in profile.layers])
        if n_experts <= 64:
            ax.set_xticks(range(n_experts))
            ax.tick_params(axis="x", labelsize=6)
        uniform = profile.top_k / profile.n_experts
        fig.colorbar(image, ax=ax, label=f"chosen per token (uniform = {uniform:.3f})")
        ax.set_title(title or "expert usage")
        fig.text(0.01, 0.01, f"{profile.n_tokens} tokens, {profile.source}", fontsize=7)
        fig.tight_layout()
        return _save_atomic(fig, Path(out_png))
    finally:
        plt.close(fig)


def _save_atomic(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
