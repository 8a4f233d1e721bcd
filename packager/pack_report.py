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
    # pruning (fraction, strategy, measured loss, experts kept: packager/prune.py) and
    # distillation (packager/distill.py) as those stages report them.
    pruning: dict[str, Any] | None = None
    distillation: dict[str, Any] | None = None
    imatrix: Imatrix | None = None

    @classmethod
    def of(cls, prepared: dict[str, Any], *, text_model: str | None = None,
           measured: dict[str, dict[str, Any]] | None = None,
           primary: str | None = None) -> PackReport:
        """From the prepare stage's report, a composite checkpoint's note and each build's
        measurement (by format; `primary` is the one at the top level)."""
        builds = {f: Fidelity.of(m) for f, m in (measured or {}).items()}
        first = builds.pop(primary, None) if primary is not None else None
        return cls(text_model=text_model, fidelity=first, other_builds=builds, **prepared)

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
        for name in ("calibration_text", "pruning", "imatrix", "distillation"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) \
                    else value
        return out
