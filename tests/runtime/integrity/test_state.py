"""The integrity books: the first fault wins, is raised afresh, and reaches every listener once
(also one that subscribes after it); the background check names the range it could not verify."""

from __future__ import annotations

import os

import pytest
import xxhash

from runtime.errors import ModelCorruptError
from runtime.integrity import BackgroundCheck, IntegrityState
from runtime.integrity.background import Range

pytestmark = pytest.mark.unit


def test_the_first_fault_wins_and_every_listener_hears_it_once():
    state = IntegrityState(True)
    heard: list[str] = []
    state.subscribe(lambda e: heard.append(f"a: {e}"))
    state.check()  # nothing known: no error
    state.fail(ModelCorruptError("model.gguf: blk.0 expert 1 damaged"))
    state.fail(ModelCorruptError("second"))
    state.subscribe(lambda e: heard.append(f"b: {e}"))
    message = "model.gguf: blk.0 expert 1 damaged"
    assert heard == [f"a: {message}", f"b: {message}"]
    with pytest.raises(ModelCorruptError, match="expert 1 damaged") as first:
        state.check()
    with pytest.raises(ModelCorruptError) as second:
        state.check()
    assert first.value is not second.value  # a fresh error per raise
    assert state.stats()["integrity"] == "corrupt" and state.stats()["integrity_faults"] == 1


def test_the_background_check_names_the_damaged_range(tmp_path):
    data = os.urandom(3 * 4096)
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    good = Range(path, "token_embd.weight", 0, 4096, xxhash.xxh3_64_intdigest(data[:4096]))
    bad = Range(path, "output.weight", 4096, 8192, 12345)
    state = IntegrityState(True)
    check = BackgroundCheck([good, bad], state).start()
    assert check.wait(30)
    assert state.dense == "failed" and state.dense_bytes_verified == 4096
    assert str(state.fault) == (f"{path}: output.weight (bytes [4096, 8192)) does not match the "
                                "manifest's checksum: the file is damaged; replace the bundle "
                                "or repair it with `edgemoe pull`")
    cut = IntegrityState(True)
    BackgroundCheck([Range(path, "output.weight", 8192, 16384, 1)], cut).start().wait(30)
    assert "could not be read: the file ends at byte 12288, before byte 16384" in str(cut.fault)
