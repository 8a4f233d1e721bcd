"""`edgemoe bench`: parses, runs the typed benchmark API and prints its report."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from apps.cli.main import app


@pytest.mark.engine
def test_bench_json_reports_latency_targets_and_ceiling(tiny_bundle):
    r = CliRunner().invoke(app, ["bench", str(tiny_bundle), "--budget", "50%", "--threads", "1",
                                 "--max-tokens", "8", "--profile", "camera-arm-2gb", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["profile"] == "camera-arm-2gb" and d["tokens"] > 0
    assert d["threads"] == 1 and d["wait_policy"]  # what ran, as runtime/threads.py applied it
    assert d["ttft_ms"] > 0 and d["itl_ms_p50"] > 0 and d["itl_ms_p95"] >= d["itl_ms_p50"]
    assert (d["ttft_ms_target"], d["itl_ms_target"]) == (200.0, 50.0)
    assert d["ttft_ok"] == (d["ttft_ms"] <= 200.0)
    assert 0.0 <= d["hit_rate"] <= 1.0 and d["budget_fraction"] == 0.5
    assert d["peak_rss_lifetime"] >= d["peak_rss_generation"] > 0
    c = d["ceiling"]
    assert c["memory_gb_s"] > 0 and c["weight_bytes_per_token"] > 0
    assert c["memory_bound_tok_s"] == pytest.approx(c["memory_gb_s"] * 1e9
                                                    / c["weight_bytes_per_token"])


@pytest.mark.engine
def test_bench_text_says_whether_targets_hold(tiny_bundle):
    r = CliRunner().invoke(app, ["bench", str(tiny_bundle), "--threads", "1", "--max-tokens", "4"])
    assert r.exit_code == 0, r.output
    assert "time to first token" in r.output and "inter-token latency" in r.output
    assert "1 threads (wait policy " in r.output.splitlines()[0]
    assert "memory bandwidth" in r.output
    assert ("holds" in r.output) or ("MISSED" in r.output)


@pytest.mark.unit
def test_bench_of_a_missing_bundle_is_one_error_line(tmp_path):
    r = CliRunner().invoke(app, ["bench", str(tmp_path / "nope")])
    assert r.exit_code == 1
    assert r.output.strip().startswith("error:") and "Traceback" not in r.output
