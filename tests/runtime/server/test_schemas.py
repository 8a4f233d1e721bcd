"""The wire schemas without a server: one set of sampling defaults, OpenAI's response shapes,
and metrics kept per app."""

from __future__ import annotations

import json

import pytest

from runtime.errors import SamplingError
from runtime.generation.request import DEFAULT_SAMPLING, SamplingParams, StreamEvent, Usage
from runtime.server.metrics import Metrics, ServingFigures
from runtime.server.schemas import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    CompletionRequest,
    UsageInfo,
    json_body,
)

pytestmark = pytest.mark.unit

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}


def test_http_defaults_are_sampling_params_defaults():
    for body, cls in ((CHAT, ChatCompletionRequest), (COMPLETION, CompletionRequest)):
        assert cls.model_validate(body).sampling_params() == SamplingParams() == DEFAULT_SAMPLING
        # JSON null means "not given", as OpenAI documents these fields.
        nulls = {"max_tokens": None, "temperature": None, "top_p": None, "top_k": None,
                 "seed": None, "stop": None}
        assert cls.model_validate({**body, **nulls}).sampling_params() == SamplingParams()


def test_request_fields_become_one_sampling_params():
    body = {**CHAT, "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5,
            "top_p": 0.9, "top_k": 40, "seed": 3, "stop": "\n"}
    params = ChatCompletionRequest.model_validate(body).sampling_params()
    assert params == SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, top_k=40, seed=3,
                                    stop=("\n",))


@pytest.mark.parametrize("field,value", [
    ("max_tokens", 0), ("temperature", 2.5), ("temperature", float("nan")), ("top_p", 0.0),
    ("top_k", -1), ("stop", [""]),
])
def test_sampling_params_refuse_what_the_schema_refuses(field, value):
    with pytest.raises(SamplingError, match=field):
        SamplingParams(**{field: value})
    with pytest.raises(ValueError):
        CompletionRequest.model_validate({**COMPLETION, field: value})


def test_chunks_keep_openai_shapes():
    def chunk(delta: ChatDelta, reason=None) -> dict:
        c = ChatCompletionChunk(id="x", created=1, model="m",
                                choices=[ChatChunkChoice(delta=delta, finish_reason=reason)])
        return json.loads(json_body(c, exclude={"usage"}))["choices"][0]

    assert chunk(ChatDelta(role="assistant", content="")) == {
        "index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
        "finish_reason": None}
    assert chunk(ChatDelta(content="hi"))["delta"] == {"content": "hi"}
    assert chunk(ChatDelta(), "stop")["delta"] == {}
    usage = ChatCompletionChunk(id="x", created=1, model="m", choices=[],
                                usage=UsageInfo.of(Usage(3, 4)))
    assert json.loads(json_body(usage))["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_metrics_are_per_app():
    figures = ServingFigures(model_id="m", queue_depth=2, queue_capacity=8, busy=True,
                             stats={"budget_bytes": 100, "hits": 5, "offloading": True,
                                    "hot_experts": {"3": [1, 2]}})
    a, b = Metrics(lambda: figures), Metrics(lambda: figures)
    a.observe_request("/v1/completions", 200, 0.5)
    a.observe_generation(StreamEvent("", None, "length", Usage(3, 4), {"decode_tok_s": 9.0}),
                         1.0)
    text_a, text_b = a.render().decode(), b.render().decode()
    for line in ('edgemoe_http_requests_total{endpoint="/v1/completions",status="200"} 1.0',
                 'edgemoe_completion_tokens_total{finish_reason="length"} 4.0',
                 "edgemoe_last_decode_tokens_per_second 9.0", "edgemoe_queue_depth 2.0",
                 "edgemoe_engine_busy 1.0", 'edgemoe_model_info{model="m"} 1.0',
                 "edgemoe_expert_cache_hits_total 5.0", 'edgemoe_pinned_experts{layer="3"} 2.0'):
        assert line in text_a.splitlines(), line
    assert "edgemoe_http_requests_total{" not in text_b
    assert "edgemoe_last_decode_tokens_per_second" not in text_b  # nothing ran there yet
