"""Importance matrix: what llama.cpp's `tools/imatrix` measures, computed in transformers.

For every weight matrix W (out x in) the quantizer wants, per input column j, the mean over
tokens of x_j^2, where x is the input W is multiplied with; errors in columns that see large
inputs cost more. Stacked experts get one such vector per expert, averaged only over the
tokens routed to that expert, concatenated in expert order (n_expert * n_per_row values).
Hooks on the float32 reference model see exactly these inputs, so no GGUF has to run.

Keys are the GGUF tensor names our adapters write. Tensors whose input columns the adapter
rearranges are skipped (DeepSeek-V2's kv_b, split into per-head k_b/v_b); row permutations
(Mixtral's q/k interleave) leave input columns alone and are kept. As in llama.cpp, the output
projection and the token embedding are not collected.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.errors import PackError
from packager.source import Checkpoint

if TYPE_CHECKING:
    from packager.families import Family

_LAYER_MODULE = re.compile(r"^model\.layers\.\d+\.")
# Checkpoint tensors whose GGUF form changes what the input columns are.
_COLUMN_CHANGING = re.compile(r"kv_b_proj$")
EXPERT_PROJ = ("gate_proj", "up_proj", "down_proj")


class ImatrixError(PackError):
    """An importance matrix that cannot be computed, read or written."""


@dataclass(frozen=True)
class ImatrixStats:
    """Raw sums as llama.cpp stores them: per tensor, [n_mat, n_per_row] sums and [n_mat] counts."""

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    chunk_count: int
    chunk_size: int
    datasets: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # checkpoint modules left out, and why

    def importance(self, unseen: str = "pooled") -> dict[str, np.ndarray]:
        """Flat float32 means (sum / count) per tensor, ready for the quantizer.

        An expert the calibration text never routed to has no statistics. llama-quantize
        fills it with 1.0 (`unseen="ones"`); by default it gets the pooled mean over the
        tensor's other experts, which for gate/up is exactly the mean over all tokens of the
        layer's input (every token is counted top_k times, once per chosen expert).
        """
        out = {}
        for name, s in self.sums.items():
            c = self.counts[name].astype(np.float64)[:, None]
            if unseen == "pooled" and c.sum() > 0:
                fill = s.sum(axis=0) / c.sum()
            else:
                fill = np.ones(s.shape[1])
            mean = np.where(c > 0, s / np.maximum(c, 1), fill[None, :])
            out[name] = mean.astype(np.float32).ravel()
        return out


class _Collector:
    """Running float64 sums of squared inputs, keyed by GGUF name."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}

    def add(self, name: str, mat: int, n_mat: int, x_sq_sum: np.ndarray, n: int) -> None:
        if name not in self.sums:
            self.sums[name] = np.zeros((n_mat, x_sq_sum.shape[-1]))
            self.counts[name] = np.zeros(n_mat, dtype=np.int64)
        self.sums[name][mat] += x_sq_sum
        self.counts[name][mat] += n

    def add_all(self, name: str, sums: np.ndarray, counts: np.ndarray) -> None:
        """Every matrix of a stacked tensor at once: sums [n_mat, n_per_row], counts [n_mat]."""
        if name not in self.sums:
            self.sums[name] = np.zeros_like(sums, dtype=np.float64)
            self.counts[name] = np.zeros(len(counts), dtype=np.int64)
        self.sums[name] += sums
        self.counts[name] += counts


def _sq_sum(x) -> np.ndarray:
    return (x.double() ** 2).sum(dim=0).numpy()


def _linear_hook(col: _Collector, name: str):
    def hook(_module, args) -> None:
        x = args[0].reshape(-1, args[0].shape[-1])
        col.add(name, 0, 1, _sq_sum(x), x.shape[0])

    return hook


def _mixer_hook(col: _Collector, name: str, norm):
    """A hyper-connection mixer (DeepSeek-V4): its matrix multiplies the RMS-normed streams of
    the residual, flattened into one row per token."""

    def hook(_module, args) -> None:
        x = norm(args[0].flatten(2).float())
        x = x.reshape(-1, x.shape[-1])
        col.add(name, 0, 1, _sq_sum(x), x.shape[0])

    return hook


def _mixer(module) -> tuple[str, object] | None:
    """(parameter name, norm) of a module that mixes hyper-connection streams, else None."""
    for attr in ("fn", "hc_fn"):
        if hasattr(module, "input_norm") and getattr(module, attr, None) is not None:
            return attr, module.input_norm
    return None


