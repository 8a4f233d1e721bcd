"""llama.cpp backend: stock llama.cpp computes; we only watch routing and own residency.

The model is loaded file-backed (mmap) with extra buffer types off, so no weight is repacked
into private memory: every expert byte the manifest records is a page of the GGUF mapping that
madvise can give back. Routing is observed through llama.cpp's eval callback on the
`ffn_moe_topk-<layer>` tensors, which the graph computes just before the expert matmuls.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from runtime.backends.base import EngineConfig, RoutingEvent, RoutingObserver
from runtime.backends.lazy_load import LazyLoad, lazy_mapping
from runtime.errors import BundleError, EdgemoeError
from runtime.generation import SamplingParams
from runtime.procfs import file_regions
from runtime.residency import FileMapping

# (layer, tensor name, rows) for extra named tensors beyond routing.
TensorObserver = Callable[[int, str, np.ndarray], None]

TOPK = "ffn_moe_topk"  # int32 [n_tokens, top_k]: chosen experts
PROBS = "ffn_moe_probs"  # f32 [n_tokens, n_expert]: router probabilities (before top-k)
WEIGHTS = "ffn_moe_weights"  # f32 [n_tokens, top_k]: mixing weights (after any norm/scale)
_NAMED = re.compile(rb"^(ffn_moe_[a-z_]+)-(\d+)$")


class _TensorHead(ctypes.Structure):
    """The leading fields of ggml.h's `struct ggml_tensor` (stable across ggml versions)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


class _Ggml:
    """The few ggml C functions the eval callback needs, from llama-cpp-python's own libraries."""

    def __init__(self) -> None:
        import llama_cpp

        libdir = Path(llama_cpp.__file__).parent / "lib"
        candidates = sorted(libdir.glob("libggml-base.*")) or sorted(libdir.glob("ggml-base.*"))
        if not candidates:
            raise EdgemoeError(f"{libdir}: libggml-base not found next to llama-cpp-python")
        lib = ctypes.CDLL(str(candidates[0]))
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_nelements.restype = ctypes.c_int64
        lib.ggml_nelements.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.restype = None
        lib.ggml_backend_tensor_get.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
        ]
        self.lib = lib


def _ggml_type(name: str) -> int:
    """llama.cpp's ggml_type number for a KV-cache type name (f16, q8_0, ...)."""
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        raise EdgemoeError(f"unknown KV cache type '{name}'") from None


class LlamaTokenizer:
    """The GGUF's vocabulary only: no weights mapped, no context."""

    def __init__(self, model_path: Path) -> None:
        import llama_cpp
        from llama_cpp import _internals as li

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            self.model = li.LlamaModel(path_model=str(model_path), params=params, verbose=False)
        except ValueError as e:
            raise BundleError(
                f"{model_path}: llama.cpp could not read its vocabulary ({e})"
            ) from None
        self._bos = self.model.add_bos_token()

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.model.tokenize(text.encode("utf-8"), add_bos=self._bos, special=special)

    def close(self) -> None:
        self.model.close()


