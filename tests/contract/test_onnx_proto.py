"""ONNX graphs read with onnx's own schema without the onnx package (contract/onnx_proto.py):
the same ModelProto onnx.load gives, and the same class once the package is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract.onnx_proto import read_model


def _model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/model/mm")
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    return path


@pytest.mark.unit
def test_read_model_gives_what_onnx_load_gives(tmp_path):
    import onnx

    path = _model(tmp_path / "model.onnx")
    ours = read_model(path)
    assert type(ours) is onnx.ModelProto
    assert ours == onnx.load(str(path), load_external_data=False)
    ext = {e.key: e.value for e in ours.graph.initializer[0].external_data}
    assert ext["location"] == "model.onnx.data" and int(ext["length"]) == 24


@pytest.mark.unit
def test_a_fresh_process_reads_a_graph_without_importing_the_onnx_package(tmp_path):
    path = _model(tmp_path / "model.onnx")
    code = (
        "import json, sys\n"
        "from contract.onnx_proto import read_model\n"
        "m = read_model(sys.argv[1])\n"
        "loaded = sorted(k for k in sys.modules if k == 'onnx' or k.startswith('onnx.'))\n"
        "import onnx\n"
        "from onnx import helper\n"
        "m.graph.node.append(helper.make_node('Relu', ['y'], ['z']))\n"
        "onnx.checker.check_model(m)\n"
        "print(json.dumps({'loaded': loaded, 'same': type(m) is onnx.ModelProto,\n"
        "                  'nodes': [n.op_type for n in m.graph.node]}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["loaded"] == ["onnx.onnx_ml_pb2"]  # the schema alone, not the package
    assert out["same"] and out["nodes"] == ["MatMul", "Relu"]


@pytest.mark.unit
def test_a_graph_that_is_not_protobuf_raises(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\xff\xff\xff not a model")
    with pytest.raises(Exception, match="(?i)error parsing|decode"):
        read_model(bad)
    with pytest.raises(FileNotFoundError):
        read_model(tmp_path / "missing.onnx")
