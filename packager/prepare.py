"""Pack's prepare stage: calibration text -> usage profile, pruning, importance matrix.

Runs before planning and conversion. It takes the open checkpoint and hands on typed results
(`Prepared`): the checkpoint to convert (a pruned copy when pruning), its usage, the imatrix,
the prune record and, when llama.cpp calibrated it, the F32 GGUF it read, so that conversion
does not write the same file again. Nothing is re-opened from a path or read back from disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.default_texts import (
    DEFAULT_TEXT_NAME,
    default_calibration_text,
    default_heldout_text,
)
from packager.errors import PackError
from packager.source import Checkpoint, open_derived

if TYPE_CHECKING:
    import numpy as np

    from packager.calibrate import Engine
    from packager.prune import PruneResult
    from packager.usage import UsageProfile

F32_NAME = "model-f32.gguf"  # the one F32 intermediate in the work folder
USER_TEXT = "user"


@dataclass(frozen=True)
class Prepared:
    """What the prepare stage hands on; with nothing to prepare, only the checkpoint."""

    checkpoint: Checkpoint  # the one to convert: pruned when pruning, else the opened one
    usage: UsageProfile | None = None  # of `checkpoint`, in its own expert ids
    imatrix: dict[str, np.ndarray] | None = None  # GGUF tensor name -> importance
    pruned: PruneResult | None = None
    f32: Path | None = None  # an F32 GGUF of `checkpoint`, when calibration already wrote one
    calibration_text: str | None = None  # USER_TEXT, DEFAULT_TEXT_NAME, or None (none used)
    report: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # extra bundle files: name -> text


def calibration_texts(calibration: Sequence[str]) -> tuple[list[str], str]:
    """The user's texts, else edgemoe's shipped general text (never a test corpus), and its name.

    `--prune` and `--imatrix` need calibration text even when the user gave none; the name goes
    into report.json so a bundle calibrated on the default says so.
    """
    if calibration:
        return list(calibration), USER_TEXT
    return [default_calibration_text()], DEFAULT_TEXT_NAME


def prepare(
    ckpt: Checkpoint,
    work: Path,
    *,
    calibration: Sequence[str] = (),
    prune: float = 0.0,
    imatrix: bool = False,
    measure: bool = True,
    eval_text: str | None = None,
    engine: Engine = "auto",
    distill_steps: int = 0,
    threads: int = 0,
) -> Prepared:
    """Calibrate when asked (or when pruning needs usage), prune, then compute an imatrix.

    `work` holds what never ships (the pruned checkpoint, the F32 GGUF); `measure` adds the
    transformers cost of pruning to the report; `engine` picks the calibration engine.
    `distill_steps` > 0 (with pruning) trains the pruned model to imitate the unpruned one on
    the calibration text before it is packed (`packager.distill`).
    """
    if not (calibration or prune or imatrix):
        return Prepared(ckpt)
    if not 0 <= prune < 1:
        raise PackError(f"--prune must be in [0, 1), got {prune}")
    if distill_steps and not prune:
        raise PackError("--distill heals a pruned model: give --prune as well")
    texts, text_name = calibration_texts(calibration)
    report: dict[str, Any] = {"calibration_text": text_name}
    usage, f32, pruned = None, None, None
    if calibration or prune:
        usage, f32 = _usage(ckpt, texts, work, engine)
    if prune:
        from packager.prune import prune_for_pack, prune_report

        pruned = prune_for_pack(ckpt, prune, usage, work)
        pruning: dict[str, Any] = {}
        if measure:
            heldout = eval_text or default_heldout_text()
            pruning = {"fraction": prune, "strategy": "usage",
                       **prune_report(ckpt.path, pruned.out_dir, heldout)}
        report["pruning"] = {**pruning, "experts": pruned.to_dict()}
        student = pruned.out_dir
        if distill_steps:
            student = _distill(ckpt.path, student, work, texts, distill_steps, threads, eval_text,
                               measure, report)
        ckpt = open_derived(student, ckpt.source)
        if f32 is not None:
            f32.unlink()  # the unpruned model's; the pruned one gets its own below
        usage, f32 = _usage(ckpt, texts, work, engine)  # hot set in the pruned model's ids
    files: dict[str, str] = {}
    if usage is not None:
        files["usage.json"] = json.dumps(usage.to_dict(), indent=2) + "\n"
    table = None
    if imatrix:
        from packager.imatrix import compute_imatrix

        table = compute_imatrix(ckpt, texts)
        report["imatrix"] = {"tensors": len(table), "calibration_texts": len(texts)}
    return Prepared(ckpt, usage, table, pruned, f32, text_name, report, files)


def _distill(teacher: Path, student: Path, work: Path, texts: list[str], steps: int,
             threads: int, eval_text: str | None, measure: bool,
             report: dict[str, Any]) -> Path:
    """The pruned student trained on the teacher's logits; written under the same folder name
    (it becomes the GGUF's general.name) in its own work subfolder."""
    from packager.distill import DistillOptions, distill_with
    from packager.prune import PACK_FOLDER

    opts = DistillOptions(steps=steps, threads=max(1, threads or 1), measure=measure,
                          cache_dir=work)
    out = work / "distilled" / PACK_FOLDER
    result = distill_with(teacher, student, out, texts, opts, eval_text=eval_text, force=True)
    report["distillation"] = result.report
    return result.out_dir


def _usage(ckpt: Checkpoint, texts: list[str], work: Path,
           engine: Engine) -> tuple[UsageProfile, Path | None]:
    """Usage of `ckpt`; for llama.cpp, with the F32 GGUF written once here and handed on."""
    from packager.calibrate import calibrate, checkpoint_source, pick_engine

    source = checkpoint_source(ckpt)
    chosen = pick_engine(source, engine)
    f32 = None
    if chosen == "llama.cpp":
        from packager.gguf_build import write_gguf

        f32 = write_gguf(ckpt, work / F32_NAME, "F32").path
        source = replace(source, gguf=f32)
    return calibrate(source, texts, engine=chosen), f32
