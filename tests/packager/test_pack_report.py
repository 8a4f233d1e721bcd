"""PackReport: the typed pack report, and report.json as it has always been written."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from packager.pack_report import PackReport

pytestmark = pytest.mark.unit

DIV = {"n_tokens": 64, "top1_agreement": 0.98, "mean_kl": 1e-3, "p99_kl": 1e-2, "max_kl": 0.1,
       "ppl_reference": 5.0, "ppl_candidate": 5.1}
GGUF = {"quant": "Q8_0", "reference": "transformers float32", "eval_text": "user",
        "eval_tokens": 64, "divergence": DIV}
ONNX = {"quant": "int4", "reference": "transformers float32", "eval_tokens": 64,
        "divergence": DIV, "block_size": 32, "scheme": "asymmetric", "codes": "round to nearest",
        "eval_text": "user"}


def test_the_primary_build_is_at_the_top_and_the_other_under_its_format() -> None:
    r = PackReport.of({"calibration_text": "user", "imatrix": {"tensors": 3,
                                                               "calibration_texts": 1}},
                      text_model="the text part", measured={"gguf": GGUF, "onnx": ONNX},
                      primary="gguf")
    assert r.fidelity is not None and r.fidelity.divergence.top1_agreement == 0.98
    assert r.other_builds["onnx"].quantization == {"block_size": 32, "scheme": "asymmetric",
                                                   "codes": "round to nearest"}
    assert r.imatrix is not None and r.imatrix.tensors == 3
    assert r.to_json() == {"text_model": "the text part", **GGUF, "onnx": ONNX,
                           "calibration_text": "user",
                           "imatrix": {"tensors": 3, "calibration_texts": 1}}


def test_a_pack_that_prepared_and_measured_nothing_has_no_report() -> None:
    assert PackReport.of({}).empty
    assert PackReport.of({}, measured={"onnx": ONNX}, primary="onnx").to_json() == ONNX


def test_a_part_no_field_declares_is_refused() -> None:
    with pytest.raises(ValidationError, match="surprise"):
        PackReport.of({"surprise": 1})
    with pytest.raises(ValidationError, match="mean_kl"):
        PackReport.of({}, measured={"gguf": {**GGUF, "divergence": {"top1_agreement": 1.0}}},
                      primary="gguf")


def test_pruning_and_distillation_read_back_as_written() -> None:
    loss = {"n_tokens": 64, "top1_agreement": 0.9, "mean_kl": 0.05, "ppl_orig": 5.0,
            "ppl_pruned": 6.0}
    pruning = {"fraction": 0.25, "strategy": "usage", **loss, "experts": {"n_experts_after": 6}}
    distillation = {"mode": "full", "steps": 10, "stopped_early": False, "best_step": 8,
                    "temperature": 1.0, "lr": 1e-4, "seed": 0, "top_k_logits": 64,
                    "train_tokens": 900, "validation_tokens": 100,
                    "validation_kl": {"before": 0.2, "best": 0.1}, "eval_text": "user",
                    "before": loss, "after": {**loss, "mean_kl": 0.01}, "peak_rss_bytes": 1,
                    "seconds": 2.0}
    r = PackReport.of({"calibration_text": "user", "pruning": pruning,
                       "distillation": distillation})
    assert r.pruning is not None and r.pruning.loss is not None and r.pruning.loss.mean_kl == 0.05
    assert r.distillation is not None and r.distillation.after is not None
    assert r.to_json() == {"calibration_text": "user", "pruning": pruning,
                           "distillation": distillation}
    unmeasured = PackReport.of({"calibration_text": "user",
                                "pruning": {"experts": {"n_experts_after": 6}}})
    assert unmeasured.to_json()["pruning"] == {"experts": {"n_experts_after": 6}}
