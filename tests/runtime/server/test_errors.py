"""Bad input gets OpenAI's error shape and a 4xx status (never a 500), and the server lives on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.runtime.server.conftest import N_CTX, RunningServer

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSGS = [{"role": "user", "content": "hi"}]
LONG_PROMPT = "lorem ipsum dolor sit amet " * (N_CTX // 2)


def assert_error(r: httpx.Response, status: int, *, param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.http() as c:
        yield c
    assert server.alive(), "the server stopped answering after a bad request:\n" + server.log()


def _chat(server: RunningServer, **fields: Any) -> dict[str, Any]:
    return {"model": server.model_id, "messages": MSGS, "max_tokens": 2, **fields}


def _completion(server: RunningServer, **fields: Any) -> dict[str, Any]:
    return {"model": server.model_id, "prompt": "hi", "max_tokens": 2, **fields}


def test_malformed_json(http: httpx.Client) -> None:
    for path in (CHAT, COMPLETIONS):
        r = http.post(path, content=b'{"model": "x", "messages": [', headers={
            "Content-Type": "application/json"})
        assert_error(r, 400, code="invalid_json")
    r = http.post(CHAT, content=b"\xff\xfe not utf-8", headers={
        "Content-Type": "application/json"})
    assert_error(r, 400)
    r = http.post(CHAT, content=b"", headers={"Content-Type": "application/json"})
    assert_error(r, 400)
    r = http.post(CHAT, json=[1, 2, 3])
    assert_error(r, 400)



def test_json_needs_its_content_type(server: RunningServer, http: httpx.Client) -> None:
    """A JSON body sent as text/plain (what a web page can post without a CORS preflight) or
    with no Content-Type is not parsed."""
    body = b'{"model": "%s", "prompt": "hi", "max_tokens": 1}' % server.model_id.encode()
    for headers in ({"Content-Type": "text/plain"}, {}):
        assert_error(http.post(COMPLETIONS, content=body, headers=headers), 400,
                     code="invalid_json")
    r = http.post(COMPLETIONS, content=body,
                  headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path,drop,param", [
    (CHAT, "messages", "messages"), (COMPLETIONS, "prompt", "prompt"),
])
def test_missing_fields(server: RunningServer, http: httpx.Client, path: str, drop: str,
                        param: str) -> None:
    body = _chat(server) if path == CHAT else _completion(server)
    del body[drop]
    assert_error(http.post(path, json=body), 400, param=param,
                 code="missing_required_parameter")


@pytest.mark.parametrize("field,value", [
    ("temperature", "hot"), ("temperature", "0.5"), ("max_tokens", "5"), ("max_tokens", 2.5),
    ("max_tokens", True), ("stream", "yes"), ("stream", 1), ("seed", "1"), ("top_p", "1"),
    ("stop", 7), ("stop", ["a", 3]), ("n", "1"), ("messages", "hi"), ("messages", {"a": 1}),
    ("model", 42),
])
def test_mistyped_fields(server: RunningServer, http: httpx.Client, field: str,
                         value: Any) -> None:
    assert_error(http.post(CHAT, json=_chat(server, **{field: value})), 400, param=field)


@pytest.mark.parametrize("message,param", [
    ({"role": "robot", "content": "hi"}, "messages.0.role"),
    ({"role": "user", "content": 5}, "messages.0.content"),
    ({"role": "user"}, "messages.0.content"),
    ({"content": "hi"}, "messages.0.role"),
    ("hi", "messages.0"),
])
def test_bad_messages(server: RunningServer, http: httpx.Client, message: Any,
                      param: str) -> None:
    assert_error(http.post(CHAT, json=_chat(server, messages=[message])), 400, param=param)


def test_empty_messages(server: RunningServer, http: httpx.Client) -> None:
    assert_error(http.post(CHAT, json=_chat(server, messages=[])), 400, param="messages")


def test_model_may_be_omitted(server: RunningServer, http: httpx.Client) -> None:
    """One model is served, so a request need not name it (llama.cpp's server tests do not)."""
    for path, body in ((CHAT, _chat(server)), (COMPLETIONS, _completion(server))):
        del body["model"]
        r = http.post(path, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == server.model_id


def test_unknown_model(server: RunningServer, http: httpx.Client) -> None:
    for path, body in ((CHAT, _chat(server)), (COMPLETIONS, _completion(server))):
        assert_error(http.post(path, json={**body, "model": "gpt-nope"}), 404,
                     param="model", code="model_not_found")
    assert_error(http.get("/v1/models/gpt-nope"), 404, code="model_not_found")
    with pytest.raises(openai.NotFoundError) as e:
        server.openai().chat.completions.create(model="gpt-nope", messages=MSGS, max_tokens=1)
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize("field,value", [
    ("temperature", 2.5), ("temperature", -0.1), ("top_p", 0), ("top_p", 1.5),
    ("top_p", -1), ("max_tokens", 0), ("max_tokens", -3), ("n", 0), ("n", 5), ("top_k", -1),
    ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("stop", ""),
    ("presence_penalty", 0.5), ("frequency_penalty", 3),
])
def test_out_of_range(server: RunningServer, http: httpx.Client, field: str,
                      value: Any) -> None:
    for path, body in ((CHAT, _chat(server)), (COMPLETIONS, _completion(server))):
        assert_error(http.post(path, json={**body, field: value}), 400, param=field)


def test_out_of_range_via_openai_client(server: RunningServer) -> None:
    client = server.openai()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server.model_id, messages=MSGS, temperature=3)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=server.model_id, prompt="hi", top_p=0)


