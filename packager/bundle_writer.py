"""The last pack stage: side files, report, README and the manifest (written last, with every
file's hash), for whichever builds (GGUF, ONNX) the pack wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.checksums import checksum_builds
from contract.gguf_layout import read_layout
from contract.integrity import sample_builds
from contract.manifest import Build, FileChecksums, FileEntry, Manifest, MoEShape, SampledHashes
from packager import __version__, onnx_stage
from packager.bundle import file_entries, write_manifest
from packager.families import ModelConfig, family_for
from packager.pack_inputs import COPIED_FILES, MODEL_FILE, REPORT_FILE, PackInputs
from packager.pack_report import PackReport
from packager.source import Checkpoint

if TYPE_CHECKING:
    from packager.onnx_export import OnnxExport


def _readme(inputs: PackInputs, s: MoEShape) -> str:
    """Rendered before the manifest exists: the manifest lists the README's hash."""
    formats, onnx_q = inputs.opened.formats, inputs.opened.onnx_quant
    files, runs = [], []
    if "gguf" in formats:
        files.append(f"`{MODEL_FILE}` ({inputs.plan.quant}; loads in stock llama.cpp)")
        runs.append(f"any llama.cpp build: `llama-cli -m {MODEL_FILE}`")
    if onnx_q is not None:
        files.append(f"`model.onnx` + `model.onnx.data` ({onnx_q}; stock onnxruntime)")
        runs.append("onnxruntime: `InferenceSession('model.onnx')` (genai_config.json beside it)")
    return (
        f"# edgemoe bundle\n\n"
        f"- model: {inputs.checkpoint.source.ref} ({s.hf_architecture})\n"
        f"- profile: {inputs.opened.profile.name}\n"
        f"- experts: {s.n_experts} per MoE layer, top-{s.top_k}, {len(s.moe_layers)} MoE layers\n"
        f"- files: {', '.join(files)}, `manifest.json`\n\n"
        f"Run it with `edgemoe run THIS_DIR --prompt 'Hello'`, or with {' or '.join(runs)}.\n"
        "Check integrity with `edgemoe verify THIS_DIR`.\n"
    )


def write_bundle(
    inputs: PackInputs, stage: Path, report: PackReport | None, exported: OnnxExport | None
) -> Manifest:
    """Side files, report, README, then the manifest last (with every file's hash)."""
    ckpt = inputs.checkpoint
    for name, text in inputs.prepared.files.items():
        (stage / name).write_text(text, encoding="utf-8")
    for name in COPIED_FILES:
        if (ckpt.path / name).is_file():
            shutil.copyfile(ckpt.path / name, stage / name)
    if report is not None:
        (stage / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    family = family_for(ckpt.config)
    shape = family.manifest_shape()
    (stage / "README.md").write_text(_readme(inputs, shape), encoding="utf-8")
    builds = _builds(inputs, stage, exported)
    # Every file is hashed once, README included; the manifest is built whole, then written last.
    files = file_entries(stage)
    integrity = sample_builds(stage, [b for b, _ in builds.values()])
    checksums = checksum_builds(stage, [b for b, _ in builds.values()], shape.n_experts)
    manifest = _manifest(
        inputs, builds, shape, report is not None, stage, files, integrity, family.config,
        checksums,
    )
    write_manifest(stage, manifest)
    return manifest


def _builds(inputs: PackInputs, stage: Path,
            exported: OnnxExport | None) -> dict[str, tuple[Build, dict]]:
    """Each build as the manifest records it, with its GGUF metadata (empty for ONNX)."""
    out: dict[str, tuple[Build, dict]] = {}
    if "gguf" in inputs.opened.formats:
        layout = read_layout(stage / MODEL_FILE)
        gguf_build = Build(
            "gguf", MODEL_FILE, inputs.plan.quant, layout.dense_bytes, layout.expert_layers
        )
        out["gguf"] = (gguf_build, {**layout.metadata, "tensor_types": layout.tensor_types})
    if exported is not None:
        out["onnx"] = (onnx_stage.build_record(exported), {})
    return out


def _tokenizer_meta(ckpt: Checkpoint, c: ModelConfig) -> tuple[dict[str, Any], str | None]:
    """eos/bos ids and the chat template from the checkpoint (for a build without a GGUF)."""
    cfg: dict[str, Any] = {}
    if (ckpt.path / "tokenizer_config.json").is_file():
        cfg = json.loads((ckpt.path / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = cfg.get("chat_template")
    if (ckpt.path / "chat_template.jinja").is_file():
        template = (ckpt.path / "chat_template.jinja").read_text(encoding="utf-8")
    ids = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id}
    return ids, template if isinstance(template, str) else None


def _manifest(
    inputs: PackInputs,
    builds: dict[str, tuple[Build, dict]],
    shape: MoEShape,
    has_report: bool,
    stage: Path,
    files: dict[str, FileEntry],
    integrity: dict[str, SampledHashes],
    config: ModelConfig,
    checksums: dict[str, FileChecksums],
) -> Manifest:
    ckpt, profile = inputs.checkpoint, inputs.opened.profile
    primary, *others = inputs.opened.formats
    main, _ = builds[primary]
    meta = builds["gguf"][1] if "gguf" in builds else {}
    ids, template = _tokenizer_meta(ckpt, config)
    return Manifest(
        schema_version=1,
        format=main.format,
        model_file=main.model_file,
        quant=main.quant,
        source=ckpt.source,
        shape=shape,
        profile=profile,
        dense_bytes=main.dense_bytes,
        expert_layers=main.expert_layers,
        hot_experts=dict(inputs.plan.hot_experts),
        hot_shares=dict(inputs.plan.hot_shares),
        tokenizer={
            "model": meta.get("tokenizer.ggml.model"),
            "pre": meta.get("tokenizer.ggml.pre"),
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id", ids["bos_token_id"]),
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id", ids["eos_token_id"]),
            "files": [n for n in COPIED_FILES if (stage / n).is_file()],
        },
        chat_template=meta.get("tokenizer.chat_template", template),
        files=files,
        plan=inputs.plan.plan,
        report_file=REPORT_FILE if has_report else None,
        created_by=f"edgemoe {__version__}",
        extra={"tensor_types": meta["tensor_types"]} if "tensor_types" in meta else {},
        data_file=main.data_file,
        builds=tuple(builds[f][0] for f in others),
        integrity=integrity,
        checksums=checksums,
    )
