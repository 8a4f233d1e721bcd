"""Shared test fixtures: real checkpoints (built once per machine) and real packed bundles.

Checkpoints come from `edgemoe_fixtures` and are cached across runs; bundles depend on the code
under test, so they are packed once per test session into a temporary folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ARCH_FIXTURES = ("qwen3moe-tiny", "qwen2moe-tiny", "mixtral-tiny", "olmoe-tiny", "deepseek2-tiny")


@pytest.fixture(scope="session")
def fixture_checkpoint() -> Callable[[str], Path]:
    """name -> checkpoint folder (built once per machine, then reused)."""
    from edgemoe_fixtures import cached_fixture

    return cached_fixture


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory, fixture_checkpoint) -> Callable[..., Path]:
    """(fixture name, quant, profile) -> a bundle packed once per session."""
    from packager.api import PackOptions, pack

    root = tmp_path_factory.mktemp("bundles")
    made: dict[tuple, Path] = {}

    def make(
        name: str,
        quant: str | None = "F16",
        profile: str = "laptop-16gb",
        reference: bool = False,
        **extra,
    ) -> Path:
        key = (name, quant, profile, reference, tuple(sorted(extra.items())))
        if key not in made:
            out = root / f"{name}-{quant}-{profile}-{len(made)}"
            pack(
                PackOptions(
                    src=str(fixture_checkpoint(name)),
                    out_dir=out,
                    profile=profile,
                    quant=quant,
                    reference=reference,
                    **extra,
                )
            )
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_bundle(bundle_factory) -> Path:
    """A small real bundle (Qwen3-MoE, F16) for runtime and server tests."""
    return bundle_factory("qwen3moe-tiny", "F16")
