"""The packager's entry points: `pack`, `inspect`, `verify`. The CLI only parses and calls these.

`pack` runs stages over typed records: `PackOptions` (what the user asked) -> open (`Opened`)
-> prepare (`Prepared`) -> plan (`PackPlan`), frozen together as `PackInputs`; then convert,
quantize, reference and write read only `PackInputs`. Each stage is timed on its own.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.manifest import Manifest, read_manifest
from contract.verify import VerifyReport, verify_bundle
from packager import onnx_stage
from packager.bundle import (
    check_destination,
    check_free_space,
    staging_dir,
    work_dir,
)
from packager.bundle_writer import write_bundle
from packager.composite import composite_note
from packager.errors import PackError
from packager.families import family_for
from packager.gguf_build import BASE_TYPES, write_gguf
from packager.onnx_stage import onnx_quant_for, parse_formats
from packager.pack_inputs import (
    MODEL_FILE,
    Opened,
    PackInputs,
    PackOptions,
    PackPlan,
    PackResult,
)
from packager.pack_report import PackReport
from packager.prepare import F32_NAME, Prepared, prepare
from packager.progress import NullProgress, Progress
from packager.quantize import QuantizeOptions, llama_ftype, quantize
from packager.source import Checkpoint, open_checkpoint

if TYPE_CHECKING:
    from contract.device_profile import DeviceProfile
    from packager.onnx_export import OnnxExport

__all__ = ["Opened", "PackInputs", "PackOptions", "PackPlan", "PackResult", "inspect", "pack",
           "verify"]


def _profile(name: str) -> DeviceProfile:
    from device_profiles import load_profile

    return load_profile(name)


def _estimate_bytes(ckpt: Checkpoint) -> int:
    n = sum(math.prod(t.shape) for t in ckpt.tensors.values())
    return n * 4


def _default_text_name() -> str:
    from packager.default_texts import DEFAULT_TEXT_NAME

    return DEFAULT_TEXT_NAME


def _default_eval_text() -> str:
    from packager.default_texts import default_heldout_text

    return default_heldout_text()


def _divergence_report(inputs: PackInputs, model: Path) -> dict[str, Any]:
    from packager.fidelity import measure_gguf

    opts = inputs.options
    text = opts.eval_text or _default_eval_text()
    div = measure_gguf(inputs.checkpoint.path, model, text, n_tokens=opts.eval_tokens)
    return {
        "quant": inputs.plan.quant,
        "reference": "transformers float32",
        "eval_text": "user" if opts.eval_text else _default_text_name(),
        "eval_tokens": div.n_tokens,
        "divergence": div.to_dict(),
    }


def _measured(inputs: PackInputs, model: Path,
              exported: OnnxExport | None) -> dict[str, dict[str, Any]]:
    """Divergence of each build vs transformers, by format (the report puts the primary
    build's at the top level, the other's under its format's name)."""
    opts, opened = inputs.options, inputs.opened
    reports: dict[str, dict[str, Any]] = {}
    if "gguf" in opened.formats:
        reports["gguf"] = _divergence_report(inputs, model)
    if exported is not None:
        text = opts.eval_text or _default_eval_text()
        reports["onnx"] = {
            **onnx_stage.divergence(
                inputs.checkpoint, exported.model_file, text, opts.eval_tokens, exported.quant,
                exported.scheme,
            ),
            "eval_text": "user" if opts.eval_text else _default_text_name(),
        }
    return reports


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Time one stage on its own into `seconds[stage]`; a stage that did not run has no entry."""
    t0 = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - t0


def pack(opts: PackOptions, progress: Progress | None = None) -> PackResult:
    """Checkpoint -> bundle directory, atomically. Raises PackError subclasses on bad input.

    Stages: open -> prepare -> plan -> convert -> quantize (not for F32/F16/BF16) -> reference
    (when measured) -> write. Intermediates (pruned checkpoint, F32 GGUF) live in a work folder
    beside the bundle and never ship.
    """
    progress = progress or NullProgress()
    seconds: dict[str, float] = {}
    out_dir = Path(opts.out_dir)
    with _timed(seconds, "open"):
        opened = _open(opts)
    with work_dir(out_dir) as work, staging_dir(out_dir, opts.force) as stage:
        with _timed(seconds, "prepare"):
            prepared = prepare(
                opened.checkpoint,
                work,
                calibration=opts.calibration,
                prune=opts.prune,
                imatrix=opts.use_imatrix,
                measure=opened.reference,
                eval_text=opts.eval_text,
                distill_steps=opts.distill,
                threads=opts.threads,
            )
        with _timed(seconds, "plan"):
            inputs = PackInputs(opts, opened, prepared, _plan(opts, opened, prepared))
        model = stage / MODEL_FILE
        if "gguf" in opened.formats:
            with _timed(seconds, "convert"):
                base = _convert(inputs, model, work, progress)
            if base != model:
                with _timed(seconds, "quantize"):
                    _quantize(inputs, base, model, progress)
        exported: OnnxExport | None = None
        if opened.onnx_quant is not None:
            with _timed(seconds, "onnx"):
                progress.stage(f"export ONNX ({opened.onnx_quant})", 1)
                exported = onnx_stage.export(
                    inputs.checkpoint, stage, opened.onnx_quant, inputs.prepared.imatrix
                )
                progress.advance()
        measured = None
        if opened.reference:
            with _timed(seconds, "reference"):
                progress.stage("measure divergence", 1)
                measured = _measured(inputs, model, exported)
        report: PackReport | None = PackReport.of(
            prepared.report, text_model=composite_note(opened.checkpoint), measured=measured,
            primary=opened.formats[0])
        if report.empty:
            report = None
        with _timed(seconds, "write"):
            manifest = write_bundle(inputs, stage, report, exported)
    progress.done()
    return PackResult(out_dir.resolve(), manifest, report, seconds)


def _open(opts: PackOptions) -> Opened:
    """Check every option and open the checkpoint; bad input fails here, before any work."""
    profile = _profile(opts.profile)
    formats = parse_formats(opts.format, profile.formats)
    asked = opts.quant or profile.default_quant
    onnx_quant = onnx_quant_for(asked, "gguf" not in formats) if "onnx" in formats else None
    quant = asked.upper() if "gguf" in formats else profile.default_quant.upper()
    llama_ftype(quant)  # unknown types fail before any work
    check_destination(Path(opts.out_dir), opts.force)
    ckpt = open_checkpoint(opts.src, opts.revision, opts.cache_dir)
    family_for(ckpt.config).check(ckpt, formats)  # unsupported/dense models fail before any work
    return Opened(ckpt, profile, quant, _use_reference(opts), formats, onnx_quant)


def _use_reference(opts: PackOptions) -> bool:
    if opts.reference is not None:
        return opts.reference
    from packager.fidelity import reference_available

    return reference_available()


def _plan(opts: PackOptions, opened: Opened, prepared: Prepared) -> PackPlan:
    """Let the planner choose quant, dense upgrades and the hot set (an explicit --quant wins).

    The hot set comes from the user's usage profile if given, else from calibration (in the
    pruned model's expert ids when pruning). `follow_plan=False` keeps the asked-for quant.
    """
    if not opts.follow_plan:
        return PackPlan(opened.quant)
    from packager.planning import plan_for

    usage = opts.usage
    if usage is None and prepared.usage is not None:
        usage = prepared.usage.to_planner_usage()
    ckpt = prepared.checkpoint
    gguf_quant = opts.quant if "gguf" in opened.formats else None
    plan = plan_for(ckpt, opened.profile, usage, quant=gguf_quant)
    if not plan.fits:
        raise PackError(
            f"{ckpt.path.name} does not fit profile {plan.profile} at {plan.quant_experts}: "
            + "; ".join(plan.suggestions or ("no smaller configuration found",))
        )
    tensor_types = {} if plan.quant_experts in BASE_TYPES else dict(plan.tensor_types)
    return PackPlan(
        quant=str(plan.quant_experts).upper(),
        tensor_types=tensor_types,
        hot_experts=dict(plan.hot_experts),
        hot_shares=dict(plan.hot_shares),
        plan=plan.to_dict(),
    )


def _convert(inputs: PackInputs, model: Path, work: Path, progress: Progress) -> Path:
    """The checkpoint as a GGUF: the bundle's model itself for F32/F16/BF16, else the one F32
    intermediate the quantizer starts from (calibration's, when llama.cpp already wrote it)."""
    ckpt, quant = inputs.checkpoint, inputs.plan.quant
    check_free_space(Path(inputs.options.out_dir), int(_estimate_bytes(ckpt) * 2.2))
    base = quant if quant in BASE_TYPES else "F32"
    out = model if base == quant else work / F32_NAME
    progress.stage(f"convert ({base})", len(ckpt.tensors))
    written = inputs.prepared.f32 if base == "F32" else None
    if written is not None:
        if written != out:
            os.replace(written, out)  # an F32 bundle: the intermediate is the model
        progress.advance(len(ckpt.tensors))
        return out
    write_gguf(ckpt, out, base, progress=lambda *_: progress.advance())
    return out


def _quantize(inputs: PackInputs, base: Path, model: Path, progress: Progress) -> None:
    """llama.cpp's quantizer from the F32 intermediate, which is then deleted to free its space."""
    plan = inputs.plan
    progress.stage(f"quantize ({plan.quant})", 1)
    # What the checkpoint already holds in a GGML block format stays as it is (gpt-oss's MXFP4
    # experts): the family's fixed types win over the plan's.
    fixed = family_for(inputs.checkpoint.config).gguf.fixed_types()
    options = QuantizeOptions(
        plan.quant, inputs.options.threads, inputs.prepared.imatrix,
        {**plan.tensor_types, **fixed},
    )
    quantize(base, model, options)
    base.unlink()
    progress.advance()


def inspect(bundle: Path) -> Manifest:
    return read_manifest(Path(bundle))


def verify(bundle: Path, fast: bool = False) -> VerifyReport:
    """Re-hash a bundle: every file by sha256, or (`fast`) the weights by their xxh3 checksums."""
    return verify_bundle(Path(bundle), fast=fast)
