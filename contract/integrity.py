"""Sampled block hashes: a load-time integrity check that reads a few pages, not the whole file.

`edgemoe verify` re-hashes every byte, which takes as long as reading the model; a kiosk that
restarts its service cannot pay that at each start. So at pack time the manifest records, for
each model and data file, the sha256 of a deterministic set of fixed-size blocks, and opening a
bundle re-hashes just those blocks.

Scheme `sha256-blocks-v1`. The file is cut into 4 KiB blocks (block k is the bytes
[k*4096, min((k+1)*4096, size)), so each block is one page and one read). Chosen:
  * the first and the last block of the file;
  * 256 blocks spread evenly over the file (block floor(i*n/256), i = 0..255; a file of at most
    256 blocks, 1 MiB, is therefore covered whole);
  * for every region the file's own table names (GGUF: the header, then each tensor's data;
    ONNX external data: each initializer), the block holding its first byte and the block
    holding its last byte, so a tensor that was never written or was cut short is caught;
  * at most 1,024 blocks (4 MiB) in all: if the region ends would pass that, an evenly spaced
    subset of them is kept.
What it catches: a file that was truncated and padded back to size, a tensor region never
written (zeros), a partly copied file, a mix of two builds, a damaged header; any damaged run
longer than the spacing of the spread blocks (about size/256). It cannot see a flipped bit in an
unsampled page. That is what the full check (`verify=True`, `edgemoe verify`) is for.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from contract.errors import BundleError
from contract.manifest import Build, Manifest, SampledHashes

SCHEME = "sha256-blocks-v1"
BLOCK_BYTES = 4096
SPREAD_BLOCKS = 256
MAX_BLOCKS = 1024

Region = tuple[int, int]  # [start, end) in bytes


def choose_blocks(
    size: int,
    regions: Iterable[Region] = (),
    block_bytes: int = BLOCK_BYTES,
    spread: int = SPREAD_BLOCKS,
    cap: int = MAX_BLOCKS,
) -> tuple[int, ...]:
    """The byte offsets of the blocks to hash, sorted; a pure function of its arguments, so the
    packer and any reader agree without sharing state."""
    if size <= 0:
        return ()
    n = -(-size // block_bytes)
    chosen = {0, n - 1}
    s = min(spread, n)
    chosen.update(i * n // s for i in range(s))
    ends: set[int] = set()
    for start, end in regions:
        end = min(end, size)
        if 0 <= start < end:
            ends.update((start // block_bytes, (end - 1) // block_bytes))
    extra = sorted(ends - chosen)
    room = max(cap - len(chosen), 0)
    if len(extra) > room:
        extra = [extra[i * len(extra) // room] for i in range(room)] if room else []
    chosen.update(extra)
    return tuple(b * block_bytes for b in sorted(chosen))


def sample_file(
    path: Path, regions: Iterable[Region] = (), block_bytes: int = BLOCK_BYTES
) -> SampledHashes:
    """Hash the chosen blocks of one file (at pack time, on the file that ships)."""
    size = Path(path).stat().st_size
    offsets = choose_blocks(size, regions, block_bytes)
    with open(path, "rb") as f:
        blocks = {o: _digest(f.fileno(), o, block_bytes) for o in offsets}
    return SampledHashes(SCHEME, block_bytes, blocks)


def _digest(fd: int, offset: int, block_bytes: int) -> str:
    return hashlib.sha256(os.pread(fd, block_bytes, offset)).hexdigest()


def check_file(path: Path, sampled: SampledHashes) -> int:
    """Re-hash the recorded blocks of `path`; returns the bytes read, raises one BundleError
    naming the file, how many blocks differ and where the first one is."""
    if sampled.scheme != SCHEME:
        return 0  # written by a newer packager: not ours to judge (the full check still is)
    bad: list[int] = []
    read = 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:  # e.g. a bundle another user packed with private modes
        raise BundleError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        size = os.fstat(fd).st_size
        _prefetch(fd, sorted(sampled.blocks), sampled.block_bytes)
        for offset, expected in sorted(sampled.blocks.items()):
            if offset >= size:
                bad.append(offset)
                continue
            data = os.pread(fd, sampled.block_bytes, offset)
            read += len(data)
            if hashlib.sha256(data).hexdigest() != expected:
                bad.append(offset)
    finally:
        os.close(fd)
    if bad:
        first = bad[0]
        raise BundleError(
            f"{path}: {len(bad)} of {len(sampled.blocks)} sampled blocks do not match the "
            f"manifest, the first at bytes [{first}, {first + sampled.block_bytes}) (the file is "
            f"damaged or was changed; `edgemoe verify` re-hashes it all; re-pull or re-pack)"
        )
    return read


def _prefetch(fd: int, offsets: Sequence[int], block_bytes: int) -> None:
    """Ask for every block at once, then read them: storage serves the queued requests in
    parallel instead of paying one latency per block (medium fixture, 328 blocks, page cache
    dropped: 258 ms one by one, 7-15 ms queued), and nothing around the blocks is read ahead."""
    if not hasattr(os, "posix_fadvise"):
        return
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    for offset in offsets:
        os.posix_fadvise(fd, offset, block_bytes, os.POSIX_FADV_WILLNEED)


def gguf_regions(path: Path) -> list[Region]:
    """The header, then each tensor's data, as the GGUF's own tensor table places them."""
    from contract.gguf_layout import open_reader

    reader = open_reader(path)
    regions = [(0, int(reader.data_offset))]
    regions += [(int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in reader.tensors]
    return regions


def onnx_data_regions(model: Path, data_file: str) -> list[Region]:
    """Each initializer the graph keeps in `data_file` (offset, length)."""
    from contract.onnx_layout import external_tensors

    return [
        (t.offset, t.offset + t.length)
        for t in external_tensors(model).values()
        if t.location == data_file and t.length > 0
    ]


def sample_builds(folder: Path, builds: Sequence[Build]) -> dict[str, SampledHashes]:
    """Sampled hashes of every build's model file and external data file (at pack time)."""
    folder = Path(folder)
    out: dict[str, SampledHashes] = {}
    for build in builds:
        model = folder / build.model_file
        if build.format == "gguf":
            out[build.model_file] = sample_file(model, gguf_regions(model))
        else:
            out[build.model_file] = sample_file(model)
        if build.data_file is not None:
            regions = onnx_data_regions(model, build.data_file)
            out[build.data_file] = sample_file(folder / build.data_file, regions)
    return out


def build_files(build: Build) -> tuple[str, ...]:
    return (build.model_file, *((build.data_file,) if build.data_file else ()))


def check_build(folder: Path, manifest: Manifest, build: Build) -> int:
    """Check the sampled blocks of the files one build runs from (nothing recorded, as in a
    bundle packed before this check existed: nothing to check). Returns the bytes read."""
    return sum(
        check_file(Path(folder) / name, manifest.integrity[name])
        for name in build_files(build)
        if name in manifest.integrity
    )
