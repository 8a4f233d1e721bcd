"""Multi-token-prediction (MTP / NextN) blocks stored after a checkpoint's main layers.

DeepSeek-V3 and GLM-4.5 publish their MTP blocks as extra decoder layers numbered from
`num_hidden_layers` on. edgemoe packs the main model only (llama.cpp runs it without them and
the runtime drafts with n-grams or a second bundle), so those layers are left out; a checkpoint
holding nothing but MTP weights, or more extra layers than its config declares, is refused.
"""

from __future__ import annotations

import re

from packager.errors import UnsupportedArchitectureError

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def main_layers(
    shapes: dict[str, tuple[int, ...]], n_layers: int, mtp_layers: int, mtp_key: str,
    architecture: str,
) -> dict[str, tuple[int, ...]]:
    """`shapes` without the MTP layers; refused when those are all it holds."""
    layer = {name: int(m.group(1)) for name in shapes if (m := _LAYER.match(name))}
    extra = sorted({i for i in layer.values() if i >= n_layers})
    if extra and extra[-1] >= n_layers + mtp_layers:
        raise UnsupportedArchitectureError(
            f"{architecture}: the checkpoint has layer {extra[-1]} but config.json "
            f"declares num_hidden_layers={n_layers} and {mtp_key}={mtp_layers}"
        )
    if not any(i < n_layers for i in layer.values()):
        raise UnsupportedArchitectureError(
            f"{architecture}: the checkpoint holds only multi-token-prediction "
            f"weights ({mtp_key}={mtp_layers}, layers {n_layers}+), not the "
            f"{n_layers} main layers edgemoe packs"
        )
    return {name: s for name, s in shapes.items() if layer.get(name, 0) < n_layers}
