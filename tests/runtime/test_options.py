"""One LoadOptions record: runtime.load, the CLI commands and the server take the same options,
with the same defaults, and refuse the same bad values before a model loads."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
import typer

import runtime
from apps.cli.main import app
from runtime.errors import EdgemoeError
from runtime.options import LOAD_OPTIONS, LoadOptions, load_options
from runtime.server.__main__ import build_parser
from runtime.server.settings import settings_from_options

pytestmark = pytest.mark.unit


def test_load_takes_every_option_as_a_typed_keyword_with_its_default():
    params = inspect.signature(runtime.load).parameters
    for f in fields(LoadOptions):
        assert f.name in params, f.name
        assert params[f.name].default == f.default, f.name
        assert params[f.name].annotation != inspect.Parameter.empty, f.name
    assert set(params) == {"bundle", "options", *(f.name for f in fields(LoadOptions))}


def _command_options(name: str) -> dict[str, object]:
    """--flag -> default of one `edgemoe` command, as click parses it."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {opt: p.default for p in command.params for opt in p.opts}


@pytest.mark.parametrize("command", ["run", "chat", "bench", "serve"])
def test_every_command_that_loads_a_bundle_offers_every_option_with_the_same_default(command):
    offered = _command_options(command)
    for o in LOAD_OPTIONS:
        assert o.flag in offered, (command, o.flag)
        assert offered[o.flag] == (False if o.switch else o.default), (command, o.flag)


def test_trace_offers_the_engine_options():
    offered = _command_options("trace")
    assert {"--threads", "--backend", "--wait-policy"} <= set(offered)


def test_the_server_module_parses_the_same_options_into_its_settings():
    args = build_parser().parse_args(
        ["b", "--budget", "25%", "--policy", "lru", "--cold", "--no-prefetch", "--threads", "2"])
    settings = settings_from_options(vars(args))
    assert settings.load == LoadOptions(budget="25%", policy="lru", cold=True, prefetch=False,
                                        threads=2)
    assert settings_from_options({}).load == LoadOptions()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"policy": "fifo"}, r"unknown cache policy 'fifo' \(known: lfu, lrfu, lru\)"),
        ({"threads": 0}, r"threads must be an integer >= 1 or None, got 0"),
        ({"backend": "tvm"}, r"unknown backend 'tvm' \(available: llama.cpp, onnx\)"),
        ({"budget": "lots"}, r"budget 'lots': expected a percentage"),
        ({"wait_policy": "nap"}, r"wait policy 'nap' is not known"),
        ({"draft_tokens": 99}, r"draft_tokens must be an integer in 1..32, got 99"),
        ({"flash_attn": "yes"}, r"flash_attn must be true, false or None, got 'yes'"),
    ],
)
def test_a_bad_option_is_one_line_naming_it_before_any_model_loads(values, message):
    with pytest.raises(EdgemoeError, match=message):
        load_options(values)
    with pytest.raises(EdgemoeError, match=message):
        runtime.load("no-such-bundle", **values)  # refused before the bundle is opened
