"""The one registry of model families, keyed by the Hugging Face architecture strings they read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contract.files import read_json
from packager.errors import CheckpointError, UnsupportedArchitectureError
from packager.families.config import EXPERT_COUNT_KEYS
from packager.families.family import Family

_REGISTRY: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family available for its `hf_architectures`."""
    for arch in cls.hf_architectures:
        if arch in _REGISTRY:
            raise ValueError(f"{arch} is registered twice ({_REGISTRY[arch].__name__})")
        _REGISTRY[arch] = cls
    return cls


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def family_class(architecture: str) -> type[Family] | None:
    """The family registered for an HF architecture string (a manifest's), if any."""
    return _REGISTRY.get(architecture)


def is_moe_config(config: Mapping[str, Any]) -> bool:
    return any(_count(config.get(k)) > 1 for k in EXPERT_COUNT_KEYS)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def family_for(config: Mapping[str, Any]) -> Family:
    """The family of a checkpoint's config.json, its config read; or a one-line error."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else f"model_type={config.get('model_type', '?')}"
    if arch in _REGISTRY:
        return _REGISTRY[arch](config)
    if not is_moe_config(config):
        raise UnsupportedArchitectureError(
            f"{arch} is a dense (non-MoE) model: config.json has no expert count "
            f"({', '.join(EXPERT_COUNT_KEYS)}); edgemoe packs Mixture-of-Experts checkpoints only"
        )
    raise UnsupportedArchitectureError(
        f"architecture {arch} is not supported; supported: {', '.join(supported_architectures())}"
    )


def read_family(folder: Path) -> Family:
    """The family of a checkpoint folder, from its config.json alone (no weights opened)."""
    path = Path(folder) / "config.json"
    config = read_json(path, CheckpointError, "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: top level must be an object")
    return family_for(config)
