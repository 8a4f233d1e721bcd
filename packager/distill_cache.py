"""The teacher's next-token distributions for distillation, kept as top-k log-probabilities.

A full row of logits per position (vocab x 4 bytes: 600 KB for a 150k vocabulary) would make the
teacher's outputs on calibration text larger than the model, so each row is reduced, as it is
produced, to its k most likely tokens plus one lumped "tail" bucket holding the rest of the
probability mass. The student is then matched on those k+1 outcomes: its own tail is its mass
outside the teacher's top-k ids. That is the exact KL between both distributions coarsened to
k+1 outcomes (a lower bound of the full KL, equal to it when k covers the vocabulary), and,
unlike renormalising the top-k alone, it still penalises a student that puts mass where the
teacher puts almost none. Small caches stay in memory; larger ones go to numpy memmaps in a
temporary folder that is removed however the run ends.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from packager.progress import Progress

IN_MEMORY_LIMIT = 64 * 2**20  # bytes; a larger cache lives in memmaps on disk


@dataclass(frozen=True)
class WindowTargets:
    """One window's teacher targets: [n, k] log-probs and token ids, [n] log tail mass."""

    logp: np.ndarray
    index: np.ndarray
    tail: np.ndarray

    @staticmethod
    def concat(parts: Sequence[WindowTargets]) -> WindowTargets:
        if len(parts) == 1:
            return parts[0]
        return WindowTargets(np.concatenate([p.logp for p in parts]),
                             np.concatenate([p.index for p in parts]),
                             np.concatenate([p.tail for p in parts]))


class TeacherCache:
    """Top-k teacher log-probabilities of every position of every window, written once, in
    window order, then read window by window (possibly many times) by the training loop."""

    def __init__(self, lengths: Sequence[int], k: int, folder: Path | None) -> None:
        self.lengths = tuple(int(n) for n in lengths)
        self.k = k
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        n = int(self.offsets[-1])
        self.on_disk = folder is not None
        if folder is None:
            self.logp = np.zeros((n, k), np.float32)
            self.index = np.zeros((n, k), np.int32)
            self.tail = np.zeros(n, np.float32)
        else:
            self.logp = np.lib.format.open_memmap(folder / "logp.npy", "w+", np.float32, (n, k))
            self.index = np.lib.format.open_memmap(folder / "index.npy", "w+", np.int32, (n, k))
            self.tail = np.lib.format.open_memmap(folder / "tail.npy", "w+", np.float32, (n,))

    @staticmethod
    def nbytes_for(n_positions: int, k: int) -> int:
        return n_positions * (k * 8 + 4)

    @property
    def n_positions(self) -> int:
        return int(self.offsets[-1])

    def put(self, window: int, targets: WindowTargets) -> None:
        a, b = int(self.offsets[window]), int(self.offsets[window + 1])
        if targets.logp.shape != (b - a, self.k):
            raise ValueError(f"window {window}: expected {(b - a, self.k)} targets, "
                             f"got {targets.logp.shape}")
        self.logp[a:b], self.index[a:b], self.tail[a:b] = targets.logp, targets.index, targets.tail

    def get(self, window: int) -> WindowTargets:
        a, b = int(self.offsets[window]), int(self.offsets[window + 1])
        # Copies: nothing handed out keeps a memmap (and its file) open after `close`.
        return WindowTargets(np.array(self.logp[a:b]), np.array(self.index[a:b]),
                             np.array(self.tail[a:b]))

    def close(self) -> None:
        """Release the memmaps; their files go with the temporary folder."""
        empty = np.zeros((0, self.k), np.float32)
        self.logp, self.index, self.tail = empty, empty.astype(np.int32), empty[:, 0]


