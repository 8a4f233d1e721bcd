"""Architecture adapters, registered by the Hugging Face architecture string they handle."""

from __future__ import annotations

from typing import Any

from packager.archs.base import ArchAdapter, MoEInfo, PlannedTensor
from packager.errors import UnsupportedArchitectureError

_REGISTRY: dict[str, type[ArchAdapter]] = {}
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def register(cls: type[ArchAdapter]) -> type[ArchAdapter]:
    """Class decorator: make an adapter available for its `hf_architectures`."""
    for arch in cls.hf_architectures:
        _REGISTRY[arch] = cls
    return cls


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def is_moe_config(config: dict[str, Any]) -> bool:
    return any(int(config.get(k) or 0) > 1 for k in _EXPERT_COUNT_KEYS)


def adapter_for(config: dict[str, Any]) -> ArchAdapter:
    """The adapter for a checkpoint's config.json, or a one-line error saying why not."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else f"model_type={config.get('model_type', '?')}"
    if arch in _REGISTRY:
        return _REGISTRY[arch](config)
    if not is_moe_config(config):
        raise UnsupportedArchitectureError(
            f"{arch} is a dense (non-MoE) model: config.json has no expert count "
            f"({', '.join(_EXPERT_COUNT_KEYS)}); edgemoe packs Mixture-of-Experts checkpoints only"
        )
    raise UnsupportedArchitectureError(
        f"architecture {arch} is not supported; supported: {', '.join(supported_architectures())}"
    )


# Import the adapters so their @register decorators run.
from packager.archs import deepseek2, mixtral, olmoe, qwen_moe  # noqa: E402,F401

__all__ = [
    "ArchAdapter",
    "MoEInfo",
    "PlannedTensor",
    "adapter_for",
    "is_moe_config",
    "register",
    "supported_architectures",
]
