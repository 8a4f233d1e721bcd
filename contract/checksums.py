"""Fast checksums of a bundle's weights: one xxh3-64 per dense tensor and per expert slice.

The sampled block hashes (`contract/integrity.py`) read ~1 MiB at every open and cannot see a
flipped byte in an unsampled page; a full sha256 at load reads the whole model, which is what
offloading avoids. So at pack time the manifest records a fast checksum of each byte range the
engine computes with, and the runtime verifies each range the first time it reads it anyway:
an expert when the pager first brings its pages in, the dense tensors in the background after
load (`runtime/integrity/`). xxh3-64 hashes at memory speed (~10-30 GB/s per core), so a check
costs a fraction of the read it rides on; it is not a defence against an attacker (the files'
sha256 and `edgemoe verify` are), it finds storage that rots.

Scheme `xxh3-64-v1`, per model/data file:
  * `experts`: for every stacked expert tensor the build pages from this file, one digest per
    expert of [offset + e*stride, offset + (e+1)*stride);
  * `dense`: every other tensor's bytes (GGUF: as its tensor table places them; ONNX external
    data: each initializer), plus `(header)` (a GGUF's header, metadata and tensor table) or
    `(graph)` (the whole `model.onnx`).
Alignment padding between tensors is not covered: the engine never reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import xxhash

from contract.errors import BundleError
from contract.manifest import MANIFEST_NAME, Build, FileChecksums, Manifest, RangeChecksum

SCHEME = "xxh3-64-v1"
HEADER = "(header)"
GRAPH = "(graph)"
CHUNK = 1 << 22  # bytes per read when hashing a long range

Span = tuple[int, int]  # [start, end) in bytes


def digest(data: bytes | bytearray | memoryview) -> str:
    """The scheme's digest of some bytes, as the manifest writes it (16 hex digits)."""
    return xxhash.xxh3_64_hexdigest(data)


class RangeReadError(OSError):
    """A range that could not be read whole: an I/O error, or the file ends inside it."""


def hash_range(fd: int, start: int, end: int, buf: bytearray | None = None) -> int:
    """xxh3-64 (as an int) of the file bytes [start, end), read with pread so a storage fault
    is an OSError here, never a signal; raises RangeReadError when the file is shorter."""
    h = xxhash.xxh3_64()
    view = memoryview(buf if buf is not None and len(buf) else bytearray(min(CHUNK, end - start)))
    at = start
    while at < end:
        piece = view[: min(len(view), end - at)]
        got = os.preadv(fd, [piece], at)
        if got == 0:
            size = os.fstat(fd).st_size
            raise RangeReadError(f"the file ends at byte {size}, before byte {end}")
        h.update(piece[:got])
        at += got
    return h.intdigest()


def known(sums: FileChecksums | None) -> bool:
    """Whether this reader can check `sums` (a newer scheme is treated as no checksums)."""
    return sums is not None and sums.scheme == SCHEME


def check_fit(manifest: Manifest, where: str = MANIFEST_NAME) -> None:
    """Every expert digest list names a stacked tensor of a build whose experts live in that
    file, one digest per expert (checked at open, after the manifest was checked against the
    model file's own table, so a wrong tensor or expert count is blamed on its own field)."""
    n = manifest.shape.n_experts
    for name, sums in manifest.checksums.items():
        tensors = {t.name for b in manifest.all_builds() if b.expert_file == name
                   for x in b.expert_layers for t in x.tensors}
        for tensor, digests in sums.experts.items():
            field = f"field 'checksums.{name}.experts.{tensor}'"
            if tensor not in tensors:
                raise BundleError(f"{where}: {field}: not an expert tensor of '{name}'")
            if len(digests) != n:
                raise BundleError(f"{where}: {field} must list {n} digests, one per expert, "
                                  f"got {len(digests)}")


def expert_spans(build: Build, n_experts: int) -> Iterator[tuple[str, int, int, int]]:
    """(tensor name, offset of expert 0, stride, number of experts) of each expert tensor."""
    for layer in build.expert_layers:
        for t in layer.tensors:
            yield t.name, t.offset, t.stride, n_experts


