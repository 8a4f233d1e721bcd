"""An ONNX build's own table of where its weights live, and the manifest checked against it.

The graph (`model.onnx`) names, for every initializer kept outside it, the data file, the byte
offset and the length (ONNX's external-data fields). The runtime pages experts by the manifest's
offsets, so each stacked expert tensor must be exactly where the graph says, inside the data
file, page-aligned (onnxruntime maps each initializer on its own). Reading the graph never loads
the weights (`load_external_data=False`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from contract.errors import BundleError
from contract.manifest import Build, Manifest
from contract.onnx_proto import read_model

PAGE = 4096
_PAST = re.compile(r"^past_key_values\.(\d+)\.key$")


@dataclass(frozen=True)
class ExternalTensor:
    location: str
    offset: int
    length: int


def _load_graph(model_path: Path):  # type: ignore[no-untyped-def]
    try:
        return read_model(model_path)
    except FileNotFoundError:
        raise BundleError(f"{model_path}: not found") from None
    except Exception as e:  # protobuf's DecodeError and friends
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise BundleError(f"{model_path}: not a readable ONNX model ({first})") from None


def external_tensors(model_path: Path) -> dict[str, ExternalTensor]:
    """Initializer name -> where its bytes are, for every initializer stored outside the graph."""
    out: dict[str, ExternalTensor] = {}
    for t in _load_graph(model_path).graph.initializer:
        fields = {e.key: e.value for e in t.external_data}
        if "location" not in fields:
            continue
        try:
            out[t.name] = ExternalTensor(
                fields["location"], int(fields.get("offset", 0)), int(fields.get("length", -1))
            )
        except ValueError:
            raise BundleError(
                f"{model_path}: initializer {t.name}: bad external-data numbers"
            ) from None
    return out


def check_onnx_build(manifest: Manifest, build: Build, bundle: Path) -> None:
    """Raise BundleError at the first expert tensor the graph does not place where the manifest
    says, or that does not start on a page inside the data file.

    A stride need not be a page multiple: the fused (QMoE) layout stores experts back to back,
    as GGUF does, and the runtime pages such ranges the same way (whole pages inward on release,
    outward on load). Bundles whose strides are page multiples (the padded gather layout) pass
    as before."""
    model = bundle / build.model_file
    where = f"{bundle / 'manifest.json'}"
    if build.data_file is None:
        raise BundleError(f"{where}: the onnx build names no data_file")
    data = bundle / build.data_file
    size = data.stat().st_size if data.is_file() else -1
    if size < 0:
        raise BundleError(f"{data}: the ONNX external-data file is missing")
    table = external_tensors(model)
    n = manifest.shape.n_experts
    for layer in build.expert_layers:
        for t in layer.tensors:
            ext = table.get(t.name)
            if ext is None:
                raise BundleError(
                    f"{where}: {t.name}: no such external initializer in {model.name}"
                )
            expected = (build.data_file, t.offset, t.stride * n)
            if (ext.location, ext.offset, ext.length) != expected:
                raise BundleError(
                    f"{where}: {t.name}: manifest says {expected} (file, offset, length) but "
                    f"{model.name} says {(ext.location, ext.offset, ext.length)}"
                )
            aligned = t.stride > 0 and not t.offset % PAGE
            if not aligned or t.offset + t.stride * n > size:
                raise BundleError(
                    f"{where}: {t.name}: experts at offset {t.offset}, stride {t.stride} do not "
                    f"start on a page inside {data.name} ({size} bytes)"
                )


def onnx_attention(model_path: Path) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from the graph's past_key_values inputs."""
    layers, heads, dim = 0, 0, 0
    for i in _load_graph(model_path).graph.input:
        if _PAST.match(i.name):
            d = [x.dim_value for x in i.type.tensor_type.shape.dim]
            layers, heads, dim = layers + 1, d[1], d[3]
    if not layers or heads <= 0 or dim <= 0:
        raise BundleError(f"{model_path}: no past_key_values inputs with fixed heads/head size")
    return layers, heads, dim


_STATE = re.compile(r"^past_(conv|ssm)\.(\d+)$")


def onnx_states(model_path: Path) -> dict[str, tuple[int, ...]]:
    """Recurrent-state input name -> its fixed shape ([1, ...]), for a hybrid model's
    `past_conv.i` / `past_ssm.i` inputs (packager/onnx_export/recurrent.py); {} for a model
    with attention layers only."""
    out: dict[str, tuple[int, ...]] = {}
    for i in _load_graph(model_path).graph.input:
        if _STATE.match(i.name):
            dims = tuple(x.dim_value for x in i.type.tensor_type.shape.dim)
            if not dims or min(dims) <= 0:
                raise BundleError(f"{model_path}: recurrent state {i.name} has no fixed shape")
            out[i.name] = dims
    return out


def onnx_architecture(model_path: Path) -> str:
    """The architecture the exporter named the graph after ("edgemoe <architecture>")."""
    name = _load_graph(model_path).graph.name
    return name.removeprefix("edgemoe ").strip() or "onnx"
