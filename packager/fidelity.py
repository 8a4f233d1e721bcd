"""How far a GGUF build is from the transformers reference: top-1 agreement, KL, perplexity.

Both engines see the same token ids (teacher forcing), so tokenizer differences cannot hide or
fake a divergence; tokenization parity is checked separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Divergence:
    n_tokens: int
    top1_agreement: float
    mean_kl: float
    p99_kl: float
    max_kl: float
    ppl_reference: float
    ppl_candidate: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, cand: np.ndarray, targets: np.ndarray) -> Divergence:
    """Compare [n, vocab] logits; `targets[i]` is the token that follows position i."""
    lp, lq = log_softmax(ref), log_softmax(cand)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    rows = np.arange(len(targets))
    return Divergence(
        n_tokens=int(len(targets)),
        top1_agreement=float((ref.argmax(-1) == cand.argmax(-1)).mean()),
        mean_kl=float(kl.mean()),
        p99_kl=float(np.percentile(kl, 99)),
        max_kl=float(kl.max()),
        ppl_reference=float(np.exp(-lp[rows, targets].mean())),
        ppl_candidate=float(np.exp(-lq[rows, targets].mean())),
    )


def token_chunks(checkpoint_dir: Path, text: str, n_tokens: int, chunk: int) -> list[list[int]]:
    """Tokenize with the checkpoint's own tokenizer.json (no transformers needed)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(checkpoint_dir / "tokenizer.json")).encode(text).ids
    ids = ids[: n_tokens + n_tokens // chunk + 1]
    return [ids[i : i + chunk + 1] for i in range(0, len(ids) - 1, chunk + 1) if len(ids[i:]) > 2]


def reference_logits(checkpoint_dir: Path, chunks: list[list[int]]) -> list[np.ndarray]:
    import torch

    from packager.calibrate import load_reference_model

    model = load_reference_model(checkpoint_dir)
    out = []
    with torch.no_grad():
        for ids in chunks:
            out.append(model(torch.tensor([ids[:-1]])).logits[0].numpy())
    return out


def engine_logits(model_path: Path, chunks: list[list[int]], kind: str,
                  threads: int = 2) -> list[np.ndarray]:
    """Every position's logits of each chunk (its last token only a target), computed by the
    runtime's engine `kind` through the Backend seam: what a device would compute."""
    from runtime.backends.base import EngineConfig
    from runtime.backends.registry import open_backend

    n_ctx = max(len(c) for c in chunks)
    engine = open_backend(
        EngineConfig(model_path, n_ctx, threads, n_batch=n_ctx, observe_routing=False),
        kind=kind,
    )
    try:
        out = []
        for ids in chunks:
            engine.reset()
            engine.decode(ids[:-1], all_outputs=True)
            out.append(np.array(engine.last_logits, dtype=np.float32))
        return out
    finally:
        engine.close()


def gguf_logits(gguf_path: Path, chunks: list[list[int]], threads: int = 2) -> list[np.ndarray]:
    """Every position's logits from stock llama.cpp (the runtime's llama.cpp backend)."""
    return engine_logits(gguf_path, chunks, "llama.cpp", threads)


def onnx_logits(model_path: Path, chunks: list[list[int]], threads: int = 2) -> list[np.ndarray]:
    """Every position's logits from stock onnxruntime (the runtime's ONNX backend)."""
    return engine_logits(model_path, chunks, "onnx", threads)


def measure(
    reference: list[np.ndarray], candidate: list[np.ndarray], chunks: list[list[int]]
) -> Divergence:
    targets = np.concatenate([np.array(c[1:]) for c in chunks])
    return compare_logits(np.concatenate(reference), np.concatenate(candidate), targets)


def measure_gguf(
    checkpoint_dir: Path, gguf_path: Path, text: str, n_tokens: int = 512, chunk: int = 128
) -> Divergence:
    chunks = token_chunks(checkpoint_dir, text, n_tokens, chunk)
    return measure(reference_logits(checkpoint_dir, chunks), gguf_logits(gguf_path, chunks), chunks)


def reference_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def measure_onnx(
    checkpoint_dir: Path, model_path: Path, text: str, n_tokens: int = 512, chunk: int = 128
) -> Divergence:
    chunks = token_chunks(checkpoint_dir, text, n_tokens, chunk)
    reference = reference_logits(checkpoint_dir, chunks)
    return measure(reference, onnx_logits(model_path, chunks), chunks)
