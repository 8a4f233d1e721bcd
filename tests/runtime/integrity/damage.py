"""Damaging a copy of a real bundle where the open-time sampled check cannot see it: one byte
of one expert slice (chosen so one prompt needs the expert and another does not) or of one
dense tensor, in a 4 KiB block the manifest's sampled hashes do not cover."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import runtime
from contract.manifest import Build, manifest_from_dict

PROMPTS = ("def main():", "The quick brown fox", "import os\nimport sys\n", "class Stack:",
           "for i in range(10):", "Once upon a time", "return None", "x = [1, 2, 3]")
BUDGET = "25%"


@dataclass(frozen=True)
class Damage:
    bundle: Path
    file: str
    tensor: str
    offset: int  # the flipped byte
    layer: int = -1
    expert: int = -1


def copy(src: Path, dst: Path) -> tuple[Path, Build, object]:
    shutil.copytree(src, dst)
    m = manifest_from_dict(json.loads((dst / "manifest.json").read_text()))
    return dst, m.build(), m


def unsampled(m, file: str, start: int, end: int) -> int:
    """A byte offset in [start, end) whose 4 KiB block the sampled hashes do not cover."""
    blocks = m.integrity[file]
    size = blocks.block_bytes
    for at in range(start // size * size, end, size):
        if at not in blocks.blocks and at >= start and at + size <= end:
            return at + size // 2
    raise AssertionError(f"no unsampled block in [{start}, {end}) of {file}")


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def experts_used(bundle: Path, prompt: str, tokens: int, **load) -> set[tuple[int, int]]:
    with runtime.load(bundle, budget=BUDGET, threads=1, n_ctx=256, record_routing=True,
                      **load) as m:
        m.generate(prompt, max_tokens=tokens, temperature=0.0)
        rows = m.pager.probe.rows
        return {(layer, e) for row in rows for layer, ids in row.items() for e in ids}


def pick_expert(bundle: Path, tokens: int, **load) -> tuple[str, str, tuple[int, int], set]:
    """(a prompt, a later prompt, an unpinned expert the later one needs and the first one
    does not, the pinned set)."""
    with runtime.load(bundle, budget=BUDGET, threads=1, n_ctx=256, **load) as m:
        pinned = {(int(k), e) for k, v in m.stats().hot_experts.items() for e in v}
    used = {p: experts_used(bundle, p, tokens, **load) - pinned for p in PROMPTS}
    for first in PROMPTS:
        for later in PROMPTS:
            new = sorted(used[later] - used[first])
            if later != first and new:
                return first, later, new[0], pinned
    raise AssertionError("every prompt routes to the same experts")


def damage_expert(src: Path, dst: Path, layer: int, expert: int) -> Damage:
    bundle, build, m = copy(src, dst)
    tensor = next(x for x in build.expert_layers if x.layer == layer).tensors[0]
    start = tensor.offset + expert * tensor.stride
    offset = unsampled(m, build.expert_file, start, start + tensor.stride)
    flip(bundle / build.expert_file, offset)
    return Damage(bundle, build.expert_file, tensor.name, offset, layer, expert)


def damage_dense(src: Path, dst: Path) -> Damage:
    bundle, build, m = copy(src, dst)
    sums = m.checksums[build.expert_file]
    name, r = max(sums.dense.items(), key=lambda kv: kv[1].bytes)  # the largest dense tensor
    offset = unsampled(m, build.expert_file, r.offset, r.offset + r.bytes)
    flip(bundle / build.expert_file, offset)
    return Damage(bundle, build.expert_file, name, offset)
