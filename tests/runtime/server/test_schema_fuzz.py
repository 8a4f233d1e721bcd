"""A bounded schemathesis run against the server's own /openapi.json: no input gives a 5xx.

The server runs with a small context window so any generation the fuzzer asks for is short;
each operation gets a fixed number of valid and invalid examples. The bodies cover every request
field, so structured output (response_format, grammar), tools, logprobs, n and logit_bias are
fuzzed too, as are /tokenize and /detokenize. Cases are drawn from
schemathesis' strategies with Hypothesis directly (its pytest plugin does not load on this
pytest), half of the bodies naming the served model so they get past the model check.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.server.conftest import RunningServer, start_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the importorskip)
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = [pytest.mark.endpoint, pytest.mark.engine, pytest.mark.timeout(600)]

MAX_EXAMPLES = 40
OPERATIONS = [
    ("GET", "/health"), ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"),
    ("GET", "/metrics"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/admin/reload"),
    ("POST", "/admin/budget"),
]


@pytest.fixture(scope="module")
def fuzz_server(server_bundle: Path, tmp_path_factory) -> Iterator[RunningServer]:
    s = start_server(server_bundle, tmp_path_factory.mktemp("fuzz"), "--n-ctx", "64",
                     "--max-queue", "4", "--log-level", "info")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server: RunningServer):
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")


def test_schema_lists_every_operation(fuzz_schema) -> None:
    found = {(r.ok().method.upper(), r.ok().path) for r in fuzz_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# Request fields that a random value almost never satisfies beyond the schema.
CONSTRAINING = ("response_format", "tools", "tool_choice", "grammar", "logit_bias", "n",
                "top_logprobs")
# Invalid data exists only where there is a body to break (a GET here takes any path string;
# /admin/budget's body schema takes any JSON value, so schemathesis can make none invalid).
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS
    if m == "POST" and p != "/admin/budget"
]


@pytest.mark.parametrize("method,path,mode", CASES,
                         ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_server_errors(fuzz_schema, fuzz_server: RunningServer, method: str, path: str,
                          mode: GenerationMode) -> None:
    operation = fuzz_schema[path][method]
    cases = operation.as_strategy(generation_mode=mode)

    def name_the_model(case, use_ours: bool, plain: bool):
        if use_ours and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = fuzz_server.model_id
            if plain:  # a random schema, tool or grammar is nearly always refused: keep some
                for key in CONSTRAINING:  # bodies free of them so the engine is reached too
                    case.body.pop(key, None)
        return case

    strategy = st.tuples(cases, st.booleans(), st.booleans()).map(
        lambda c: name_the_model(*c))

    @given(case=strategy)
    # derandomize: the same cases every run, so how many reach the engine (checked below) is
    # a property of the server, not of a draw or of how busy the machine is.
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        case.call_and_validate(base_url=fuzz_server.base_url, checks=[not_a_server_error],
                               timeout=60)

    run()
    assert fuzz_server.alive(), fuzz_server.log()


def test_server_survived_fuzzing(fuzz_server: RunningServer) -> None:
    assert fuzz_server.alive(), fuzz_server.log()
    log = fuzz_server.log()
    assert "Traceback" not in log, log
    assert '" 500' not in log, log
    m = fuzz_server.metrics()
    statuses = {k: v for k, v in m.items() if k.startswith("edgemoe_http_requests_total")}
    # (/health answered 503 while the model loaded, before the fuzzing.)
    server_errors = {k: v for k, v in statuses.items()
                     if 'status="5' in k and "/health" not in k}
    assert not server_errors, statuses
    # The fuzzing reached the engine, not only the validation in front of it.
    assert sum(v for k, v in m.items() if k.startswith("edgemoe_generations_total")) >= 5, \
        statuses
