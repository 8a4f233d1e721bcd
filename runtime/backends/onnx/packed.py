"""A fused build's experts in onnxruntime's own packed layout, derived once per device and mapped
from a cache file, so the fast int8 kernels read experts that are still pages of a file.

onnxruntime's QMoE runs block-quantized experts on its int8 dot-product kernels only after
"pre-packing" them (per expert: codes regrouped, scales and zero-point sums folded in), and
pre-packing at load makes a private heap copy of every expert, which ends any expert budget.
The copy is what a full budget would hold anyway, but a paged build cannot afford it, and the
unpacked kernel (dequantize each routed expert to float32, then SGEMM) is 2-2.5x slower at
decode. onnxruntime can also *save* what it packed beside an optimized model and map it back
at the next load (`session.save_external_prepacked_constant_initializers`): that is the layout
derived here, once, into a cache folder, stage by stage (stages.py), then merged into one file
(`packed.data`) so the runtime pages one file, as it pages the bundle's. Each expert is one
contiguous slice of its packed buffer (expert-major), so the derived expert table gives its
byte ranges, and the digests computed here let the first read of each expert be checked as the
bundle's are. The layout depends on the CPU and on onnxruntime's version, so both are in the
cache key; nothing here is written into the bundle.

Cost: a derivation writes the stages' weights and the packed experts (about twice the data
file) and takes seconds per hundred MB; later loads map it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contract.checksums import hash_range
from contract.manifest import ExpertTensor, LayerExperts
from contract.onnx_proto import read_model

log = logging.getLogger(__name__)

SCHEME = "edgemoe-onnx-packed-v1"
KEEP = 4  # derivations kept in the cache, the most recently used first
DATA = "packed.data"
META = "packed.json"
PAGE = 4096
_LAYER = re.compile(r"layers\.(\d+)\.")


@dataclass(frozen=True)
class PackedBuild:
    """Where the derived stages and their one data file are, and each expert's bytes in it."""

    folder: Path
    stages: tuple[Path, ...]
    data: Path
    layers: tuple[LayerExperts, ...]
    digests: dict[str, tuple[str, ...]]  # expert tensor -> xxh3-64 (hex) of each expert's slice
    n_experts: int

    def expert_spans(self) -> list[tuple[int, int]]:
        """Byte ranges of packed.data that hold experts (every expert of every tensor)."""
        return [(t.offset, t.offset + t.stride * self.n_experts)
                for x in self.layers for t in x.tensors]  # fmt: skip


def cache_root() -> Path:
    """EDGEMOE_ONNX_CACHE, else EDGEMOE_CACHE/onnx-packed, else the user's cache (XDG)."""
    own = os.environ.get("EDGEMOE_ONNX_CACHE")
    if own:
        return Path(own)
    base = os.environ.get("EDGEMOE_CACHE")
    root = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or
                                        Path.home() / ".cache") / "edgemoe"  # fmt: skip
    return root / "onnx-packed"


def cache_key(model_path: Path, onnxruntime_version: str) -> str:
    """The graph's bytes, the data file's size and time, onnxruntime's version and this CPU's
    feature flags: what decides the packed bytes."""
    h = hashlib.sha256(SCHEME.encode())
    h.update(model_path.read_bytes())
    data = Path(str(model_path) + ".data")
    st = data.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}:{onnxruntime_version}".encode())
    h.update(_cpu_flags().encode())
    return h.hexdigest()[:24]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.machine()


def load_or_derive(
    key: str,
    stages: Callable[[], Sequence[Any]],  # the stages' onnx.ModelProto (stages.stage_models),
    # experts overridable: made only when deriving (shape inference and the onnx package)
    bundle: Path,
    expert_tensors: Sequence[str],
    options: Callable[[], Any],  # a fresh onnxruntime.SessionOptions
    root: Path | None = None,
) -> PackedBuild:
    """The cached derivation for `key`, made now if there is none (atomic: a folder renamed
    into place when complete). Raises OSError or onnxruntime's errors when it cannot be made."""
    root = root or cache_root()
    final = root / key
    if (final / META).is_file():
        os.utime(final)  # a use, for whoever prunes the cache
        return _read(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".derive-", dir=root))
    try:
        _derive(tmp, stages(), bundle, set(expert_tensors), options)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: use its copy
            if not (final / META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("derived onnxruntime's packed experts into %s", final)
    prune(root, keep=KEEP, spare=final)
    return _read(final)


def prune(root: Path, keep: int, spare: Path | None = None, stale_s: float = 3600.0) -> None:
    """Keep the `keep` most recently used derivations (a load touches its folder), and drop
    half-made ones older than `stale_s` (a derivation killed midway): each is about twice its
    model's data file, and a new one is made again on demand."""
    import time

    done = sorted((d for d in root.iterdir() if (d / META).is_file()),
                  key=lambda d: d.stat().st_mtime, reverse=True)  # fmt: skip
    for d in done[keep:]:
        if d != spare:
            shutil.rmtree(d, ignore_errors=True)
    for d in root.glob(".derive-*"):
        if time.time() - d.stat().st_mtime > stale_s:
            shutil.rmtree(d, ignore_errors=True)


def _derive(folder: Path, stages: Sequence[Any], bundle: Path, experts: set[str],
            options: Callable[[], Any]) -> None:  # fmt: skip
    import onnxruntime as ort

    for k, stage in enumerate(stages):
        g = stage.graph
        inits = {t.name for t in g.initializer}
        plain = [i for i in g.input if i.name not in inits]  # experts become constants: packed
        del g.input[:]
        g.input.extend(plain)
        so = options()
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(bundle))  # fmt: skip
        so.optimized_model_filepath = str(folder / f"stage{k}.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    f"stage{k}.data")  # fmt: skip
        # Small constants (shapes) stay inside the graph, where shape inference reads them.
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(PAGE))
        so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        ort.InferenceSession(stage.SerializeToString(), so, providers=["CPUExecutionProvider"])
    _merge(folder, len(stages))
    layers, digests = _expert_table(folder, len(stages), experts)
    n_experts = len(next(iter(digests.values()))) if digests else 0
    (folder / META).write_text(json.dumps({
        "scheme": SCHEME, "onnxruntime": ort.__version__, "stages": len(stages),
        "n_experts": n_experts,
        "layers": [{"layer": x.layer, "tensors": [asdict(t) for t in x.tensors]} for x in layers],
        "digests": digests,
    }))  # fmt: skip


