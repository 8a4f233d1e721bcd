"""The OpenAI-compatible endpoints through the official `openai` client, against a real server.

Greedy answers over HTTP must equal what `Model.generate` / `Model.chat` give in-process.
"""

from __future__ import annotations

import httpx
import pytest

from tests.runtime.server.conftest import N_CTX, RunningServer

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]

PROMPT = "The capital of France is"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
]


def test_health_and_openapi(server: RunningServer) -> None:
    r = httpx.get(f"{server.base_url}/health", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model": server.model_id}
    spec = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics"):
        assert path in spec["paths"]


def test_models(server: RunningServer, direct_model) -> None:
    client = server.openai()
    models = client.models.list()
    assert [m.id for m in models.data] == [direct_model.name]
    card = client.models.retrieve(direct_model.name)
    assert card.id == direct_model.name and card.object == "model"
    assert card.model_extra.get("context_length") == N_CTX


def test_completion_greedy_matches_python_api(server: RunningServer, direct_model) -> None:
    direct = direct_model.generate(PROMPT, max_tokens=16, temperature=0.0)
    out = server.openai().completions.create(
        model=server.model_id, prompt=PROMPT, max_tokens=16, temperature=0
    )
    assert out.object == "text_completion"
    assert out.model == server.model_id
    assert len(out.choices) == 1
    assert out.choices[0].text == direct.text
    assert out.choices[0].finish_reason == direct.finish_reason
    assert out.usage.prompt_tokens == direct.usage.prompt_tokens
    assert out.usage.completion_tokens == direct.usage.completion_tokens
    assert out.usage.total_tokens == direct.usage.prompt_tokens + direct.usage.completion_tokens


def test_completion_stream_matches(server: RunningServer, direct_model) -> None:
    direct = direct_model.generate(PROMPT, max_tokens=12, temperature=0.0)
    stream = server.openai().completions.create(
        model=server.model_id, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    texts, finish, usage = [], None, None
    for chunk in stream:
        assert chunk.object == "text_completion"
        if chunk.choices:
            texts.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(texts) == direct.text
    assert finish == direct.finish_reason
    assert usage is not None and usage.completion_tokens == direct.usage.completion_tokens


def test_completion_echo_and_list_prompt(server: RunningServer, direct_model) -> None:
    direct = direct_model.generate(PROMPT, max_tokens=4, temperature=0.0)
    out = server.openai().completions.create(
        model=server.model_id, prompt=[PROMPT], max_tokens=4, temperature=0, echo=True
    )
    assert out.choices[0].text == PROMPT + direct.text


def test_chat_greedy_matches_python_api(server: RunningServer, direct_model) -> None:
    direct = direct_model.chat(MESSAGES, max_tokens=16, temperature=0.0)
    out = server.openai().chat.completions.create(
        model=server.model_id, messages=MESSAGES, max_tokens=16, temperature=0
    )
    assert out.object == "chat.completion"
    msg = out.choices[0].message
    assert msg.role == "assistant"
    assert msg.content == direct.text
    assert out.choices[0].finish_reason == direct.finish_reason
    assert out.usage.prompt_tokens == direct.usage.prompt_tokens
    assert out.usage.completion_tokens == direct.usage.completion_tokens


def test_chat_stream_matches(server: RunningServer, direct_model) -> None:
    direct = direct_model.chat(MESSAGES, max_tokens=12, temperature=0.0)
    stream = server.openai().chat.completions.create(
        model=server.model_id, messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == direct.finish_reason and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens


def test_stream_wire_format(server: RunningServer) -> None:
    """Raw SSE: `data: {...}` events separated by blank lines, ending with `data: [DONE]`."""
    body = {"model": server.model_id, "prompt": PROMPT, "max_tokens": 3, "temperature": 0,
            "stream": True}
    with server.http() as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_stop_sequence_and_seed(server: RunningServer, direct_model) -> None:
    greedy = direct_model.generate(PROMPT, max_tokens=24, temperature=0.0).text
    pieces = [p for p in greedy.replace("\x00", "").split() if p]
    client = server.openai()
    if pieces:
        stop = pieces[min(2, len(pieces) - 1)]
        out = client.completions.create(model=server.model_id, prompt=PROMPT, max_tokens=24,
                                        temperature=0, stop=[stop])
        expected = direct_model.generate(PROMPT, max_tokens=24, temperature=0.0, stop=[stop])
        assert out.choices[0].text == expected.text
        assert stop not in out.choices[0].text
        assert out.choices[0].finish_reason == "stop"
    # Sampling with a seed is reproducible, over HTTP as in-process.
    a, b = (client.completions.create(model=server.model_id, prompt=PROMPT, max_tokens=12,
                                      temperature=1.0, top_p=0.9, seed=1234) for _ in range(2))
    assert a.choices[0].text == b.choices[0].text
    direct = direct_model.generate(PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=1234)
    assert a.choices[0].text == direct.text


def test_metrics_exposes_runtime_figures(server: RunningServer) -> None:
    server.openai().completions.create(model=server.model_id, prompt=PROMPT, max_tokens=2,
                                       temperature=0)
    m = server.metrics()
    for name in ("edgemoe_budget_bytes", "edgemoe_resident_expert_bytes",
                 "edgemoe_expert_cache_hits_total", "edgemoe_expert_cache_misses_total",
                 "edgemoe_expert_bytes_loaded_total", "edgemoe_expert_evictions_total",
                 "edgemoe_queue_depth", "edgemoe_prompt_tokens_total",
                 "edgemoe_last_decode_tokens_per_second"):
        assert name in m, name
    assert m["edgemoe_budget_bytes"] > 0
    assert m['edgemoe_http_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert sum(v for k, v in m.items() if k.startswith("edgemoe_completion_tokens_total")) >= 2
