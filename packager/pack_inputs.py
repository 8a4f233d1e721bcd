"""The typed records a pack runs on: what the user asked (`PackOptions`), what each stage
derived (`Opened`, `PackPlan`, `Prepared`), frozen together as `PackInputs`, and the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.manifest import Manifest
from packager.pack_report import PackReport
from packager.prepare import Prepared
from packager.source import Checkpoint

if TYPE_CHECKING:
    from contract.device_profile import DeviceProfile
    from packager.plan.expert_usage import ExpertUsage

MODEL_FILE = "model.gguf"
REPORT_FILE = "report.json"
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class PackOptions:
    """What the user asked of `pack`, and only that: what the stages derive is in `PackInputs`.

    Calibration text: `calibration` holds the user's texts; they give the usage profile that
    picks the hot set. `prune` and `use_imatrix` need calibration text as well: without
    `calibration` they use edgemoe's shipped general-purpose text
    (`packager.default_texts.default_calibration_text()`), never a test corpus, and report.json
    records which text was used: `"calibration_text": "edgemoe default (general)"`, or "user".
    A model meant for one domain should be calibrated on that domain's text. The held-out text
    of the divergence report works the same way: `eval_text`, else the shipped held-out text.
    """

    src: str
    out_dir: Path
    profile: str = "laptop-16gb"
    format: str | None = None  # "gguf", "onnx" or "gguf,onnx"; None: the profile's `formats`
    quant: str | None = None  # None: the profile's default (ONNX: fp32|fp16|int8|int4)
    force: bool = False
    revision: str | None = None
    cache_dir: Path | None = None
    threads: int = 0
    reference: bool | None = None  # None: measure divergence when torch+transformers import
    eval_text: str | None = None  # held-out text for the divergence report
    eval_tokens: int = 512
    calibration: tuple[str, ...] = ()  # texts: usage profile -> the plan's hot set
    prune: float = 0.0  # fraction of experts to remove per layer (usage-guided)
    distill: int = 0  # steps of distillation of the pruned model on the calibration text
    use_imatrix: bool = False  # importance matrix from calibration text for the quantizer
    follow_plan: bool = True  # quant, dense upgrades and hot set from packager.plan
    usage: ExpertUsage | None = None  # a measured usage profile (`--usage`); wins over calibration


@dataclass(frozen=True)
class PackResult:
    """The published bundle, its manifest and report, and where the time went."""

    bundle: Path
    manifest: Manifest
    report: PackReport | None  # None: nothing measured or prepared (no report.json)
    seconds: dict[str, float]  # per stage: open prepare plan convert [quantize reference] write


@dataclass(frozen=True)
class Opened:
    """The open stage's output: everything checked before any work is done."""

    checkpoint: Checkpoint
    profile: DeviceProfile
    quant: str  # asked for, or the profile's default; known to llama.cpp's quantizer
    reference: bool  # measure the build against transformers
    formats: tuple[str, ...] = ("gguf",)  # the builds to write, the primary first
    onnx_quant: str | None = None  # fp32|fp16|int8|int4 when an ONNX build is written


@dataclass(frozen=True)
class PackPlan:
    """The plan stage's output: the bundle's quant and what goes with it."""

    quant: str
    tensor_types: dict[str, str] = field(default_factory=dict)  # regex -> ggml type
    hot_experts: dict[int, tuple[int, ...]] = field(default_factory=dict)  # hottest first
    hot_shares: dict[int, tuple[float, ...]] = field(default_factory=dict)  # in that order
    plan: dict[str, Any] | None = None  # the planner's record, shipped in the manifest


@dataclass(frozen=True)
class PackInputs:
    """Every input `pack` derived, frozen: convert, quantize, reference and write read only
    this, so nothing is opened again from a path or searched for on disk between stages.
    """

    options: PackOptions
    opened: Opened
    prepared: Prepared
    plan: PackPlan

    @property
    def checkpoint(self) -> Checkpoint:
        """The checkpoint being packed: the pruned copy when pruning, else the opened one."""
        return self.prepared.checkpoint