def _merge(folder: Path, n: int) -> None:
    """Every stage's data file appended (page-aligned) to one, the stages' offsets moved."""
    bases: list[int] = []
    with open(folder / DATA, "wb") as out:
        for k in range(n):
            at = -(-out.tell() // PAGE) * PAGE
            out.seek(at)
            bases.append(at)
            part = folder / f"stage{k}.data"
            if part.exists():
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                part.unlink()
        out.flush()
        os.fsync(out.fileno())
    for k in range(n):
        path = folder / f"stage{k}.onnx"
        model = read_model(path)
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = DATA
                elif e.key == "offset":
                    e.value = str(int(e.value) + bases[k])
                elif e.key.startswith("prepacked"):  # "kernel+hash|offset;length;flag|..."
                    head, *blobs = e.value.split("|")
                    moved = [";".join([str(int(b.split(";")[0]) + bases[k]), *b.split(";")[1:]])
                             for b in blobs]  # fmt: skip
                    e.value = "|".join([head, *moved])
        path.write_bytes(model.SerializeToString())


def _expert_table(folder: Path, n: int, experts: set[str]
                  ) -> tuple[list[LayerExperts], dict[str, tuple[str, ...]]]:  # fmt: skip
    """Each expert tensor's bytes per expert in packed.data: the packed buffer when onnxruntime
    packed it (what the kernel reads), else the tensor itself (scales and zero points, which
    the kernel may still read); and the xxh3-64 of every expert's slice."""
    by_layer: dict[int, list[ExpertTensor]] = {}
    counts: dict[str, int] = {}
    for k in range(n):
        model = read_model(folder / f"stage{k}.onnx")
        for t in model.graph.initializer:
            if t.name not in experts or not (m := _LAYER.search(t.name)):
                continue
            fields = {e.key: e.value for e in t.external_data}
            if "offset" not in fields:  # small enough to stay inside the stage's graph: resident
                continue
            count = int(t.dims[0])
            offset, length, name = int(fields["offset"]), int(fields["length"]), t.name
            packed = next((v for key, v in fields.items() if key.startswith("prepacked")), None)
            if packed is not None:
                offset, length = (int(x) for x in packed.split("|")[1].split(";")[:2])
                name = f"{t.name}@packed"
            if length % count:
                raise ValueError(f"{t.name}: {length} packed bytes do not split into {count} "
                                 "experts")  # fmt: skip
            counts[name] = count
            by_layer.setdefault(int(m.group(1)), []).append(
                ExpertTensor(name, "packed" if packed else "raw", offset, length // count))
    layers = [LayerExperts(layer, tuple(ts)) for layer, ts in sorted(by_layer.items())]
    digests: dict[str, tuple[str, ...]] = {}
    fd = os.open(folder / DATA, os.O_RDONLY)
    try:
        buf = bytearray(1 << 22)
        for x in layers:
            for t in x.tensors:
                spans = [(t.offset + e * t.stride, t.offset + (e + 1) * t.stride)
                         for e in range(counts[t.name])]  # fmt: skip
                digests[t.name] = tuple(f"{hash_range(fd, a, b, buf):016x}" for a, b in spans)
    finally:
        os.close(fd)
    return layers, digests


def _read(folder: Path) -> PackedBuild:
    meta = json.loads((folder / META).read_text())
    if meta.get("scheme") != SCHEME:
        raise ValueError(f"{folder / META}: scheme {meta.get('scheme')!r}, expected {SCHEME}")
    layers = tuple(
        LayerExperts(x["layer"], tuple(ExpertTensor(**t) for t in x["tensors"]))
        for x in meta["layers"]
    )
    stages = tuple(folder / f"stage{k}.onnx" for k in range(int(meta["stages"])))
    return PackedBuild(folder, stages, folder / DATA, layers,
                       {k: tuple(v) for k, v in meta["digests"].items()},
                       int(meta["n_experts"]))  # fmt: skip
