"""The packager's entry points: `pack`, `inspect`, `verify`. The CLI only parses and calls these."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from contract.manifest import Manifest, MoEShape, read_manifest
from contract.verify import VerifyReport, verify_bundle
from packager import __version__
from packager.archs import adapter_for
from packager.bundle import (
    check_destination,
    check_free_space,
    file_entries,
    staging_dir,
    write_manifest,
)
from packager.errors import PackError
from packager.gguf_build import BASE_TYPES, write_gguf
from contract.gguf_layout import GGUFLayout, read_layout
from packager.prepare import prepare
from packager.progress import NullProgress, Progress
from packager.quantize import QuantizeOptions, llama_ftype, quantize
from packager.source import Checkpoint, open_checkpoint

MODEL_FILE = "model.gguf"
REPORT_FILE = "report.json"
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
)
FORMATS = ("gguf",)


@dataclass(frozen=True)
class PackOptions:
    src: str
    out_dir: Path
    profile: str = "laptop-16gb"
    format: str = "gguf"
    quant: str | None = None  # None: the profile's default
    force: bool = False
    revision: str | None = None
    cache_dir: Path | None = None
    threads: int = 0
    reference: bool | None = None  # None: measure divergence when torch+transformers import
    eval_text: str | None = None  # held-out text for the divergence report
    eval_tokens: int = 512
    calibration: tuple[str, ...] = ()  # texts: usage profile -> the plan's hot set
    prune: float = 0.0  # fraction of experts to remove per layer (usage-guided)
    use_imatrix: bool = False  # importance matrix from calibration text for the quantizer
    follow_plan: bool = True  # quant, dense upgrades and hot set from packager.plan
    usage: Any = None  # packager.plan.ExpertUsage from calibration, for the hot set
    hot_experts: dict[int, tuple[int, ...]] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    imatrix: dict[str, Any] | None = None
    tensor_types: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PackResult:
    bundle: Path
    manifest: Manifest
    report: dict[str, Any] | None
    seconds: dict[str, float]


def _profile(name: str):
    from device_profiles import load_profile

    return load_profile(name)


def _shape(ckpt: Checkpoint, layout: GGUFLayout) -> MoEShape:
    adapter = adapter_for(ckpt.config)
    moe = adapter.moe()
    c = ckpt.config
    return MoEShape(
        hf_architecture=ckpt.architecture,
        gguf_arch=layout.arch,
        n_layers=adapter.n_layers,
        moe_layers=moe.moe_layers,
        n_experts=moe.n_experts,
        top_k=moe.top_k,
        n_shared_experts=moe.n_shared_experts,
        hidden_size=int(c["hidden_size"]),
        vocab_size=int(c["vocab_size"]),
        context_length=int(c.get("max_position_embeddings", 4096)),
    )


def _estimate_bytes(ckpt: Checkpoint) -> int:
    n = sum(math.prod(t.shape) for t in ckpt.tensors.values())
    return n * 4


def _default_text_name() -> str:
    from packager.default_texts import DEFAULT_TEXT_NAME

    return DEFAULT_TEXT_NAME


def _default_eval_text() -> str:
    from packager.default_texts import default_heldout_text

    return default_heldout_text()


def _divergence_report(ckpt: Checkpoint, model: Path, opts: PackOptions, quant: str) -> dict:
    from packager.fidelity import measure_gguf

    text = opts.eval_text or _default_eval_text()
    div = measure_gguf(ckpt.path, model, text, n_tokens=opts.eval_tokens)
    return {
        "quant": quant,
        "reference": "transformers float32",
        "eval_text": "user" if opts.eval_text else _default_text_name(),
        "eval_tokens": div.n_tokens,
        "divergence": div.to_dict(),
    }


def _readme(manifest: Manifest) -> str:
    s = manifest.shape
    return (
        f"# edgemoe bundle\n\n"
        f"- model: {manifest.source.ref} ({s.hf_architecture}, llama.cpp arch `{s.gguf_arch}`)\n"
        f"- quant: {manifest.quant}, profile: {manifest.profile.get('name')}\n"
        f"- experts: {s.n_experts} per MoE layer, top-{s.top_k}, {len(s.moe_layers)} MoE layers\n"
        f"- files: `{manifest.model_file}` (loads in stock llama.cpp), `manifest.json`\n\n"
        "Run it with `edgemoe run THIS_DIR --prompt 'Hello'` or any llama.cpp build:\n"
        f"`llama-cli -m {manifest.model_file}`. Check integrity with `edgemoe verify THIS_DIR`.\n"
    )


def pack(opts: PackOptions, progress: Progress | None = None) -> PackResult:
    """Checkpoint -> bundle directory, atomically. Raises PackError subclasses on bad input."""
    progress = progress or NullProgress()
    seconds: dict[str, float] = {}
    profile = _profile(opts.profile)
    if opts.format not in FORMATS:
        raise PackError(
            f"format '{opts.format}' is not supported (supported: {', '.join(FORMATS)})"
        )
    quant = (opts.quant or profile.default_quant).upper()
    llama_ftype(quant)  # unknown types fail before any work
    out_dir = Path(opts.out_dir)
    check_destination(out_dir, opts.force)
    t0 = time.perf_counter()
    ckpt = open_checkpoint(opts.src, opts.revision, opts.cache_dir)
    adapter_for(ckpt.config)  # unsupported/dense models fail before any work
    with staging_dir(out_dir, opts.force) as stage:
        t0 = time.perf_counter()
        prep = prepare(
            ckpt,
            stage,
            calibration=opts.calibration,
            prune=opts.prune,
            imatrix=opts.use_imatrix,
            measure=_use_reference(opts),
            eval_text=opts.eval_text,
        )
        ckpt = prep.checkpoint
        if prep.imatrix is not None:
            opts = replace(opts, imatrix=prep.imatrix)
        if prep.usage is not None and opts.usage is None:
            opts = replace(opts, usage=prep.usage.to_planner_usage())
        if opts.calibration or opts.prune or opts.use_imatrix:
            seconds["prepare"] = time.perf_counter() - t0
        if opts.follow_plan:
            opts = _apply_plan(opts, ckpt)
            quant = str(opts.quant).upper()
        check_free_space(out_dir, int(_estimate_bytes(ckpt) * 2.2))
        seconds["open"] = time.perf_counter() - t0
        model = stage / MODEL_FILE
        base = quant if quant in BASE_TYPES else "F32"
        base_path = model if base == quant else stage / ".base-f32.gguf"
        t0 = time.perf_counter()
        progress.stage(f"convert ({base})", len(ckpt.tensors))
        write_gguf(ckpt, base_path, base, progress=lambda *_: progress.advance())
        seconds["convert"] = time.perf_counter() - t0
        if base_path != model:
            t0 = time.perf_counter()
            progress.stage(f"quantize ({quant})", 1)
            quantize(
                base_path,
                model,
                QuantizeOptions(quant, opts.threads, opts.imatrix, opts.tensor_types),
            )
            base_path.unlink()
            progress.advance()
            seconds["quantize"] = time.perf_counter() - t0
        for name, text in prep.files.items():
            (stage / name).write_text(text, encoding="utf-8")
        layout = read_layout(model)
        for name in COPIED_FILES:
            if (ckpt.path / name).is_file():
                shutil.copyfile(ckpt.path / name, stage / name)
        report = dict(prep.report) or None
        if _use_reference(opts):
            t0 = time.perf_counter()
            progress.stage("measure divergence", 1)
            report = {**_divergence_report(ckpt, model, opts, quant), **(report or {})}
            seconds["reference"] = time.perf_counter() - t0
        if report:
            (stage / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        for pruned in stage.glob("pruned-checkpoint"):  # the pruned HF copy is not shipped
            shutil.rmtree(pruned)
        manifest = _manifest(ckpt, layout, profile, quant, opts, report is not None, stage)
        (stage / "README.md").write_text(_readme(manifest), encoding="utf-8")
        manifest = replace(manifest, files=file_entries(stage))  # hashed once, README included
        write_manifest(stage, manifest)
    progress.done()
    return PackResult(out_dir.resolve(), manifest, report, seconds)


def _use_reference(opts: PackOptions) -> bool:
    if opts.reference is not None:
        return opts.reference
    from packager.fidelity import reference_available

    return reference_available()


def _apply_plan(opts: PackOptions, ckpt: Checkpoint) -> PackOptions:
    """Let the planner choose quant, dense upgrades and the hot set (an explicit --quant wins)."""
    from packager.planning import plan_for

    plan = plan_for(ckpt, opts.profile, opts.usage, quant=opts.quant)
    if not plan.fits:
        raise PackError(
            f"{ckpt.path.name} does not fit profile {plan.profile} at {plan.quant_experts}: "
            + "; ".join(plan.suggestions or ("no smaller configuration found",))
        )
    tensor_types = {} if plan.quant_experts in BASE_TYPES else dict(plan.tensor_types)
    return replace(
        opts,
        quant=plan.quant_experts,
        tensor_types={**tensor_types, **opts.tensor_types},
        hot_experts=opts.hot_experts or dict(plan.hot_experts),
        plan=plan.to_dict(),
    )


def _manifest(ckpt, layout, profile, quant, opts, has_report, stage) -> Manifest:
    meta = layout.metadata
    return Manifest(
        schema_version=1,
        format="gguf",
        model_file=MODEL_FILE,
        quant=quant,
        source=ckpt.source,
        shape=_shape(ckpt, layout),
        profile=profile.to_dict(),
        dense_bytes=layout.dense_bytes,
        expert_layers=layout.expert_layers,
        hot_experts=dict(opts.hot_experts),
        tokenizer={
            "model": meta.get("tokenizer.ggml.model"),
            "pre": meta.get("tokenizer.ggml.pre"),
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
            "files": [n for n in COPIED_FILES if (stage / n).is_file()],
        },
        chat_template=meta.get("tokenizer.chat_template"),
        files={},
        plan=opts.plan,
        report_file=REPORT_FILE if has_report else None,
        created_by=f"edgemoe {__version__}",
        extra={"tensor_types": layout.tensor_types},
    )


def inspect(bundle: Path) -> Manifest:
    return read_manifest(Path(bundle))


def verify(bundle: Path) -> VerifyReport:
    return verify_bundle(Path(bundle))
