"""A bounded schemathesis run against the server's own /openapi.json: no input gives a 5xx.

The server runs with a small context window so any generation the fuzzer asks for is short,
and each operation gets a fixed number of examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.server.conftest import RunningServer, start_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (after the importorskip)

pytestmark = [pytest.mark.endpoint, pytest.mark.engine, pytest.mark.timeout(600)]

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzz_server(server_bundle: Path, tmp_path_factory) -> Iterator[RunningServer]:
    s = start_server(server_bundle, tmp_path_factory.mktemp("fuzz"), "--n-ctx", "64",
                     "--max-queue", "4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server: RunningServer):
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, fuzz_server: RunningServer) -> None:
    from schemathesis.checks import not_a_server_error

    case.call_and_validate(base_url=fuzz_server.base_url, checks=[not_a_server_error],
                           timeout=60)


def test_server_survived_fuzzing(fuzz_server: RunningServer) -> None:
    assert fuzz_server.alive(), fuzz_server.log()
    assert "Traceback" not in fuzz_server.log(), fuzz_server.log()
