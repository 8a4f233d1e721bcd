"""Pack-time preparation driven by calibration text: usage profile, pruning, importance matrix.

Runs before conversion: it may replace the checkpoint (pruning writes a smaller one into the
work folder) and adds inputs the planner and quantizer use (usage -> hot set, imatrix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packager.default_texts import (
    DEFAULT_TEXT_NAME,
    default_calibration_text,
    default_heldout_text,
)
from packager.errors import PackError
from packager.source import Checkpoint, open_checkpoint


@dataclass(frozen=True)
class Prepared:
    checkpoint: Checkpoint
    usage: Any = None  # packager.usage.UsageProfile
    imatrix: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # extra bundle files: name -> text


def _texts(calibration: tuple[str, ...]) -> list[str]:
    if calibration:
        return list(calibration)
    return [default_calibration_text()]


def prepare(
    ckpt: Checkpoint,
    work: Path,
    *,
    calibration: tuple[str, ...] = (),
    prune: float = 0.0,
    imatrix: bool = False,
    measure: bool = True,
    eval_text: str | None = None,
) -> Prepared:
    """Calibrate when asked (or when pruning needs usage), prune, then compute an imatrix."""
    if not (calibration or prune or imatrix):
        return Prepared(ckpt)
    from packager.calibrate import calibrate

    if not 0 <= prune < 1:
        raise PackError(f"--prune must be in [0, 1), got {prune}")
    texts = _texts(calibration)
    usage = calibrate(ckpt.path, texts) if (calibration or prune) else None
    report: dict[str, Any] = {
        "calibration_text": "user" if calibration else DEFAULT_TEXT_NAME,
    }
    files: dict[str, str] = {}
    if prune:
        from packager.prune import prune_for_pack, prune_report

        pruned_dir = prune_for_pack(ckpt.path, prune, usage, work)
        if measure:
            report["pruning"] = {
                "fraction": prune,
                "strategy": "usage",
                **prune_report(ckpt.path, pruned_dir, eval_text or default_heldout_text()),
            }
        result = (
            json.loads((pruned_dir / "edgemoe_prune.json").read_text())
            if (pruned_dir / "edgemoe_prune.json").is_file()
            else None
        )
        if result:
            report.setdefault("pruning", {})["experts"] = result
        ckpt = replace(open_checkpoint(pruned_dir), source=ckpt.source)
        usage = calibrate(ckpt.path, texts)  # hot set in the pruned model's expert ids
    if usage is not None:
        files["usage.json"] = json.dumps(usage.to_dict(), indent=2) + "\n"
    table = None
    if imatrix:
        from packager.imatrix import compute_imatrix

        table = compute_imatrix(ckpt.path, texts)
        report["imatrix"] = {"tensors": len(table), "calibration_texts": len(texts)}
    return Prepared(ckpt, usage, table, report, files)
