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
_COMPOSITES: dict[str, type[Family]] = {}  # vision+text architecture -> its text model's family


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family available for its `hf_architectures` (and the vision+text
    `composite_architectures` whose text model it is)."""
    for arch in (*cls.hf_architectures, *cls.composite_architectures):
        if arch in _REGISTRY or arch in _COMPOSITES:
            owner = _REGISTRY.get(arch) or _COMPOSITES[arch]
            raise ValueError(f"{arch} is registered twice ({owner.__name__})")
        (_REGISTRY if arch in cls.hf_architectures else _COMPOSITES)[arch] = cls
    return cls


def supported_architectures() -> list[str]:
    return sorted([*_REGISTRY, *_COMPOSITES])


def composite_text_architecture(config: Mapping[str, Any]) -> str | None:
    """The text model's architecture when `config` is a vision+text checkpoint a family packs
    the text model of; None otherwise."""
    archs = config.get("architectures") or []
    cls = _COMPOSITES.get(archs[0]) if archs else None
    return cls.hf_architectures[0] if cls is not None else None


def family_class(architecture: str) -> type[Family] | None:
    """The family registered for an HF architecture string (a manifest's), if any."""
    return _REGISTRY.get(architecture)


def is_moe_config(config: Mapping[str, Any]) -> bool:
    """An expert count under any of its names, at the top or in a composite's `text_config`."""
    text = config.get("text_config")
    inner = text if isinstance(text, Mapping) else {}
    return any(_count(c.get(k)) > 1 for c in (config, inner) for k in EXPERT_COUNT_KEYS)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def family_for(config: Mapping[str, Any]) -> Family:
    """The family of a checkpoint's config.json, its config read; or a one-line error."""
    if (text_arch := composite_text_architecture(config)) is not None:
        from packager.composite import text_config

        config = text_config(config, text_arch)
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