class LlamaBackend:
    """One llama.cpp model + context, decoding a single sequence (the `Backend` protocol)."""

    name = "llama.cpp"

    def __init__(
        self,
        cfg: EngineConfig,
        observer: RoutingObserver | None = None,
        *,
        extra_taps: tuple[str, ...] = (),
        tensor_observer: TensorObserver | None = None,
    ) -> None:
        """extra_taps + tensor_observer: any other named graph tensors, as (layer, name, rows)
        (llama.cpp-specific; tests compare our statistics with llama.cpp's own activations)."""
        import llama_cpp
        from llama_cpp import _internals as li
        from llama_cpp._logger import set_verbose

        set_verbose(cfg.verbose)
        self._llama_cpp = llama_cpp
        self.cfg = cfg
        self._observer = observer
        self._tensor_observer = tensor_observer
        self._routing_kinds = (PROBS, TOPK, WEIGHTS) if cfg.routing_detail else (TOPK,)
        if observer is None:
            self._routing_kinds = ()
        self._extra = tuple(extra_taps) if tensor_observer is not None else ()
        self._taps = tuple(t.encode() for t in self._routing_kinds + self._extra)
        self._tap_prefixes = tuple(t + b"-" for t in self._taps)
        self._pending: dict[int, dict[str, np.ndarray]] = {}
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
        # No repacking into anonymous buffers: experts must stay pages of the file mapping.
        mparams.use_extra_bufts = False
        before = {r.base for r in file_regions(cfg.model_path)}
        with self._mapping_mode(cfg) as lazy:
            try:
                self.model = li.LlamaModel(
                    path_model=str(cfg.model_path), params=mparams, verbose=False
                )
            except ValueError as e:
                raise BundleError(
                    f"{cfg.model_path}: llama.cpp could not load it ({e})"
                ) from None
        self.lazy_load = lazy
        new = {r.base for r in file_regions(cfg.model_path)} - before
        # The mapping llama.cpp just made (another model of the same file may also be mapped).
        self.mapping_base: int | None = new.pop() if len(new) == 1 else None
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cfg.n_ctx
        cparams.n_batch = cfg.n_batch
        cparams.n_ubatch = min(cfg.n_ubatch, cfg.n_batch)
        cparams.n_threads = cfg.n_threads
        cparams.n_threads_batch = cfg.n_threads
        cparams.no_perf = True
        kv = _ggml_type(cfg.kv_cache_type)
        cparams.type_k = cparams.type_v = kv
        if cfg.kv_cache_type.lower() not in ("f16", "f32", "bf16"):
            # llama.cpp quantizes the V cache only with flash attention.
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._cb = None
        if cfg.observe_routing and self._taps:
            self._ggml = _Ggml()
            self._cb = llama_cpp.ggml_backend_sched_eval_callback(self._eval_callback)
            cparams.cb_eval = self._cb
            cparams.cb_eval_user_data = None
        try:
            self.ctx = li.LlamaContext(model=self.model, params=cparams, verbose=False)
        except ValueError as e:
            self.model.close()
            raise BundleError(
                f"{cfg.model_path}: llama.cpp could not create a context "
                f"(n_ctx={cfg.n_ctx}, kv cache {cfg.kv_cache_type}): {e}"
            ) from None
        self.batch = li.LlamaBatch(n_tokens=cfg.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model.model)
        self.n_vocab = self.model.n_vocab()
        self.n_past = 0
        self._piece = ctypes.create_string_buffer(64)
        self._asked: dict[int, bool] = {}
        self._batch_shape: tuple[int, bool] | None = None

    @staticmethod
    def _mapping_mode(cfg: EngineConfig) -> AbstractContextManager[LazyLoad]:
        if not cfg.lazy_load:
            return nullcontext(LazyLoad(False, "not asked (full budget: stock full read)"))
        import llama_cpp.llama_cpp as low

        lib_path = Path(low._lib._name)
        return lazy_mapping(low._lib, lib_path, "llama_backend_init")

    # --- routing observation -------------------------------------------------------------
    def _eval_callback(self, tensor: int, ask: bool, _user: int) -> bool:
        if ask:
            # llama.cpp asks about every graph node on every token. Graphs of one batch shape
            # are laid out identically, so the answer is cached per node address (reset when
            # the batch shape changes); the name is re-checked below before any data is read.
            known = self._asked.get(tensor)
            if known is None:
                known = self._ggml.lib.ggml_get_name(tensor).startswith(self._tap_prefixes)
                self._asked[tensor] = known
            return known
        m = _NAMED.match(self._ggml.lib.ggml_get_name(tensor))
        if m and m.group(1) in self._taps:
            try:
                self._deliver(tensor, m.group(1).decode(), int(m.group(2)))
            except Exception:  # never let a Python error unwind through C
                import traceback

                traceback.print_exc()
        return True

    def _deliver(self, tensor: int, kind: str, layer: int) -> None:
        """Assemble one layer's RoutingEvent. Per layer and batch the graph computes the
        probabilities, then the chosen ids, then the mixing weights, so without detail the
        event is complete at the ids, and with detail at the weights."""
        data = self._read_rows(tensor, np.int32 if kind == TOPK else np.float32)
        if kind in self._extra and self._tensor_observer is not None:
            self._tensor_observer(layer, kind, data)
        if kind not in self._routing_kinds or self._observer is None:
            return
        if len(self._routing_kinds) == 1:
            self._observer(RoutingEvent(layer, data))
            return
        got = self._pending.setdefault(layer, {})
        got[kind] = data
        if len(got) == len(self._routing_kinds):
            del self._pending[layer]
            self._observer(RoutingEvent(layer, got[TOPK], got[PROBS], got[WEIGHTS]))

    def _read_rows(self, tensor: int, dtype: type) -> np.ndarray:
        """A 2-D tensor as [rows, ne0], honouring its row stride: `ffn_moe_topk` is a view of
        the first top_k columns of each token's argsort, not a contiguous block."""
        head = _TensorHead.from_address(tensor)
        ne0, nb1 = int(head.ne[0]), int(head.nb[1])
        rows = int(head.ne[1] * head.ne[2] * head.ne[3])
        nbytes = int(self._ggml.lib.ggml_nbytes(tensor))
        raw = np.empty(nbytes, dtype=np.uint8)
        self._ggml.lib.ggml_backend_tensor_get(tensor, raw.ctypes.data, 0, nbytes)
        width = np.dtype(dtype).itemsize
        if nb1 == ne0 * width or rows == 1:
            return raw[: rows * ne0 * width].view(dtype).reshape(rows, ne0).copy()
        out = np.lib.stride_tricks.as_strided(
            raw.view(dtype) if nbytes % width == 0 else raw[: nbytes - nbytes % width].view(dtype),
            shape=(rows, ne0),
            strides=(nb1, width),
        )
        return np.ascontiguousarray(out)

    # --- tokens ----------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.model.tokenize(
            text.encode("utf-8"), add_bos=self.model.add_bos_token(), special=special
        )

    def token_bytes(self, token: int) -> bytes:
        """The token's bytes, exactly as many as llama.cpp writes (it adds no terminator)."""
        buf = self._piece
        n = self._llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:  # buffer too small: -n is the size needed
            self._piece = buf = ctypes.create_string_buffer(-n)
            n = self._llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def file_mapping(self) -> FileMapping | None:
        if self.mapping_base is None:
            return None
        return FileMapping.whole(self.mapping_base, self.cfg.model_path.stat().st_size)

    def eos_token(self) -> int:
        return int(self.model.token_eos())

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # --- decoding --------------------------------------------------------------------------
    def reset(self) -> None:
        self.ctx.kv_cache_clear()
        self.n_past = 0
        self._pending.clear()

    def decode(self, tokens: list[int], all_outputs: bool = False) -> np.ndarray:
        """Feed tokens after the current position; returns the logits of the last one.

        all_outputs: compute every position's output. llama.cpp otherwise skips the last
        layer for tokens whose logits nobody reads, so their last-layer routing never happens
        (what tracing and calibration must see)."""
        if self.n_past + len(tokens) > self.cfg.n_ctx:
            raise EdgemoeError(f"context full ({self.cfg.n_ctx} tokens)")
        for start in range(0, len(tokens), self.cfg.n_batch):
            chunk = tokens[start : start + self.cfg.n_batch]
            if (len(chunk), all_outputs) != self._batch_shape:
                self._batch_shape = (len(chunk), all_outputs)
                self._asked.clear()
            self.batch.set_batch(chunk, n_past=self.n_past, logits_all=all_outputs)
            self.ctx.decode(self.batch)
            self.n_past += len(chunk)
        ptr = self.ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def sampler(self, params: SamplingParams):
        from llama_cpp import _internals as li

        s = li.LlamaSampler()
        if params.temperature <= 0:
            s.add_greedy()
            return s
        if params.top_k > 0:
            s.add_top_k(params.top_k)
        if params.top_p < 1.0:
            s.add_top_p(params.top_p, 1)
        s.add_temp(params.temperature)
        # llama.cpp takes a 32-bit seed and reads 0xFFFFFFFF as "random": fold, never collide.
        seed = params.seed
        s.add_dist(
            seed % 0xFFFFFFFF if seed is not None else int.from_bytes(os.urandom(3), "little")
        )
        return s

    def sample(self, sampler, logits_idx: int = -1) -> int:
        token = self._llama_cpp.llama_sampler_sample(sampler.sampler, self.ctx.ctx, logits_idx)
        return int(token)

    def close(self) -> None:
        for obj in ("batch", "ctx", "model"):
            o = getattr(self, obj, None)
            if o is not None:
                o.close()
                setattr(self, obj, None)