def _experts_hook(col: _Collector, names: tuple[str, str, str]):
    """Per expert: gate/up see the routed hidden states, down sees act(gate) * up."""
    import torch

    gate_name, up_name, down_name = names

    def hook(module, args) -> None:
        hidden, idx = args[0], args[1]
        hidden = hidden.reshape(-1, hidden.shape[-1])
        # transformers' experts say their layout: [E, 2F, H] gate rows then up, or transposed
        # [E, H, 2F] with biases and the module's own gate (gpt-oss: interleaved, clamped).
        transposed = bool(getattr(module, "is_transposed", False))
        n_exp = module.gate_up_proj.shape[0]
        two_ff = module.gate_up_proj.shape[2 if transposed else 1]
        ff = two_ff // 2
        with torch.no_grad():
            # One row per (token, chosen expert), grouped by expert.
            top_k = idx.reshape(hidden.shape[0], -1).shape[1]
            flat = idx.reshape(-1)
            token = torch.arange(hidden.shape[0]).repeat_interleave(top_k)
            valid = (flat >= 0) & (flat < n_exp)  # transformers marks "no expert" out of range
            flat, token = flat[valid], token[valid]
            order = torch.argsort(flat, stable=True)
            flat, token = flat[order], token[order]
            counts = torch.bincount(flat, minlength=n_exp)
            x = hidden[token]
            sq = torch.zeros(n_exp, hidden.shape[1], dtype=torch.float64)
            sq.index_add_(0, flat, x.double() ** 2)
            down = torch.zeros(n_exp, ff, dtype=torch.float64)
            start = 0
            for e, n in enumerate(counts.tolist()):
                if n:
                    xe, w = x[start : start + n], module.gate_up_proj[e]
                    if transposed:
                        gate_up = xe @ w
                        if getattr(module, "has_bias", False):
                            gate_up = gate_up + module.gate_up_proj_bias[e]
                        h = module._apply_gate(gate_up)
                    else:
                        h = module.act_fn(xe @ w[:ff].T) * (xe @ w[ff:].T)
                    down[e] = (h.double() ** 2).sum(dim=0)
                start += n
        c = counts.numpy()
        col.add_all(gate_name, sq.numpy(), c)
        col.add_all(up_name, sq.numpy(), c)
        col.add_all(down_name, down.numpy(), c)

    return hook


def _attach(model, adapter, col: _Collector, output: bool) -> tuple[list, list[str]]:
    import torch

    handles, skipped = [], []
    for name, module in model.named_modules():
        if output and name == "lm_head" and isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_pre_hook(_linear_hook(col, "output.weight")))
            continue
        if (mixer := _mixer(module)) is not None:
            gguf = _gguf_name(adapter, f"{name}.{mixer[0]}")
            if gguf is not None:
                handles.append(module.register_forward_pre_hook(_mixer_hook(col, gguf, mixer[1])))
            continue
        if not _LAYER_MODULE.match(name):
            continue
        if isinstance(module, torch.nn.Linear):
            if _COLUMN_CHANGING.search(name):
                skipped.append(f"{name}: split and transposed in the GGUF")
                continue
            targets = _gguf_names(adapter, f"{name}.weight")
            if not targets:
                skipped.append(f"{name}: no GGUF counterpart")
                continue
            for gguf in targets:  # a fused projection split into several GGUF tensors
                handles.append(module.register_forward_pre_hook(_linear_hook(col, gguf)))
        elif hasattr(module, "gate_up_proj") and hasattr(module, "down_proj"):
            names = tuple(_gguf_name(adapter, f"{name}.{p}.weight") for p in EXPERT_PROJ)
            if None in names or module.gate_up_proj.dim() != 3:
                skipped.append(f"{name}: expert layout not recognised")
                continue
            hook = (_routed_input_hook if _input_major(module) else _experts_hook)(col, names)
            handles.append(module.register_forward_pre_hook(hook))
    return handles, skipped


def _gguf_names(adapter, hf_name: str) -> tuple[str, ...]:
    from packager.errors import UnsupportedArchitectureError

    try:
        return adapter.gguf_names(hf_name)
    except UnsupportedArchitectureError:
        return ()


def _input_major(module) -> bool:
    """Llama 4's experts: their forward takes only each expert's already weighted input
    ([E * tokens, hidden], zero rows for tokens routed elsewhere; no routing indices), and
    gate_up_proj is input-major [E, hidden, 2F]."""
    import inspect

    return len(inspect.signature(module.forward).parameters) == 1


def _routed_input_hook(col: _Collector, names: tuple[str, str, str]):
    """Per expert: its input rows (what llama.cpp's experts see too, weighted before the FFN);
    a token routed elsewhere has an all-zero row and is not counted."""
    import torch

    gate_name, up_name, down_name = names

    def hook(module, args) -> None:
        n_exp, hidden, two_ff = module.gate_up_proj.shape
        ff = two_ff // 2
        with torch.no_grad():
            x = args[0].reshape(n_exp, -1, hidden)
            chosen = (x != 0).any(dim=-1)  # [E, tokens]
            counts = chosen.sum(dim=1).numpy()
            sq = (x.double() ** 2).sum(dim=1).numpy()
            w = module.gate_up_proj
            h = module.act_fn(torch.bmm(x, w[:, :, :ff])) * torch.bmm(x, w[:, :, ff:])
            down = (h.double() ** 2 * chosen[..., None]).sum(dim=1).numpy()
        col.add_all(gate_name, sq, counts)
        col.add_all(up_name, sq, counts)
        col.add_all(down_name, down, counts)

    return hook


def _gguf_name(adapter, hf_name: str) -> str | None:
    from packager.errors import UnsupportedArchitectureError

    try:
        return adapter.gguf_name(hf_name)
    except UnsupportedArchitectureError:
        return None


