"""`edgemoe run --draft`, `edgemoe serve --draft` / `python -m runtime.server --draft`: the same
speculative decoding the Python API runs, and its figures on /metrics."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import runtime
from apps.cli.main import app
from runtime.errors import EdgemoeError
from runtime.server.__main__ import parse_args as server_parse_args
from runtime.server.settings import settings_from_options
from tests.runtime.server.conftest import start_server

PROMPT = "def main():\n    "


@pytest.mark.unit
def test_server_takes_draft_options():
    _, settings = server_parse_args(["b", "--draft", "ngram", "--draft-tokens", "3"])
    assert settings.load.draft == "ngram" and settings.load.draft_tokens == 3
    _, default = server_parse_args(["b"])
    assert default.load.draft is None and default.load.draft_tokens == 4
    with pytest.raises(EdgemoeError, match="draft_tokens must be an integer in 1..32"):
        settings_from_options({"draft_tokens": 0})


@pytest.mark.engine
def test_run_with_a_draft_prints_the_plain_answer_and_the_draft_figures(tiny_bundle):
    r = CliRunner().invoke(app, ["run", str(tiny_bundle), "--prompt", PROMPT, "--max-tokens",
                                 "16", "--draft", "ngram", "--draft-tokens", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with runtime.load(tiny_bundle) as model:
        assert out["tokens"] == model.generate(PROMPT, max_tokens=16).tokens
    assert out["stats"]["draft_kind"] == "ngram" and out["stats"]["draft_tokens"] == 3


@pytest.mark.endpoint
def test_served_draft_answers_like_the_model_and_reports_on_metrics(bundle_factory, tmp_path):
    target = bundle_factory("qwen3moe-tiny", "F16")
    draft = bundle_factory("qwen3moe-tiny", "Q4_0")
    server = start_server(target, tmp_path, "--draft", str(draft), "--draft-tokens", "3",
                          "--budget", "50%")
    try:
        with server.http() as http:
            for _ in range(2):  # past the switch's first plain tokens
                r = http.post("/v1/completions", json={"model": server.model_id,
                                                       "prompt": PROMPT, "max_tokens": 24})
                assert r.status_code == 200, r.text
        served = r.json()["choices"][0]["text"]
        m = server.metrics()
    finally:
        server.stop()
    with runtime.load(target, n_ctx=512) as model:
        assert served == model.generate(PROMPT, max_tokens=24).text
    assert m["edgemoe_speculative_drafted_tokens_total"] > 0
    assert 0 < m["edgemoe_speculative_acceptance_rate"] <= 1
    assert m["edgemoe_speculation_active"] in (0, 1)
    assert m["edgemoe_draft_budget_bytes"] > 0
