"""The `edgemoe` CLI: commands parse, call the typed API and report errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import runtime
from apps.cli import serve as serve_cli
from apps.cli.main import app
from runtime.server.__main__ import build_parser
from runtime.server.__main__ import parse_args as server_parse_args
from runtime.server.settings import OPTIONS, settings_from_options
from tests.runtime.server.conftest import REPO

EDGEMOE = [sys.executable, "-m", "apps.cli.main"]


def _edgemoe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEMOE, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def _serve_command() -> Any:
    """`edgemoe serve` as the command-line parser Typer builds (an app of that one command)."""
    alone = typer.Typer()
    alone.command()(serve_cli.serve)
    return typer.main.get_command(alone)


@pytest.mark.unit
def test_serve_and_module_server_share_one_option_table():
    """Both front-ends take every option of the table and parse it to the same settings."""
    argv = ["--host", "0.0.0.0", "--port", "9000", "--max-queue", "3", "--timeout", "7.5",
            "--cors-origin", "http://a", "--cors-origin", "http://b", "--n-ctx", "256",
            "--budget", "40%", "--shutdown-grace", "2", "--log-level", "warning", "--ui"]
    _, from_module = server_parse_args(["bundle", *argv])
    cmd = _serve_command()
    params = cmd.make_context("serve", ["bundle", *argv]).params
    params.pop("bundle")
    assert settings_from_options(params) == from_module
    assert from_module.cors_origins == ("http://a", "http://b")
    assert from_module.request_timeout_s == 7.5 and from_module.load.budget == "40%"
    assert from_module.ui and not server_parse_args(["bundle"])[1].ui  # a switch, off by default
    module_flags = {a.option_strings[0] for a in build_parser()._actions if a.option_strings}
    cli_flags = {p.opts[0] for p in cmd.params if p.opts[0].startswith("--")}
    assert {o.flag for o in OPTIONS} <= module_flags & cli_flags
    # With no options both give the table's defaults.
    assert settings_from_options(cmd.make_context("serve", ["b"]).params) == \
        server_parse_args(["b"])[1]


@pytest.mark.unit
def test_bad_server_setting_is_a_usage_error_in_both():
    r = _edgemoe("serve", "no-bundle", "--max-queue", "-1")
    assert r.returncode == 2 and "max_queue must be >= 0" in r.stderr
    with pytest.raises(SystemExit) as e:
        server_parse_args(["no-bundle", "--max-queue", "-1"])
    assert e.value.code == 2


@pytest.mark.unit
def test_errors_are_one_line_without_traceback(tmp_path):
    r = _edgemoe("run", str(tmp_path / "missing"), "--prompt", "hi")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.unit
def test_sampling_is_checked_before_loading(tmp_path):
    """Out-of-range sampling fails on the options, even before the bundle is opened."""
    r = _edgemoe("run", str(tmp_path / "missing"), "--prompt", "hi", "--temperature", "5")
    assert r.returncode == 1
    assert r.stderr.strip() == "error: temperature must be in [0, 2], got 5.0"


@pytest.mark.engine
def test_run_json_equals_the_python_api(tiny_bundle):
    prompt = "def main():"
    r = CliRunner().invoke(app, ["run", str(tiny_bundle), "--prompt", prompt,
                                 "--max-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with runtime.load(tiny_bundle) as model:
        direct = model.generate(prompt, max_tokens=8)
    assert out["tokens"] == direct.tokens and out["text"] == direct.text
    assert out["finish_reason"] == direct.finish_reason
    assert out["usage"]["completion_tokens"] == direct.usage.completion_tokens
    assert out["stats"]["budget_bytes"] > 0
