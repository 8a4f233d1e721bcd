"""Shared test fixtures (real checkpoints and bundles) and the rule that every test is marked.

Checkpoints come from `edgemoe_fixtures` and are cached across runs; bundles depend on the code
under test, so they are packed once per test session into a temporary folder.
Markers (pyproject.toml): `unit` for pure logic, `engine`, `reference`, `endpoint` for what a test
starts, plus `slow`. A test with none of the four fails collection, so `-m unit` cannot silently
skip a pure test again; a module's `unit` is a default that a test's own heavier marker overrides.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# The suite starts engines in this process and in server subprocesses at once, often beside
# other jobs: spinning at barriers (the product's default, as stock llama.cpp) would then burn
# the cores the other threads need, so the suite's engines wait passively, as a user who sets
# OMP_WAIT_POLICY would (runtime/threads.py; tests that check the default clear it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ARCH_FIXTURES = (
    "qwen3moe-tiny", "qwen2moe-tiny", "mixtral-tiny", "olmoe-tiny", "deepseek2-tiny",
    "deepseek3-tiny", "qwen35moe-tiny", "glm4moe-tiny", "lfm2moe-tiny", "ernie45moe-tiny",
    "deepseek4-tiny", "mimo2-tiny", "gptoss-tiny", "qwen3next-tiny", "granitehybrid-tiny",
    "llama4-tiny",
)
# Families whose `--format onnx` refuses (the exporter has no Mamba2 layer or compressed
# attention): each family's test file checks its refusal, the ONNX tests run over the others.
NO_ONNX = ("deepseek4-tiny",)
# Families packed as ONNX only (llama.cpp's graph computes another model; the GGUF refusal is
# tested in tests/packager/test_onnx_only_families.py).
ONNX_ONLY = ("phimoe-tiny",)
ONNX_FIXTURES = tuple(f for f in ARCH_FIXTURES if f not in NO_ONNX) + ONNX_ONLY
# Families pruning refuses (hash-routed layers send every token to fixed experts): the refusal
# is tested in tests/packager/test_deepseek4.py, pruning and distillation run over the others.
NO_PRUNE = ("deepseek4-tiny",)
PRUNE_FIXTURES = tuple(f for f in ARCH_FIXTURES if f not in NO_PRUNE)
NEEDS = ("unit", "engine", "reference", "endpoint")
HEAVY = ("engine", "reference", "endpoint")
# Fixtures that build checkpoints (torch) or pack bundles (llama.cpp): no unit test may use one.
HEAVY_FIXTURES = ("fixture_checkpoint", "bundle_factory", "tiny_bundle")


def _module_unit_is_a_default(items: list[pytest.Item]) -> None:
    """`pytestmark = pytest.mark.unit` covers a module's unmarked tests, not the ones that say
    they need an engine, torch or a server: pytest would give those both markers and `-m unit`
    would start engines. So the module's `unit` moves onto exactly the tests it describes."""
    by_module: dict[pytest.Module, list[pytest.Item]] = {}
    for item in items:
        module = item.getparent(pytest.Module)
        if module is not None:
            by_module.setdefault(module, []).append(item)
    for module, members in by_module.items():
        default = [m for m in module.own_markers if m.name == "unit"]
        if not default:
            continue
        module.own_markers[:] = [m for m in module.own_markers if m.name != "unit"]
        for item in members:
            if not any(item.get_closest_marker(name) for name in HEAVY):
                item.own_markers.extend(default)


def _heavy_fixtures(item: pytest.Item) -> list[str]:
    return [f for f in HEAVY_FIXTURES if f in getattr(item, "fixturenames", ())]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything, so nothing unmarked can hide
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail collection for a test that does not say what it needs, or a unit test that builds
    a checkpoint or packs a bundle."""
    _module_unit_is_a_default(items)
    unmarked = [i.nodeid for i in items if not any(i.get_closest_marker(n) for n in NEEDS)]
    heavy_units = [
        f"{i.nodeid} (uses {', '.join(_heavy_fixtures(i))})"
        for i in items
        if i.get_closest_marker("unit") and _heavy_fixtures(i)
    ]
    problems = []
    if unmarked:
        problems.append(
            f"{len(unmarked)} test(s) carry none of the markers {', '.join(NEEDS)}; add "
            "`pytestmark = pytest.mark.unit` (pure logic) or the marker of what the test needs:\n  "
            + "\n  ".join(unmarked)
        )
    if heavy_units:
        problems.append(
            "unit test(s) using a fixture that builds a checkpoint or packs a bundle; mark them "
            "`engine` or `reference`:\n  " + "\n  ".join(heavy_units)
        )
    if problems:
        raise pytest.UsageError("\n".join(problems))


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
