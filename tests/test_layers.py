"""The layering in pyproject.toml ([tool.importlinter]) holds, and a device needs no torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency (pip install -e '.[dev]')"
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.unit
def test_no_runtime_file_imports_packager() -> None:
    """Belt and braces next to import-linter: a plain text scan of runtime/ and contract/."""
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("runtime", "contract", "device_profiles")
        for p in (ROOT / folder).rglob("*.py")
        if "import packager" in (text := p.read_text()) or "from packager" in text
    ]
    assert offenders == []


# Makes torch, transformers and safetensors unimportable, as on a device install.
_BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "safetensors"}:
            raise ImportError(f"{name} is not installed on this device")
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.engine
def test_device_loads_verifies_and_runs_a_bundle_without_torch(tiny_bundle: Path) -> None:
    code = "import sys\n" + _BLOCKER + textwrap.dedent(
        f"""
        import runtime
        from contract.verify import verify_bundle
        report = verify_bundle({str(tiny_bundle)!r})
        assert report.ok, report.problems
        with runtime.load({str(tiny_bundle)!r}, budget="50%", verify=True) as model:
            r = model.generate("def main():", max_tokens=8)
        assert r.usage.completion_tokens > 0
        for mod in ("torch", "transformers", "safetensors"):
            assert mod not in sys.modules, mod
        print("ok", r.usage.completion_tokens)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok ")