def collect_imatrix(
    checkpoint: str | Path | Checkpoint,
    texts: Sequence[str],
    *,
    chunk_tokens: int = 512,
    max_tokens: int | None = None,
    datasets: Sequence[str] = (),
    output: bool = False,
) -> ImatrixStats:
    """Run `texts` through the float32 transformers model and gather llama.cpp's statistics.

    `output=True` also covers the output projection (llama-imatrix's --process-output). An open
    `Checkpoint` (what `pack` passes) is used as is, not opened again.
    """
    from packager.calibrate import resolve, tokenize
    from packager.families import family_for

    source = resolve(checkpoint)
    if source.kind != "checkpoint":
        raise ImatrixError(f"{source.path}: an importance matrix needs the checkpoint, "
                           "not a bundle")
    chunks = tokenize(source, texts, chunk_tokens, max_tokens)
    family = family_for(checkpoint.config) if isinstance(checkpoint, Checkpoint) else None
    return collect_imatrix_ids(source.path, chunks, datasets=datasets, output=output,
                               family=family)


def collect_imatrix_ids(
    checkpoint_dir: Path, chunks: Sequence[Sequence[int]], *, datasets: Sequence[str] = (),
    output: bool = False, family: Family | None = None,
) -> ImatrixStats:
    """As `collect_imatrix`, from token-id chunks (`family`: the checkpoint's, if known)."""
    from packager.calibrate import load_reference_model, run_with_hooks
    from packager.families import read_family

    if family is None:
        family = read_family(Path(checkpoint_dir))
    adapter = family.gguf
    model = load_reference_model(Path(checkpoint_dir))
    col = _Collector()
    handles, skipped = _attach(model, adapter, col, output)
    if not handles:
        raise ImatrixError(f"{checkpoint_dir}: found no weight matrices to collect")
    run_with_hooks(model, chunks, handles)
    for name, sums in col.sums.items():  # columns a family reorders in the GGUF
        if (order := adapter.input_order(name)) is not None:
            col.sums[name] = sums[:, order]
    return ImatrixStats(
        sums=col.sums,
        counts=col.counts,
        chunk_count=len(chunks),
        chunk_size=max((len(c) for c in chunks), default=0),
        datasets=tuple(datasets),
        skipped=tuple(skipped),
    )


def compute_imatrix(checkpoint: str | Path | Checkpoint, texts: Sequence[str],
                    **kw: Any) -> dict[str, np.ndarray]:
    """Per-tensor importance, ready for `QuantizeOptions.imatrix` (what `pack --imatrix` uses)."""
    return collect_imatrix(checkpoint, texts, **kw).importance()


# --- llama.cpp's GGUF imatrix file ----------------------------------------------------------
def save_imatrix(stats: ImatrixStats, path: Path) -> Path:
    """Write the format `llama-imatrix` writes and `llama-quantize --imatrix` reads.

    Per tensor: `<name>.in_sum2` (F32, ggml ne = [n_per_row, n_mat]) and `<name>.counts`
    (F32, ne = [1, n_mat]); metadata general.type = imatrix, datasets, chunk count and size.
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch="imatrix")
        w.add_type(gguf.GGUFType.IMATRIX)
        w.add_array(gguf.Keys.IMatrix.DATASETS, list(stats.datasets))
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, int(stats.chunk_count))
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, int(stats.chunk_size))
        for name in sorted(stats.sums):
            w.add_tensor(f"{name}.in_sum2", np.asarray(stats.sums[name], dtype=np.float32))
            counts = np.asarray(stats.counts[name], dtype=np.float32).reshape(-1, 1)
            w.add_tensor(f"{name}.counts", counts)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_imatrix(path: Path) -> ImatrixStats:
    """Read a GGUF imatrix (ours or llama-imatrix's)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ImatrixError(f"{path}: importance matrix file not found")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ImatrixError(f"{path}: not a GGUF imatrix file ({e})") from None
    sums, counts = {}, {}
    for t in reader.tensors:
        arr = np.array(t.data, dtype=np.float32)
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = arr.astype(np.float64)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = np.rint(arr.ravel()).astype(np.int64)
    if not sums or set(sums) != set(counts):
        raise ImatrixError(f"{path}: expected matching '.in_sum2' and '.counts' tensors")
    for name, s in sums.items():
        sums[name] = s.reshape(counts[name].size, -1)
    return ImatrixStats(
        sums=sums,
        counts=counts,
        chunk_count=_field_int(reader, gguf.Keys.IMatrix.CHUNK_COUNT),
        chunk_size=_field_int(reader, gguf.Keys.IMatrix.CHUNK_SIZE),
        datasets=_field_strings(reader, gguf.Keys.IMatrix.DATASETS),
    )


def _field_int(reader, key: str) -> int:
    f = reader.fields.get(key)
    return int(f.contents()) if f is not None else 0


def _field_strings(reader, key: str) -> tuple[str, ...]:
    f = reader.fields.get(key)
    return tuple(f.contents()) if f is not None else ()