def test_non_finite_numbers(server: RunningServer, http: httpx.Client) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = (b'{"model": "%s", "prompt": "hi", "temperature": %s}'
                % (server.model_id.encode(), literal))
        assert_error(http.post(COMPLETIONS, content=body,
                               headers={"Content-Type": "application/json"}), 400,
                     param="temperature")


def test_invalid_unicode(server: RunningServer, http: httpx.Client) -> None:
    body = b'{"model": "%s", "prompt": "a\\ud800b"}' % server.model_id.encode()
    assert_error(http.post(COMPLETIONS, content=body,
                           headers={"Content-Type": "application/json"}), 400, param="prompt")


def test_unsupported_options(server: RunningServer, http: httpx.Client) -> None:
    assert_error(http.post(CHAT, json=_chat(server, top_logprobs=2)), 400, param="top_logprobs")
    assert_error(http.post(CHAT, json=_chat(server, tools=[{"type": "function"}])), 400,
                 param="tools.0.function")
    assert_error(http.post(COMPLETIONS, json=_completion(server, best_of=3)), 400,
                 param="best_of")
    assert_error(http.post(COMPLETIONS, json=_completion(server, prompt=["a", "b"])), 400,
                 param="prompt")


def test_prompt_longer_than_context(server: RunningServer, http: httpx.Client) -> None:
    err = assert_error(http.post(COMPLETIONS, json=_completion(server, prompt=LONG_PROMPT)),
                       400, param="prompt", code="context_length_exceeded")
    assert str(N_CTX) in err["message"]
    long_msgs = [{"role": "user", "content": LONG_PROMPT}]
    assert_error(http.post(CHAT, json=_chat(server, messages=long_msgs)), 400,
                 param="messages", code="context_length_exceeded")
    # Streaming requests fail the same way, before any event is sent.
    r = http.post(CHAT, json=_chat(server, messages=long_msgs, stream=True))
    assert_error(r, 400, code="context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as e:
        server.openai().completions.create(model=server.model_id, prompt=LONG_PROMPT)
    assert e.value.code == "context_length_exceeded"


def test_max_tokens_beyond_context(server: RunningServer, http: httpx.Client) -> None:
    for path, body in ((CHAT, _chat(server)), (COMPLETIONS, _completion(server))):
        assert_error(http.post(path, json={**body, "max_tokens": N_CTX}), 400,
                     param="max_tokens", code="context_length_exceeded")
        assert_error(http.post(path, json={**body, "max_tokens": 10**12}), 400,
                     param="max_tokens", code="context_length_exceeded")


def test_oversized_body(server: RunningServer, http: httpx.Client) -> None:
    big = {"model": server.model_id, "prompt": "x" * (2 << 20)}
    assert_error(http.post(COMPLETIONS, json=big), 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        yield b'{"model": "m", "prompt": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = http.post(COMPLETIONS, content=chunked(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413)
    # A body just under the limit is parsed (and rejected for its content, not its size).
    near = {"model": "nope", "prompt": "z" * ((1 << 20) - 1000)}
    assert_error(http.post(COMPLETIONS, json=near), 404, code="model_not_found")


def test_unknown_route_and_method(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get(CHAT), 405)
    assert_error(http.delete("/v1/models"), 405)


def test_errors_are_counted(server: RunningServer) -> None:
    with server.http() as c:
        c.post(COMPLETIONS, json={"model": "nope", "prompt": "hi"})
    m = server.metrics()
    assert m['edgemoe_http_requests_total{endpoint="/v1/completions",status="404"}'] >= 1
