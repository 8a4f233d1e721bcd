"""Distillation after pruning: train the pruned student to match the unpruned teacher, write it.

Pruning removes experts the calibration text rarely routes to, but the survivors and the
routers were trained alongside the removed ones. Here the student is trained on calibration
text to reproduce the teacher's next-token distribution (KL(teacher || student) on
temperature-scaled logits, over every position), and the healed student is written as a new
checkpoint with the same config and tensor names, so everything downstream of pruning (GGUF
conversion, calibration, the fidelity report) takes it unchanged.

Order of work, chosen for memory: the teacher runs alone and leaves only its top-k targets
(`packager.distill_cache`), then it is freed and the student trains (`packager.distill_train`).
Runs are deterministic for a given seed and thread count; the output folder appears complete or
not at all.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from packager.distill_cache import IN_MEMORY_LIMIT
from packager.distill_checkpoint import tensor_specs, write_checkpoint
from packager.distill_train import MODES, DistillError, TrainOutcome, TrainSettings
from packager.progress import NullProgress, Progress

__all__ = [
    "DistillError", "DistillOptions", "DistillResult", "StepMetrics", "distill", "distill_with",
    "tensor_specs",
]

RECORD_FILE = "edgemoe_distill.json"
DEFAULT_LR = {"full": 3e-5, "lora": 5e-4}


@runtime_checkable
class StepMetrics(Protocol):
    """Optional on a `Progress`: the loss after every step, the held-out KL when measured
    (None in between), so a bar can show them. Progress objects without it still get a bar."""

    def metrics(self, step: int, loss: float, heldout_kl: float | None) -> None: ...


@dataclass(frozen=True)
class DistillOptions:
    """Everything `distill` takes besides the folders and texts; validated by `check`."""

    steps: int = 200
    lr: float | None = None  # None: DEFAULT_LR[mode]
    temperature: float = 1.0
    mode: Literal["full", "lora"] = "full"
    lora_rank: int = 8
    seed: int = 0
    top_k: int = 64  # teacher logits kept per position
    seq_len: int = 128  # tokens per training window
    batch_windows: int = 4  # windows per optimizer step
    max_tokens: int | None = None  # cap on calibration tokens (training + held-out slice)
    val_fraction: float = 0.1  # tail of the calibration windows held out for early stopping
    eval_every: int = 10
    patience: int = 3
    min_improvement: float = 1e-3
    grad_clip: float = 1.0
    router_lr_scale: float = 0.01  # routers flip discrete top-k choices: they move slower
    threads: int = 1  # torch intra-op threads while distilling (bit-identity needs the same)
    eval_tokens: int = 512  # held-out tokens of the before/after report
    measure: bool = True  # the before/after report on held-out text (two more model loads)
    cache_dir: Path | None = None  # where a large teacher cache goes (system temp when None)
    cache_memory_limit: int = IN_MEMORY_LIMIT  # bytes; a larger teacher cache goes to disk

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    def check(self) -> None:
        positive = {"steps": self.steps, "lora_rank": self.lora_rank, "top_k": self.top_k,
                    "batch_windows": self.batch_windows, "eval_every": self.eval_every,
                    "patience": self.patience, "threads": self.threads,
                    "eval_tokens": self.eval_tokens}
        for name, value in positive.items():
            if value < 1:
                raise DistillError(f"distill option {name} must be at least 1, got {value}")
        if self.mode not in MODES:
            raise DistillError(f"distill mode '{self.mode}' is unknown (choose from {MODES})")
        if not (self.temperature > 0 and self.learning_rate > 0 and self.grad_clip > 0):
            raise DistillError("distill temperature, lr and grad_clip must be positive, got "
                               f"{self.temperature}, {self.learning_rate}, {self.grad_clip}")
        if self.seq_len < 2:
            raise DistillError(f"distill seq_len must be at least 2 tokens, got {self.seq_len}")
        if not 0 < self.val_fraction < 1:
            raise DistillError(f"distill val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.min_improvement < 1:
            raise DistillError(f"distill min_improvement must be in [0, 1), "
                               f"got {self.min_improvement}")

    def settings(self) -> TrainSettings:
        return TrainSettings(self.steps, self.learning_rate, self.temperature, self.batch_windows,
                             self.eval_every, self.patience, self.min_improvement, self.grad_clip,
                             self.router_lr_scale)


@dataclass(frozen=True)
class DistillResult:
    """What the run did and what it bought; `report` goes into report.json as "distillation"."""

    out_dir: Path
    steps_run: int
    stopped_early: bool
    best_step: int  # 0: no step beat the student as given; it was written unchanged
    best_heldout_kl: float  # on the calibration slice held out for early stopping
    peak_rss_bytes: int  # the process's peak resident set (VmHWM) when the run ended
    seconds: float
    report: dict[str, Any]
    history: tuple[tuple[int, float, float | None], ...] = field(repr=False, default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["history"] = [list(h) for h in self.history]
        return d


def distill(
    teacher_dir: Path,
    student_dir: Path,
    out_dir: Path,
    texts: Sequence[str],
    *,
    steps: int = 200,
    lr: float | None = None,
    temperature: float = 1.0,
    mode: Literal["full", "lora"] = "full",
    lora_rank: int = 8,
    seed: int = 0,
    eval_text: str | None = None,
    progress: Progress | None = None,
    force: bool = False,
    **options: Any,
) -> DistillResult:
    """Train `student_dir` (a pruned copy of `teacher_dir`) to match the teacher on `texts`;
    write the result to `out_dir` as a checkpoint with the student's config and tensor names.

    `texts` are calibration texts; their last `val_fraction` of windows is held out for early
    stopping and never trained on. `eval_text` (else edgemoe's shipped held-out text) gives the
    before/after report. `lr` None picks the mode's default (`DEFAULT_LR`). Further keywords
    are `DistillOptions` fields (top_k, seq_len, batch_windows, eval_every, patience, ...).
    """
    try:
        opts = DistillOptions(steps=steps, lr=lr, temperature=temperature, mode=mode,
                              lora_rank=lora_rank, seed=seed, **options)
    except TypeError as e:
        raise DistillError(f"distill: {e}") from None
    return distill_with(Path(teacher_dir), Path(student_dir), Path(out_dir), texts, opts,
                        eval_text=eval_text, progress=progress, force=force)


def distill_with(teacher_dir: Path, student_dir: Path, out_dir: Path, texts: Sequence[str],
                 opts: DistillOptions, *, eval_text: str | None = None,
                 progress: Progress | None = None, force: bool = False) -> DistillResult:
    """`distill` with its options as one frozen value (what `pack` would hold)."""
    from packager.bundle import check_destination, staging_dir
    from packager.calibrate import load_reference_model
    from packager.distill_cache import teacher_cache
    from packager.distill_train import select_trainable, train
    from packager.prune import PruneEvaluator

    opts.check()
    t0 = time.perf_counter()
    progress = progress or NullProgress()
    check_destination(Path(out_dir).resolve(), force)  # fail before any model is loaded
    _check_pair(teacher_dir, student_dir)
    windows = _windows(teacher_dir, texts, opts)
    n_val = max(1, round(len(windows) * opts.val_fraction))
    train_windows, val_windows = windows[:-n_val], windows[-n_val:]
    heldout, text_name = _eval_text(eval_text)
    with _deterministic(opts.seed, opts.threads) as generator:
        evaluator, before = None, None
        if opts.measure:
            progress.stage("distill: measure before", 1)
            evaluator = PruneEvaluator(teacher_dir, heldout, n_tokens=opts.eval_tokens)
            before = evaluator.report(student_dir)
        with teacher_cache(lambda: load_reference_model(teacher_dir), windows, opts.top_k,
                           opts.temperature, folder=opts.cache_dir,
                           in_memory_limit=opts.cache_memory_limit,
                           batch=opts.batch_windows, progress=progress) as cache:
            student = load_reference_model(student_dir)
            trainable = select_trainable(student, opts.mode, opts.lora_rank, generator)
            progress.stage(f"distill ({opts.mode})", opts.steps)
            outcome = train(student, trainable, train_windows, val_windows, cache,
                            opts.settings(), generator, _step_callback(progress))
        trainable.merge()
        with staging_dir(Path(out_dir), force) as stage:
            progress.stage("distill: write", 1)
            write_checkpoint(student, student_dir, stage)
            del student, trainable
            report = _report(opts, outcome, text_name, windows, n_val)
            if evaluator is not None and before is not None:
                report.update(before=before, after=evaluator.report(stage))
            result = DistillResult(
                out_dir=Path(out_dir).resolve(), steps_run=outcome.steps_run,
                stopped_early=outcome.stopped_early, best_step=outcome.best_step,
                best_heldout_kl=outcome.best_kl, peak_rss_bytes=peak_rss_bytes(),
                seconds=time.perf_counter() - t0, report=report, history=outcome.history)
            report.update(peak_rss_bytes=result.peak_rss_bytes, seconds=result.seconds)
            (stage / RECORD_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    progress.advance(1)
    return result


# --- pieces ------------------------------------------------------------------------------------
def _check_pair(teacher_dir: Path, student_dir: Path) -> None:
    """Both folders hold a config and the same tokenizer: targets are matched token id by id."""
    from packager.families import read_family

    vocab = {}
    for role, folder in (("teacher", teacher_dir), ("student", student_dir)):
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise DistillError(f"{path}: the {role} checkpoint has no config.json")
        config = read_family(Path(folder)).config
        if config.packed_weights and role == "student":
            raise DistillError(f"{folder}: the student stores its experts as "
                               f"{config.packed_weights}, which training cannot write back "
                               "unchanged; distill a checkpoint with float experts")
        vocab[role] = config.vocab_size
    if not (Path(teacher_dir) / "tokenizer.json").is_file():
        raise DistillError(f"{teacher_dir}: no tokenizer.json to tokenize calibration text with")
    vt, vs = vocab["teacher"], vocab["student"]
    if vt != vs:
        raise DistillError(f"{student_dir}/config.json: vocab_size {vs} differs from the "
                           f"teacher's {vt}; the student must share the teacher's tokenizer")


def _windows(teacher_dir: Path, texts: Sequence[str], opts: DistillOptions) -> list[list[int]]:
    """Calibration token windows (each text on its own), capped at `max_tokens`."""
    from tokenizers import Tokenizer

    if isinstance(texts, str):  # a str is a Sequence[str] of characters: surely a mistake
        raise DistillError("distill texts must be a list of strings, got one string")
    from packager.calibrate import split_chunks

    tok = Tokenizer.from_file(str(Path(teacher_dir) / "tokenizer.json"))
    out: list[list[int]] = []
    left = opts.max_tokens if opts.max_tokens is not None else sys.maxsize
    for text in texts:
        for w in split_chunks(tok.encode(text).ids, opts.seq_len):
            w = w[:left]
            if len(w) < 2:
                break
            out.append(w)
            left -= len(w)
    if len(out) < 2:
        raise DistillError(f"calibration text gives {len(out)} window(s) of up to {opts.seq_len} "
                           "tokens; distillation needs at least 2 (one is held out)")
    return out


def _eval_text(eval_text: str | None) -> tuple[str, str]:
    if eval_text:
        return eval_text, "user"
    from packager.default_texts import DEFAULT_TEXT_NAME, default_heldout_text

    return default_heldout_text(), DEFAULT_TEXT_NAME


@contextmanager
def _deterministic(seed: int, threads: int) -> Iterator[Any]:
    """Seeded RNG, fixed thread count, deterministic kernels; the caller's settings come back."""
    import torch

    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield torch.Generator().manual_seed(seed)
        finally:
            torch.use_deterministic_algorithms(prev_det)
            torch.set_num_threads(prev_threads)


def _step_callback(progress: Progress) -> Callable[[int, float, float | None], None]:
    metrics = progress.metrics if isinstance(progress, StepMetrics) else None

    def on_step(step: int, loss: float, heldout_kl: float | None) -> None:
        progress.advance(1)
        if metrics is not None:
            metrics(step, loss, heldout_kl)

    return on_step


def _report(opts: DistillOptions, outcome: TrainOutcome, text_name: str,
            windows: Sequence[Sequence[int]], n_val: int) -> dict[str, Any]:
    """The run's record; the caller adds "before" and "after" when measured, each with the
    pruning report's fields (teacher vs student on the held-out text)."""
    return {
        "mode": opts.mode,
        "steps": outcome.steps_run,
        "stopped_early": outcome.stopped_early,
        "best_step": outcome.best_step,
        "temperature": opts.temperature,
        "lr": opts.learning_rate,
        "seed": opts.seed,
        "top_k_logits": opts.top_k,
        "train_tokens": sum(len(w) for w in windows[:-n_val]),
        "validation_tokens": sum(len(w) for w in windows[-n_val:]),
        "validation_kl": {"before": outcome.initial_kl, "best": outcome.best_kl},
        "eval_text": text_name,
    }


def peak_rss_bytes() -> int:
    """The process's peak resident set so far: VmHWM on Linux, else getrusage's maximum."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # Unix only; /proc above covers Linux

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB

