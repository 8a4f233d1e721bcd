"""Calibration: run text through a model and record which experts its routers choose.

Two engines observe the same routing decisions. llama.cpp (no torch needed) reads a bundle's
GGUF, or an F32 GGUF of a checkpoint (the one `pack` hands in, else a temporary conversion),
and taps the router tensors through the eval callback. transformers hooks each MoE block's
router, which applies its family's own selection rule (softmax top-k; DeepSeek's greedy or
group-limited top-k), so nothing here re-implements routing. Token ids are produced once and
fed to whichever engine runs, so the two engines can be compared id for id.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from contract.files import read_json
from packager.errors import PackError
from packager.source import Checkpoint
from packager.usage import UsageAccumulator, UsageError, UsageProfile

Engine = Literal["llama.cpp", "transformers", "auto"]
ENGINES = ("llama.cpp", "transformers", "auto")
DEFAULT_CHUNK = 512
_LAYER = re.compile(r"\blayers\.(\d+)\.")


@dataclass(frozen=True)
class CalibrationSource:
    """What calibration reads: a bundle's GGUF, or a checkpoint folder (and its config).

    `gguf` is an F32 GGUF of the checkpoint that already exists (`pack` writes one and hands it
    to every stage that needs it), so llama.cpp does not convert the checkpoint again.
    """

    kind: Literal["bundle", "checkpoint"]
    path: Path
    n_experts: int
    top_k: int
    gguf: Path | None = None
    scoring: str = "softmax"  # how the router turns logits into scores (the family's rule)
    # llama.cpp's graph reports the raw logits as the router's probabilities (gpt-oss's
    # softmax over the top-k): the scores are the softmax of what it reports.
    llama_logits: bool = False

    @property
    def tokenizer_json(self) -> Path | None:
        p = self.path / "tokenizer.json"
        return p if p.is_file() else None


def checkpoint_source(ckpt: Checkpoint, gguf: Path | None = None) -> CalibrationSource:
    """An already open checkpoint (and optionally its F32 GGUF): nothing is opened again."""
    from packager.families import family_for

    family = family_for(ckpt.config)
    moe = family.experts
    return CalibrationSource("checkpoint", ckpt.path, moe.n_experts, moe.top_k, gguf,
                             family.config.router_scoring, family.gguf_type.probs_are_logits)


Source = str | Path | Checkpoint | CalibrationSource


def resolve(src: Source) -> CalibrationSource:
    """A bundle folder (has manifest.json), an open checkpoint, or what `open_checkpoint` takes."""
    if isinstance(src, CalibrationSource):
        return src
    if isinstance(src, Checkpoint):
        return checkpoint_source(src)
    path = Path(src).expanduser()
    if (path / "manifest.json").is_file():
        from contract.manifest import read_manifest
        from packager.families import family_class

        m = read_manifest(path)
        family = family_class(m.shape.hf_architecture)
        logits = family is not None and family.gguf_type.probs_are_logits
        return CalibrationSource("bundle", path.resolve(), m.shape.n_experts, m.shape.top_k,
                                 llama_logits=logits)
    from packager.source import open_checkpoint

    return checkpoint_source(open_checkpoint(src))


def pick_engine(source: CalibrationSource, engine: Engine) -> str:
    """'auto': transformers for a checkpoint when torch is importable, else llama.cpp."""
    if engine not in ENGINES:
        raise PackError(f"unknown calibration engine '{engine}' (choose from {', '.join(ENGINES)})")
    if engine == "transformers" and source.kind == "bundle":
        raise PackError(f"{source.path}: a bundle holds only a GGUF; calibrate it with llama.cpp "
                        "or point at the original checkpoint for transformers")
    if engine != "auto":
        return engine
    if source.kind == "checkpoint":
        from packager.fidelity import reference_available

        if reference_available():
            return "transformers"
    return "llama.cpp"


# --- tokens --------------------------------------------------------------------------------
def split_chunks(ids: Sequence[int], chunk: int) -> list[list[int]]:
    """Consecutive windows of at most `chunk` tokens; a trailing window under 2 is dropped."""
    if chunk < 2:
        raise PackError(f"calibration chunk must be at least 2 tokens, got {chunk}")
    out = [list(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    return [c for c in out if len(c) >= 2]


def tokenize(source: CalibrationSource, texts: Sequence[str], chunk: int = DEFAULT_CHUNK,
             max_tokens: int | None = None) -> list[list[int]]:
    """Token id chunks, each text on its own (windows never span two texts)."""
    chunks: list[list[int]] = []
    total = 0
    with _encoder(source) as encode:
        for text in texts:
            for c in split_chunks(encode(text), chunk):
                if max_tokens is not None and total + len(c) > max_tokens:
                    c = c[: max_tokens - total]
                    if len(c) < 2:
                        return chunks
                chunks.append(c)
                total += len(c)
    if not chunks:
        raise UsageError("calibration text is empty (need at least 2 tokens)")
    return chunks


@contextmanager
def _encoder(source: CalibrationSource) -> Iterator[Callable[[str], list[int]]]:
    """The source's own tokenizer: tokenizer.json for a checkpoint, the GGUF's for a bundle."""
    if source.kind == "checkpoint":
        if source.tokenizer_json is None:
            raise PackError(f"{source.path}: no tokenizer.json to tokenize calibration text with")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(source.tokenizer_json))
        yield lambda text: tok.encode(text).ids
        return
    from contract.manifest import read_manifest
    from runtime.backends.registry import open_tokenizer

    tok = open_tokenizer(source.path / read_manifest(source.path).model_file)
    try:
        yield lambda text: tok.tokenize(text, special=False)
    finally:
        tok.close()


def text_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def ids_digest(chunks: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(np.asarray(c, dtype="<i8").tobytes())
        h.update(b"\xff" * 8)
    return h.hexdigest()


# --- engines ---------------------------------------------------------------------------------
def route(source: CalibrationSource, chunks: Sequence[Sequence[int]], engine: str,
          threads: int = 0) -> UsageAccumulator:
    """Run every chunk through `engine` and accumulate its routing decisions."""
    acc = UsageAccumulator(source.n_experts, source.top_k)
    if engine == "transformers":
        _route_transformers(source.path, chunks, acc, source.scoring)
    elif engine == "llama.cpp":
        with _gguf_for(source) as gguf_path:
            _route_llama(gguf_path, chunks, acc, threads, source.llama_logits)
    else:
        raise PackError(f"unknown calibration engine '{engine}'")
    return acc


@contextmanager
def _gguf_for(source: CalibrationSource) -> Iterator[Path]:
    """The GGUF llama.cpp reads: the bundle's, the one handed in, or a temporary F32 conversion."""
    if source.gguf is not None:
        yield source.gguf
        return
    if source.kind == "bundle":
        from contract.manifest import read_manifest

        yield source.path / read_manifest(source.path).model_file
        return
    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    with tempfile.TemporaryDirectory(prefix="edgemoe-calib-") as tmp:
        out = Path(tmp) / "model-f32.gguf"
        write_gguf(open_checkpoint(source.path), out, "F32")
        yield out


def _route_llama(gguf_path: Path, chunks: Sequence[Sequence[int]], acc: UsageAccumulator,
                 threads: int, logits: bool = False) -> None:
    import os

    from runtime.backends.base import EngineConfig, RoutingEvent
    from runtime.backends.registry import open_backend

    n_ctx = max(len(c) for c in chunks)

    def observe(ev: RoutingEvent) -> None:
        if logits:  # the scores are their softmax; the weights those of the chosen experts
            x = np.asarray(ev.probs, dtype=np.float64).reshape(-1, acc.n_experts)
            e = np.exp(x - x.max(axis=1, keepdims=True))
            acc.add(ev.layer, ev.ids, e / e.sum(axis=1, keepdims=True))
        else:
            acc.add(ev.layer, ev.ids, ev.probs, ev.weights)

    cfg = EngineConfig(gguf_path, n_ctx=n_ctx, n_threads=threads or os.cpu_count() or 1,
                       n_batch=n_ctx, n_ubatch=n_ctx, routing_detail=True)
    engine = open_backend(cfg, observe)
    try:
        for c in chunks:
            engine.reset()
            # Every position's output: otherwise llama.cpp runs the last layer's FFN (and so
            # its router) only for the final token.
            engine.decode(list(c), all_outputs=True)
    finally:
        engine.close()


def _route_transformers(ckpt_dir: Path, chunks: Sequence[Sequence[int]],
                        acc: UsageAccumulator, scoring: str = "softmax") -> None:

    model = load_reference_model(ckpt_dir)
    handles = []
    for name, module in model.named_modules():
        router = router_of(module)
        if router is not None and (m := _LAYER.search(name)):
            hook = _router_hook(int(m.group(1)), acc, scoring)
            handles.append(router[1].register_forward_hook(hook))
    if not handles:
        raise UsageError(f"{ckpt_dir}: no MoE router modules found in the transformers model")
    run_with_hooks(model, chunks, handles)


# What transformers' MoE blocks call their router module (Phi-MoE and Llama 4: `router`).
ROUTER_ATTRS = ("gate", "router")


def router_of(module: object) -> tuple[str, object] | None:
    """(attribute, router) of a transformers MoE block (a module with routed `experts`)."""
    if not hasattr(module, "experts"):
        return None
    for attr in ROUTER_ATTRS:
        router = getattr(module, attr, None)
        if router is not None and hasattr(router, "register_forward_hook"):
            return attr, router
    return None


def load_reference_model(ckpt_dir: Path):
    """The checkpoint in transformers, float32, eval mode (what the fidelity reference runs).

    A checkpoint published with MXFP4 experts (gpt-oss) is dequantized, as transformers does
    on a CPU: exactly, since every MXFP4 weight is a float32. A vision+text composite loads as
    its text model; transformers' load report listing the vision weights it skipped is expected
    then, so only errors are shown while loading.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    kwargs = {}
    config = read_json(Path(ckpt_dir) / "config.json", UsageError, "config.json")
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(quant, dict) and quant.get("quant_method") == "mxfp4":
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    return model.eval()


def run_with_hooks(model, chunks: Sequence[Sequence[int]], handles: list) -> None:
    """Forward every chunk (hooks collect what they need), then remove the hooks."""
    import torch

    try:
        with torch.no_grad():
            for c in chunks:
                model(torch.tensor([list(c)]))
    finally:
        for h in handles:
            h.remove()


def _router_hook(layer: int, acc: UsageAccumulator, scoring: str = "softmax"):
    import torch

    def hook(_module, _args, out) -> None:
        # Routers return (logits, mixing weights, chosen ids), or (scores, logits) with the
        # choice left to top-k of the logits (Llama 4); the scores are what llama.cpp's graph
        # calls ffn_moe_probs (softmax, DeepSeek-V3's sigmoid, V4's sqrt-softplus).
        if len(out) == 2:
            logits = out[1].float().reshape(-1, acc.n_experts)
            ids = torch.topk(logits, acc.top_k, dim=-1).indices
        else:
            logits, _weights, ids = out
        logits = logits.float().reshape(-1, acc.n_experts)
        if scoring == "sigmoid":
            probs = torch.sigmoid(logits)
        elif scoring == "sqrtsoftplus":  # DeepSeek-V4
            probs = torch.sqrt(torch.nn.functional.softplus(logits))
        else:
            probs = torch.softmax(logits, dim=-1)
        acc.add(layer, ids.reshape(-1, acc.top_k).numpy(), probs.numpy())

    return hook


# --- entry points --------------------------------------------------------------------------
def calibrate(
    src: Source,
    texts: Sequence[str],
    *,
    engine: Engine = "auto",
    chunk_tokens: int = DEFAULT_CHUNK,
    max_tokens: int | None = None,
    threads: int = 0,
) -> UsageProfile:
    """Expert usage of `src` (checkpoint folder, Hub id, open checkpoint or bundle) over `texts`."""
    source = resolve(src)
    chosen = pick_engine(source, engine)
    chunks = tokenize(source, texts, chunk_tokens, max_tokens)
    return route(source, chunks, chosen, threads).profile(chosen, text_digest(texts))


def calibrate_ids(src: Source, chunks: Sequence[Sequence[int]], *, engine: Engine = "auto",
                  threads: int = 0) -> UsageProfile:
    """Like `calibrate`, from token ids already made (to compare engines id for id)."""
    source = resolve(src)
    chosen = pick_engine(source, engine)
    return route(source, chunks, chosen, threads).profile(chosen, ids_digest(chunks))


def read_texts(paths: Sequence[Path]) -> list[str]:
    texts = []
    for p in map(Path, paths):
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PackError(f"{p}: calibration text file not found") from None
        except UnicodeDecodeError as e:
            raise PackError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not texts:
        raise PackError("no calibration text given (use --text FILE)")
    return texts


def calibrate_to_file(
    src: str | Path,
    text_files: Sequence[Path],
    out_json: Path,
    engine: Engine = "auto",
    plot_png: Path | None = None,
    *,
    chunk_tokens: int = DEFAULT_CHUNK,
    max_tokens: int | None = None,
    threads: int = 0,
) -> UsageProfile:
    """`edgemoe calibrate`: profile written atomically to `out_json`, optional heat map PNG."""
    profile = calibrate(src, read_texts(text_files), engine=engine, chunk_tokens=chunk_tokens,
                        max_tokens=max_tokens, threads=threads)
    profile.save(Path(out_json))
    if plot_png is not None:
        from packager.heatmap import write_heatmap

        write_heatmap(profile, Path(plot_png), title=f"expert usage: {Path(str(src)).name}")
    return profile