def dense_spans(folder: Path, build: Build) -> dict[str, dict[str, Span]]:
    """file name -> {dense range name -> [start, end)} for the files one build runs from."""
    experts = {t.name for x in build.expert_layers for t in x.tensors}
    model = Path(folder) / build.model_file
    if build.format == "gguf":
        from contract.gguf_layout import open_reader

        reader = open_reader(model)
        spans = {HEADER: (0, int(reader.data_offset))}
        for t in reader.tensors:
            if t.name not in experts:
                spans[t.name] = (int(t.data_offset), int(t.data_offset) + int(t.n_bytes))
        return {build.model_file: spans}
    from contract.onnx_layout import external_tensors

    out = {build.model_file: {GRAPH: (0, model.stat().st_size)}}
    if build.data_file is not None:
        out[build.data_file] = {
            name: (t.offset, t.offset + t.length)
            for name, t in external_tensors(model).items()
            if t.location == build.data_file and t.length > 0 and name not in experts
        }
    return out


def checksum_builds(folder: Path, builds: Sequence[Build], n_experts: int
                    ) -> dict[str, FileChecksums]:
    """The checksums of every build's weight files (at pack time, on the files that ship)."""
    folder = Path(folder)
    dense: dict[str, dict[str, RangeChecksum]] = {}
    experts: dict[str, dict[str, tuple[str, ...]]] = {}
    for build in builds:
        for name, spans in dense_spans(folder, build).items():
            dense.setdefault(name, {}).update(_hash_spans(folder / name, spans))
        with _opened(folder / build.expert_file) as fd:
            table = experts.setdefault(build.expert_file, {})
            for tensor, offset, stride, n in expert_spans(build, n_experts):
                table[tensor] = tuple(
                    f"{hash_range(fd, offset + e * stride, offset + (e + 1) * stride):016x}"
                    for e in range(n)
                )
    return {
        name: FileChecksums(SCHEME, dense.get(name, {}), experts.get(name, {}))
        for name in sorted(set(dense) | set(experts))
    }


def _hash_spans(path: Path, spans: dict[str, Span]) -> dict[str, RangeChecksum]:
    with _opened(path) as fd:
        return {
            name: RangeChecksum(start, end - start, f"{hash_range(fd, start, end):016x}")
            for name, (start, end) in sorted(spans.items())
        }


class _opened:
    """An O_RDONLY descriptor as a context manager (no Python file object buffering)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# --- checking a whole bundle (`edgemoe verify --fast`) ------------------------------------------
def dense_ranges_of(manifest: Manifest, name: str) -> Iterator[tuple[str, int, int, int]]:
    """(what, start, end, expected digest) of every checksummed dense range of one file."""
    for what, r in manifest.checksums[name].dense.items():
        yield what, r.offset, r.offset + r.bytes, int(r.xxh3, 16)


def expert_ranges_of(manifest: Manifest, name: str) -> Iterator[tuple[str, int, int, int]]:
    """(what, start, end, expected digest) of every checksummed expert slice of one file."""
    strides = {t.name: (t.offset, t.stride) for b in manifest.all_builds()
               for x in b.expert_layers for t in x.tensors}
    for tensor, digests in manifest.checksums[name].experts.items():
        offset, stride = strides[tensor]
        for e, hexdigest in enumerate(digests):
            start = offset + e * stride
            yield f"{tensor} expert {e}", start, start + stride, int(hexdigest, 16)


def ranges_of(manifest: Manifest, name: str) -> Iterable[tuple[str, int, int, int]]:
    """Every checksummed range of one file: its dense ranges, then its expert slices."""
    yield from dense_ranges_of(manifest, name)
    yield from expert_ranges_of(manifest, name)


def check_file(path: Path, manifest: Manifest) -> list[str]:
    """Every checksummed range of one file re-hashed; one problem line per bad range (the file,
    the tensor and the byte range, or the read error)."""
    problems: list[str] = []
    buf = bytearray(CHUNK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return [f"{path.name}: cannot be read ({e.strerror})"]
    try:
        for what, start, end, expected in ranges_of(manifest, path.name):
            try:
                got = hash_range(fd, start, end, buf)
            except OSError as e:
                problems.append(f"{path.name}: {what} [{start}, {end}): {_reason(e)}")
                continue
            if got != expected:
                problems.append(f"{path.name}: {what} [{start}, {end}): checksum mismatch")
    finally:
        os.close(fd)
    return problems


def _reason(error: OSError) -> str:
    if isinstance(error, RangeReadError):
        return str(error)
    return f"read error ({os.strerror(error.errno) if error.errno else error})"
