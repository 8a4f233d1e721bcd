"""POST /admin/budget on a real server: the API key guards it like /admin/reload; a new budget is
applied (the coldest experts released), /metrics shows it and the change count; a budget below
the minimum is a 400 naming it; answers are the same tokens before and after."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.runtime.server.conftest import REPO, start_server

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]


def _ask(s, prompt="def main():"):
    r = httpx.post(f"{s.base_url}/v1/completions", headers=s.headers(), timeout=60, json={
        "prompt": prompt, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_admin_budget_changes_the_served_budget(bundle_factory, tmp_path):
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    s = start_server(bundle, tmp_path, "--budget", "60%", api_key="k3y")
    try:
        before = _ask(s)
        url = f"{s.base_url}/admin/budget"
        assert httpx.post(url, json={"budget": "20%"}, timeout=30).status_code == 401
        r = httpx.post(url, json={"budget": "20%"}, headers=s.headers(), timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "applied" and abs(body["budget_fraction"] - 0.2) < 1e-3
        m = s.metrics()
        assert m["edgemoe_expert_capacity_bytes"] == body["expert_capacity_bytes"]
        assert m["edgemoe_budget_changes_total"] == 1
        assert m["edgemoe_resident_expert_bytes"] <= body["expert_capacity_bytes"]
        assert _ask(s) == before
        bad = httpx.post(url, json={"budget": 1000}, headers=s.headers(), timeout=30)
        assert bad.status_code == 400 and "below the minimum" in bad.json()["error"]["message"]
        assert bad.json()["error"]["param"] == "budget"
        form = httpx.post(url, content="budget=20%", headers={
            **s.headers(), "Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
        assert form.status_code == 400
        assert httpx.post(url, json={"budjet": "20%"}, headers=s.headers(),
                          timeout=30).status_code == 400
    finally:
        s.stop()


def test_follow_pressure_serves_a_full_budget_that_can_shrink(bundle_factory, tmp_path):
    """--follow-pressure loads the model resizable, so even a full budget pages experts and a
    cut (the follower's or an operator's) applies."""
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    s = start_server(bundle, tmp_path, "--budget", "100%", "--follow-pressure",
                     "--pressure-floor", "20%")
    try:
        before = _ask(s)
        r = httpx.post(f"{s.base_url}/admin/budget", json={"budget": "30%"}, timeout=30)
        assert r.status_code == 200, r.text
        assert s.metrics()["edgemoe_expert_offloading"] == 1
        assert _ask(s) == before
    finally:
        s.stop()
    bad = subprocess.run(
        [sys.executable, "-m", "runtime.server", str(bundle), "--pressure-floor", "lots"],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode != 0 and "pressure_floor" in bad.stderr and "lots" in bad.stderr
    assert "Traceback" not in bad.stderr
