"""Model families, one folder each, found through one registry keyed by HF architecture."""

from __future__ import annotations

# Importing each family's folder runs its @register.
from packager.families import (  # noqa: E402,F401,I001
    deepseek2,
    deepseek3,
    deepseek4,
    ernie45moe,
    glm4moe,
    gpt_oss,
    granitehybrid,
    lfm2moe,
    llama4,
    mimo2,
    mixtral,
    olmoe,
    phimoe,
    qwen3next,
    qwen35moe,
    qwen_moe,
)
from packager.families.config import EXPERT_COUNT_KEYS, ExpertLayout, ModelConfig
from packager.families.family import Family
from packager.families.registry import (
    family_class,
    family_for,
    is_moe_config,
    read_family,
    register,
    supported_architectures,
)

__all__ = [
    "EXPERT_COUNT_KEYS",
    "ExpertLayout",
    "Family",
    "ModelConfig",
    "family_class",
    "family_for",
    "is_moe_config",
    "read_family",
    "register",
    "supported_architectures",
]