# --- the math (torch) ----------------------------------------------------------------------
def top_k_targets(logits: torch.Tensor, k: int, temperature: float) -> WindowTargets:
    """[n, vocab] teacher logits -> the k most likely tokens at `temperature` and the tail."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, index = torch.topk(logp, k, dim=-1)
    if k < logp.shape[-1]:
        tail = logp.scatter(-1, index, float("-inf")).logsumexp(-1)
    else:
        tail = torch.full(logp.shape[:-1], float("-inf"))
    return WindowTargets(values.numpy(), index.to(torch.int32).numpy(), tail.numpy())


def top_k_kl(student_logits: torch.Tensor, targets: WindowTargets,
             temperature: float) -> torch.Tensor:
    """Per position KL(teacher || student) over the teacher's top-k ids plus the tail bucket.

    Both sides are at `temperature`; the caller scales by T^2 (so gradient sizes do not shrink
    as T grows, as in Hinton et al.'s distillation).
    """
    import torch

    lq = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    lp = torch.from_numpy(targets.logp)
    index = torch.from_numpy(targets.index).long()
    kl = (lp.exp() * (lp - lq.gather(-1, index))).sum(-1)
    if index.shape[-1] < lq.shape[-1]:
        lp_tail = torch.from_numpy(targets.tail)
        p_tail = lp_tail.exp()  # 0 where the teacher's top-k held all its mass (log = -inf)
        lq_tail = lq.scatter(-1, index, float("-inf")).logsumexp(-1)
        safe = torch.where(torch.isfinite(lp_tail), lp_tail, torch.zeros_like(lp_tail))
        kl = kl + p_tail * (safe - lq_tail)
    return kl


def same_length_groups(indices: Sequence[int], windows: Sequence[Sequence[int]],
                       size: int) -> list[list[int]]:
    """`indices` split into groups of at most `size` windows of one length, order kept within
    a length: each group is one padded-free batch (windows are all `seq_len` long except the
    last of each text)."""
    by_length: dict[int, list[list[int]]] = {}
    for i in indices:
        groups = by_length.setdefault(len(windows[i]), [[]])
        if len(groups[-1]) == size:
            groups.append([])
        groups[-1].append(i)
    return [g for groups in by_length.values() for g in groups]


# --- building ------------------------------------------------------------------------------
@contextmanager
def teacher_cache(
    load_teacher: Callable[[], torch.nn.Module],
    windows: Sequence[Sequence[int]],
    k: int,
    temperature: float,
    *,
    folder: Path | None = None,
    in_memory_limit: int = IN_MEMORY_LIMIT,
    batch: int = 1,
    progress: Progress | None = None,
) -> Iterator[TeacherCache]:
    """Load the teacher, run it over every window once, keep its top-k targets, free it.

    Only one batch's logits (at most `batch` windows) exist at a time, and the teacher is gone
    before the cache is handed out, so it never shares memory with the student. The cache is
    in memory when it needs at most `in_memory_limit` bytes, else in memmaps under a temporary
    folder inside `folder` (the system's temp folder when None), removed when the context
    ends.
    """
    import torch

    lengths = [len(w) for w in windows]
    nbytes = TeacherCache.nbytes_for(sum(lengths), k)
    with _cache_folder(nbytes > in_memory_limit, folder) as where:
        cache = TeacherCache(lengths, k, where)
        try:
            if progress is not None:
                progress.stage("teacher logits", len(windows))
            teacher, logits = load_teacher(), None
            with torch.no_grad():
                for group in same_length_groups(range(len(windows)), windows, batch):
                    ids = torch.tensor([list(windows[i]) for i in group])
                    logits = teacher(input_ids=ids, use_cache=False).logits
                    for row, i in enumerate(group):
                        cache.put(i, top_k_targets(logits[row], k, temperature))
                    if progress is not None:
                        progress.advance(len(group))
            del teacher, logits
            gc.collect()
            yield cache
        finally:
            cache.close()


@contextmanager
def _cache_folder(on_disk: bool, parent: Path | None) -> Iterator[Path | None]:
    if not on_disk:
        yield None
        return
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgemoe-teacher-", dir=parent) as tmp:
        yield Path(tmp)
