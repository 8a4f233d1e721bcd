"""The fuzzer's own parts: reproducible cases, a GGUF codec that round-trips, writers that can
say what json.dumps cannot, and outcome classes decided from what a user sees."""

from __future__ import annotations

import json
import random
import tomllib

import pytest

from tests.fuzz import known
from tests.fuzz.draw import RandomDraw
from tests.fuzz.gguf_model import parse, serialize
from tests.fuzz.gguf_mutate import mutate_gguf
from tests.fuzz.known import KnownIssue, known_issue
from tests.fuzz.outcomes import Outcome, classify_cli, one_line_problem, worst
from tests.fuzz.trees import Pairs, Raw, mutate_tree, to_json, to_toml

pytestmark = pytest.mark.unit


def _tiny_gguf() -> bytes:
    """A two-tensor GGUF written with gguf-py (the reference writer), in memory."""
    import tempfile
    from pathlib import Path

    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.gguf"
        w = gguf.GGUFWriter(str(path), "qwen3moe")
        w.add_block_count(1)
        w.add_expert_count(4)
        w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
        w.add_tensor("token_embd.weight", np.ones((3, 8), dtype=np.float32))
        w.add_tensor("blk.0.ffn_up_exps.weight", np.zeros((4, 8, 8), dtype=np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes()


def test_gguf_codec_round_trips_a_real_file():
    buf = _tiny_gguf()
    model = parse(buf)
    assert serialize(model) == buf
    assert [t.name for t in model.tensors] == ["token_embd.weight", "blk.0.ffn_up_exps.weight"]
    kinds = {r.kind for r in model.regions}
    assert {"n_tensors", "kv_arr_count", "ti_dim", "ti_offset", "tensor_data"} <= kinds


def test_cases_are_reproducible_from_seed_kind_and_index():
    buf = _tiny_gguf()
    model = parse(buf)
    first = [mutate_gguf(buf, model, RandomDraw.for_case(7, "gguf", i)) for i in range(30)]
    again = [mutate_gguf(buf, model, RandomDraw.for_case(7, "gguf", i)) for i in range(30)]
    assert first == again
    assert len({data for data, _ in first}) > 20  # and they differ from each other


def test_tree_mutations_are_reproducible():
    doc = {"a": [1, 2, {"b": "c"}], "d": {"e": 5}}

    def run(i: int) -> str:
        out, what = mutate_tree(json.loads(json.dumps(doc)), RandomDraw.for_case(1, "t", i))
        return to_json(out) + what

    assert [run(i) for i in range(50)] == [run(i) for i in range(50)]


def test_writers_say_what_json_dumps_cannot():
    text = to_json({"n": Raw("9" * 5000), "d": Pairs((("k", 1), ("k", 2))), "x": Raw("NaN")})
    assert '"k": 1, "k": 2' in text and "9" * 5000 in text
    with pytest.raises(ValueError):  # Python's own limit: exactly what a reader must survive
        json.loads(text)
    table = tomllib.loads(to_toml({"name": "x", "n": 3, "isa": ["a"], "notes": {"n": "why"}}))
    assert table == {"name": "x", "n": 3, "isa": ["a"], "notes": {"n": "why"}}


@pytest.mark.parametrize(
    ("rc", "stderr", "timed_out", "expected"),
    [
        (0, "", False, Outcome.OK),
        (1, "error: bad field\n", False, Outcome.CLEAN),
        (1, "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", False, Outcome.TRACEBACK),
        (-11, "", False, Outcome.CRASH),
        (-6, "GGML_ASSERT failed", False, Outcome.CRASH),
        (None, "", True, Outcome.HANG),
        (0, "error: something went wrong\n", False, Outcome.EXIT0_AFTER_ERROR),
        (3, "", False, Outcome.CRASH),
    ],
)
def test_cli_outcomes(rc, stderr, timed_out, expected):
    assert classify_cli(rc, stderr, timed_out=timed_out)[0] is expected


def test_one_error_line_and_worst_outcome():
    assert one_line_problem("error: x\n") == ""
    assert one_line_problem("error: x\nmore\n") == "2 lines"
    assert worst([Outcome.OK, Outcome.CLEAN, Outcome.HANG, Outcome.TRACEBACK]) is Outcome.HANG
    assert worst([]) is Outcome.OK


def test_known_issues_match_by_origin_not_by_wording(monkeypatch):
    # A stand-in entry: the real list may be empty (every issue fixed).
    issue = KnownIssue("files", "contract/files.py", r"usage:planner",
                       r"RecursionError at \w+ \[contract/files\.py\]", "example")
    monkeypatch.setattr(known, "KNOWN", (issue,))
    hit = known_issue("usage:planner", "RecursionError at start [contract/files.py]: anything")
    assert hit is issue
    assert known_issue("usage", "RecursionError at start [packager/usage.py]: x") is None


def test_random_draw_is_independent_of_global_random():
    random.seed(1)
    a = RandomDraw.for_case(3, "k", 5).integer(0, 10**9)
    random.seed(2)
    assert RandomDraw.for_case(3, "k", 5).integer(0, 10**9) == a
