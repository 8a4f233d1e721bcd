"""Inside one_parse_per_file() (a load) open_reader parses a GGUF header once per version of the
file; a replaced file is parsed again, and outside the scope every call parses the file as it
is now."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from contract.errors import BundleError
from contract.gguf_layout import one_parse_per_file, open_reader

pytestmark = pytest.mark.unit


def _write(path: Path, value: int) -> None:
    """A small GGUF whose `test.value` is `value`, written to a temporary name and renamed in."""
    tmp = path.with_suffix(".tmp")
    w = gguf.GGUFWriter(str(tmp), arch="llama")
    w.add_uint32("test.value", value)
    w.add_tensor("t.weight", np.arange(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def _value(path: Path) -> int:
    return int(open_reader(path).fields["test.value"].contents())


def test_one_parse_per_file_version_inside_the_scope(tmp_path):
    path = tmp_path / "model.gguf"
    _write(path, 1)
    with one_parse_per_file():
        first = open_reader(path)
        assert open_reader(path) is first and _value(path) == 1
        _write(path, 2)  # replaced, as the packager's atomic writes do
        assert open_reader(path) is not first and _value(path) == 2
    assert open_reader(path) is not open_reader(path)  # outside: parsed every time


def test_outside_the_scope_a_file_damaged_in_place_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    _write(path, 3)
    assert _value(path) == 3
    with open(path, "r+b") as f:  # same inode, same size
        f.write(b"XXXX")
    with pytest.raises(BundleError, match="not a readable GGUF"):
        open_reader(path)
    with one_parse_per_file():  # a failure is not kept
        with pytest.raises(BundleError, match="not a readable GGUF"):
            open_reader(path)
        _write(path, 4)
        assert _value(path) == 4
