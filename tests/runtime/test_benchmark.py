"""The latency recorder and benchmark helpers: histograms, percentiles, /metrics export."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from runtime.benchmark import io_read_bytes, memory_bandwidth_gb_s
from runtime.generation.latency import BUCKETS, LatencyRecorder
from runtime.server.metrics import _latency

pytestmark = pytest.mark.unit


def _recorder() -> LatencyRecorder:
    r = LatencyRecorder()
    r.step(40, True, 10.0)  # a prompt
    for i, t in enumerate((10.2, 10.21, 10.23, 10.26)):  # first token, then three gaps
        r.step(1, False, t)
        assert r.ttft.count == 1 and r.itl.count == i
    r.step(1, True, 20.0)  # a new context: its first step is a prompt again
    r.step(1, False, 20.5)
    return r


def test_ttft_and_inter_token_latency_per_generation():
    r = _recorder()
    s = r.stats()
    assert s["ttft_ms_p50"] == pytest.approx(200.0) and r.ttft.count == 2
    assert s["itl_ms_p50"] == pytest.approx(20.0) and r.itl.count == 3
    assert s["itl_ms_p95"] == pytest.approx(30.0)
    json.dumps(s)  # JSON-safe: +Inf is written as a string


def test_histogram_buckets_are_cumulative():
    h = _recorder().stats()["latency_histograms"]["inter_token_seconds"]
    assert [b for b, _ in h["buckets"]] == [*BUCKETS, "+Inf"]
    counts = [n for _, n in h["buckets"]]
    assert counts == sorted(counts) and counts[-1] == h["count"] == 3
    assert h["sum"] == pytest.approx(0.06)


def test_metrics_export_prometheus_histograms():
    class Collector:
        def collect(self):
            yield from _latency(_recorder().stats()["latency_histograms"])

    reg = CollectorRegistry()
    reg.register(Collector())
    text = generate_latest(reg).decode()
    assert "# TYPE edgemoe_inter_token_seconds histogram" in text
    assert 'edgemoe_inter_token_seconds_bucket{le="+Inf"} 3.0' in text
    assert "edgemoe_ttft_seconds_count 2.0" in text


def test_empty_recorder_reports_nothing():
    s = LatencyRecorder().stats()
    assert s["itl_ms_p50"] is None and s["ttft_ms_p95"] is None
    families = list(_latency(s["latency_histograms"]))  # exported from the start, empty
    assert len(families) == 2 and all(
        sample.value == 0 for f in families for sample in f.samples)


def test_machine_measurements_are_positive():
    assert memory_bandwidth_gb_s(8 * 2**20, repeats=2) > 0
    assert io_read_bytes() is None or io_read_bytes() >= 0


def test_engine_threads_respect_the_profile_cores(monkeypatch):
    from runtime import threads

    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert threads.engine_threads(None, 4, None) == 4
    assert threads.engine_threads(None, 4, 3) == 3  # cores: the model's share of the CPU
    assert threads.engine_threads(None, 16, None) == 8  # never more than this process may use
    assert threads.engine_threads(6, 4, 2) == 6  # an explicit request wins



def test_a_prompt_breakdown_is_completed_by_the_first_token():
    from runtime.generation.latency import PromptTiming

    r = LatencyRecorder()
    timing = PromptTiming(tokens=40, step_ms=150.0, graph_ms=1.0, experts_ms=40.0,
                          verify_ms=5.0, expert_bytes=10, dense_pending_bytes=0)
    r.step(40, True, 10.0, timing)
    r.step(1, False, 10.2)  # the first one-token step starts 200 ms after the prompt's
    b = r.stats()["ttft_breakdown"]
    assert b["ttft_ms"] == pytest.approx(200.0) and b["first_sample_ms"] == pytest.approx(50.0)
    assert b["compute_ms"] == pytest.approx(109.0)  # step - graph - experts
    r.step(1, False, 10.3)
    assert r.stats()["ttft_breakdown"]["ttft_ms"] == pytest.approx(200.0)  # the first's only
