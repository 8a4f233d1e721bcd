"""The routing log kept in Python (runtime/backends/routing_log.py): what it notes instead of
delivering, and that the pager's books come out the same with it as without it on the ONNX
backend's staged runs."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.base import MARK
from runtime.backends.routing_log import PythonRoutingLog


def _log() -> PythonRoutingLog:
    log = PythonRoutingLog(n_layers=3, n_experts=8, top_k=2, capacity=4)
    log.resident[1, [2, 5]] = 1
    return log


@pytest.mark.unit
def test_a_one_token_event_with_every_expert_resident_is_noted():
    log = _log()
    assert log.note_hit(1, np.array([[5, 2]], np.int32))
    assert log.counts == (1, 0)
    assert log.drain().tolist() == [[1, 2, 5, 2]] and len(log) == 0


@pytest.mark.unit
@pytest.mark.parametrize("layer, ids", [
    (1, [[5, 3]]),          # expert 3 is not resident
    (0, [[2, 5]]),          # resident in layer 1, not in layer 0
    (1, [[2, 5], [5, 2]]),  # a prompt batch: the pager ranks its experts
    (7, [[2, 5]]),          # a layer the log does not know
    (1, [[2, 99]]),         # an id past the experts
])  # fmt: skip
def test_anything_else_goes_to_the_pager(layer, ids):
    log = _log()
    assert not log.note_hit(layer, np.array(ids, np.int32))
    assert log.counts == (0, 1) and len(log) == 0


@pytest.mark.unit
def test_the_pager_can_ask_for_every_event_and_a_full_log_delivers():
    log = _log()
    ids = np.array([[2, 5]], np.int32)
    log.python_needed = True
    assert not log.note_hit(1, ids)
    log.python_needed = False
    assert log.mark() and all(log.note_hit(1, ids) for _ in range(3))
    assert not log.note_hit(1, ids) and not log.mark()  # capacity 4 records
    assert log.drain()[:, :2].tolist() == [[MARK, 0], [1, 2], [1, 2], [1, 2]]
    log.close()
    assert not log.note_hit(1, ids)


@pytest.mark.unit
def test_it_offers_no_prefetch_of_its_own():
    log = _log()
    assert log.sources == {} and log.hidden(0) is None and log.prefetch_issued == (0, 0)
    assert isinstance(log.routers, str)  # an engine that gave none: why, for the pager to say
    with pytest.raises(ValueError):
        log.configure_prefetch(source="ffn_inp", page=4096)


@pytest.mark.unit
def test_it_keeps_a_batchs_hidden_state_for_its_layer_and_reads_routers_once():
    reads = []
    routers = {0: np.ones((8, 4), np.float32)}
    log = PythonRoutingLog(3, 8, 2, routers=lambda: reads.append(1) or routers)
    assert log.routers is routers and log.routers is routers and reads == [1]
    hidden = np.arange(24, dtype=np.float32).reshape(1, 6, 4)  # [batch, tokens, n_embd]
    log.keep_hidden(1, hidden)
    assert log.hidden(1).shape == (6, 4) and log.hidden(0) is None  # another layer's: none
    log.keep_hidden(1, None)  # the event is over: the state is not held
    assert log.hidden(1) is None and log.hidden(2) is None


@pytest.mark.engine
@pytest.mark.parametrize("budget", ["50%", "25%"])
def test_onnx_books_and_tokens_are_the_same_with_and_without_the_log(budget, bundle_factory,
                                                                     monkeypatch, tmp_path):
    """Noted hits are replayed into the cache's books before the next event the pager handles,
    so hits, misses and the tokens match a run that delivers every event."""
    import runtime
    from runtime.backends.onnx.backend import OnnxBackend

    monkeypatch.setenv("EDGEMOE_ONNX_CACHE", str(tmp_path / "onnx-packed"))
    bundle = bundle_factory("qwen3moe-tiny", "int8", format="onnx")

    def run() -> tuple[list[int], int, int, tuple[int, int] | None]:
        with runtime.load(bundle, budget=budget, backend="onnx", threads=1) as m:
            tokens = m.generate("def read_config(path):\n    ", max_tokens=24).tokens
            s = m.stats()
            log = m.engine._log
            return tokens, s.hits, s.misses, (log.counts if log is not None else None)

    tokens, hits, misses, counts = run()
    assert counts is not None and counts[0] > 0 and counts[1] > 0  # both paths were taken
    monkeypatch.setattr(OnnxBackend, "routing_log", lambda self, *a: None)
    assert run() == (tokens, hits, misses, None)
