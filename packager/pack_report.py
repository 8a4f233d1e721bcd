"""`PackReport`: what a pack measured and did, one typed record; report.json is its `to_json()`.

The primary build's fidelity against transformers sits at the top level of report.json (quant,
reference, eval_text, eval_tokens, divergence and, for ONNX int builds, how its blocks were
quantized); another build's, with the same fields, under its format's name ("onnx", "gguf").
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Divergence(_Record):
    """A build's next-token distributions against transformers float32 on held-out text
    (packager/fidelity.py measures it)."""

    n_tokens: int
    top1_agreement: float
    mean_kl: float
    p99_kl: float
    max_kl: float
    ppl_reference: float
    ppl_candidate: float


class Fidelity(_Record):
    """One build measured against transformers."""

    quant: str
    reference: str  # "transformers float32"
    eval_text: str  # "user", or the name of the shipped held-out text
    eval_tokens: int
    divergence: Divergence
    # ONNX int builds: block size and how scales, zero points and codes were chosen
    # (packager/onnx_export/quant.py describes it); written beside the fields above.
    quantization: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, measured: dict[str, Any]) -> Fidelity:
        """From the flat form a measurement returns (its quantization keys beside the fields)."""
        own = {k: v for k, v in measured.items() if k in cls.model_fields and k != "quantization"}
        return cls(**own, quantization={k: v for k, v in measured.items() if k not in own})

    def to_json(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json", exclude={"quantization"}), **self.quantization}


class HeldOutLoss(_Record):
    """A pruned (or distilled) model against the unpruned one on held-out text
    (packager/prune.py: PruneEvaluator)."""

    n_tokens: int
    top1_agreement: float
    mean_kl: float
    ppl_orig: float
    ppl_pruned: float


class Pruning(_Record):
    """Which experts a pack removed (`experts`: packager/prune.py's record of the pruned
    model) and, when measured, at what cost (`loss`, written beside `fraction` and `strategy`)."""

    experts: dict[str, Any]
    fraction: float | None = None
    strategy: str | None = None
    loss: HeldOutLoss | None = None

    @classmethod
    def of(cls, report: dict[str, Any]) -> Pruning:
        own = {k: v for k, v in report.items() if k in ("experts", "fraction", "strategy")}
        rest = {k: v for k, v in report.items() if k not in own}
        return cls(**own, loss=HeldOutLoss(**rest) if rest else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("fraction", self.fraction),
                                                 ("strategy", self.strategy)) if v is not None}
        if self.loss is not None:
            out.update(self.loss.model_dump(mode="json"))
        return {**out, "experts": self.experts}


class ValidationKL(_Record):
    before: float
    best: float


class Distillation(_Record):
    """The pruned model trained on the unpruned one's logits (packager/distill.py): the run's
    settings and outcome, and the held-out loss before and after when measured."""

    mode: str
    steps: int
    stopped_early: bool
    best_step: int
    temperature: float
    lr: float
    seed: int
    top_k_logits: int
    train_tokens: int
    validation_tokens: int
    validation_kl: ValidationKL
    eval_text: str
    peak_rss_bytes: int
    seconds: float
    before: HeldOutLoss | None = None
    after: HeldOutLoss | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Imatrix(_Record):
    """The importance matrix the quantizers were weighted by."""

    tensors: int
    calibration_texts: int


class PackReport(_Record):
    """What `pack` measured and did; a part that did not run is None."""

    text_model: str | None = None  # a composite checkpoint: which part was packed
    calibration_text: str | None = None  # "user" or the shipped text's name (calibrated packs)
    fidelity: Fidelity | None = None  # the primary build (measured packs)
    other_builds: dict[str, Fidelity] = Field(default_factory=dict)  # by format
    pruning: Pruning | None = None
    distillation: Distillation | None = None
    imatrix: Imatrix | None = None

    @classmethod
    def of(cls, prepared: dict[str, Any], *, text_model: str | None = None,
           measured: dict[str, dict[str, Any]] | None = None,
           primary: str | None = None) -> PackReport:
        """From the prepare stage's report, a composite checkpoint's note and each build's
        measurement (by format; `primary` is the one at the top level)."""
        builds = {f: Fidelity.of(m) for f, m in (measured or {}).items()}
        first = builds.pop(primary, None) if primary is not None else None
        parts = dict(prepared)
        if "pruning" in parts:
            parts["pruning"] = Pruning.of(parts["pruning"])
        return cls(text_model=text_model, fidelity=first, other_builds=builds, **parts)

    @property
    def empty(self) -> bool:
        return not self.to_json()

    def to_json(self) -> dict[str, Any]:
        """report.json: parts that did not run left out."""
        out: dict[str, Any] = {}
        if self.text_model is not None:
            out["text_model"] = self.text_model
        if self.fidelity is not None:
            out.update(self.fidelity.to_json())
        out.update({f: b.to_json() for f, b in self.other_builds.items()})
        if self.calibration_text is not None:
            out["calibration_text"] = self.calibration_text
        if self.pruning is not None:
            out["pruning"] = self.pruning.to_json()
        if self.imatrix is not None:
            out["imatrix"] = self.imatrix.model_dump(mode="json")
        if self.distillation is not None:
            out["distillation"] = self.distillation.to_json()
        return out
