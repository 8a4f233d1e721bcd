"""llama.cpp backend: stock llama.cpp computes; we only watch routing and own residency.

The model is loaded file-backed (mmap) with extra buffer types off, so no weight is repacked
into private memory: every expert byte the manifest records is a page of the GGUF mapping that
madvise can give back. Routing is observed through llama.cpp's eval callback on the
`ffn_moe_topk-<layer>` tensors, which the graph computes just before the expert matmuls.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from runtime.backends.base import (
    EngineConfig,
    LazyLoad,
    RoutingEvent,
    RoutingObserver,
    SamplerSettings,
)
from runtime.backends.huge_pages import read_in_huge_folios
from runtime.backends.llama_cpp.lazy_load import lazy_mapping
from runtime.backends.llama_cpp.tap import NodeTap, RoutingLog
from runtime.backends.mapping import ExpertFile, FileMapping
from runtime.backends.sampling import fresh_seed
from runtime.errors import BundleError, EdgemoeError
from runtime.procfs import file_regions
from runtime.threads import apply_wait_policy

# (layer, tensor name, rows) for extra named tensors beyond routing.
TensorObserver = Callable[[int, str, np.ndarray], None]

TOPK = "ffn_moe_topk"  # int32 [n_tokens, top_k]: chosen experts
PROBS = "ffn_moe_probs"  # f32 [n_tokens, n_expert]: router probabilities (before top-k)
WEIGHTS = "ffn_moe_weights"  # f32 [n_tokens, top_k]: mixing weights (after any norm/scale)
HIDDEN = "ffn_inp"  # f32 [n_tokens, n_embd]: a layer's residual input to its MoE block
OUTPUT = "l_out"  # f32 [n_tokens, n_embd]: a layer's output (the next layer's input)


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
        # Before llama.cpp's OpenMP loads: how its threads wait at barriers (runtime/threads.py).
        self.wait_policy = apply_wait_policy(cfg.wait_policy)
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
        self._taps = self._routing_kinds + self._extra
        self._pending: dict[int, dict[str, np.ndarray]] = {}
        if cfg.flash_attn is False and cfg.kv_cache_type.lower() not in ("f16", "f32", "bf16"):
            raise BundleError(f"a {cfg.kv_cache_type} KV cache (the device profile's "
                              "kv_cache_type) needs flash attention: drop flash_attn=False")
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
        # No repacking into anonymous buffers: experts must stay pages of the file mapping.
        mparams.use_extra_bufts = False
        before = {r.base for r in file_regions(cfg.model_path)}
        # A full budget reads the whole file at load: in 2 MiB folios first (huge_pages.py).
        self.huge_read_s = None if cfg.lazy_load else read_in_huge_folios(cfg.model_path)
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
        cparams.n_rs_seq = cfg.rollback_tokens  # llama.cpp clamps it to 0 where unsupported
        kv = _ggml_type(cfg.kv_cache_type)
        cparams.type_k = cparams.type_v = kv
        if cfg.kv_cache_type.lower() not in ("f16", "f32", "bf16"):
            # llama.cpp quantizes the V cache only with flash attention.
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        elif cfg.flash_attn is not None:
            cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if cfg.flash_attn
                                       else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self._tap: NodeTap | None = None
        if cfg.observe_routing and self._taps:
            self._ggml = _Ggml()
            self._scratch = np.empty(4096, dtype=np.uint8)  # reused by every read: no allocation
            self._scratch_at = self._scratch.ctypes.data
            # Answers llama.cpp's per-node questions in C when a compiler exists (tap.py).
            # Pre-gating (runtime/experts/prefetcher.py) reads a layer's residual input (`ffn_inp`,
            # alive until the layer's last add) at its routing event, so it is watched, never a
            # stop; or its output (`l_out`), where the C tap stops only while it prefetches from it.
            plain = self._routing_kinds == (TOPK,) and not self._extra
            watch, own = ((HIDDEN,), (OUTPUT,)) if plain else ((), ())
            self._tap = NodeTap(self._taps, self._on_node, self._ggml.lib, watch=watch,
                                c_only=own)
            cparams.cb_eval = self._tap.callback
            cparams.cb_eval_user_data = self._tap.user_data
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
        self._batch_shape: tuple[int, bool] | None = None
        # Seconds from each decode call to its compute's start (graph build, allocation,
        # inputs), summed; measured where the routing tap sees the first node.
        self.graph_build_s = 0.0
        # Recurrent layers keep one state, not a per-token cache: `truncate` may only go back
        # into the last decoded batch, as far as the context's snapshots reach, once per batch.
        m = self.model.model
        self.recurrent = bool(llama_cpp.llama_model_is_recurrent(m)
                              or llama_cpp.llama_model_is_hybrid(m))
        self.rollback_depth = int(llama_cpp.llama_n_rs_seq(self.ctx.ctx)) if self.recurrent \
            else None  # None: a KV cache truncates anywhere
        self._rollback_room = 0  # positions the last batch may still be rolled back by

    @staticmethod
    def _mapping_mode(cfg: EngineConfig) -> AbstractContextManager[LazyLoad]:
        if not cfg.lazy_load:
            return nullcontext(LazyLoad(False, "not asked (full budget: stock full read)"))
        import llama_cpp.llama_cpp as low

        lib_path = Path(low._lib._name)
        return lazy_mapping(low._lib, lib_path, "llama_backend_init")

    # --- routing observation -------------------------------------------------------------
    def _on_node(self, tensor: int, tap: int, layer: int) -> bool:
        """A tapped node's data is ready (the graph waits until this returns); True stops the
        graph here, before the layer's expert matmuls (the observer asked)."""
        return self._deliver(tensor, self._taps[tap], layer)

    def _deliver(self, tensor: int, kind: str, layer: int) -> bool:
        """Assemble one layer's RoutingEvent. Per layer and batch the graph computes the
        probabilities, then the chosen ids, then the mixing weights, so without detail the
        event is complete at the ids, and with detail at the weights."""
        data = self._read_rows(tensor, np.int32 if kind == TOPK else np.float32)
        if kind in self._extra and self._tensor_observer is not None:
            self._tensor_observer(layer, kind, data)
        if kind not in self._routing_kinds or self._observer is None:
            return False
        if len(self._routing_kinds) == 1:
            return bool(self._observer(RoutingEvent(layer, data)))
        got = self._pending.setdefault(layer, {})
        got[kind] = data
        if len(got) == len(self._routing_kinds):
            del self._pending[layer]
            return bool(self._observer(RoutingEvent(layer, got[TOPK], got[PROBS], got[WEIGHTS])))
        return False

    def _read_rows(self, tensor: int, dtype: type) -> np.ndarray:
        """A 2-D tensor as [rows, ne0], honouring its row stride: `ffn_moe_topk` is a view of
        the first top_k columns of each token's argsort, not a contiguous block."""
        head = _TensorHead.from_address(tensor)
        ne, nb1 = head.ne, head.nb[1]
        ne0, rows = ne[0], ne[1] * ne[2] * ne[3]
        nbytes = self._ggml.lib.ggml_nbytes(tensor)
        if nbytes > self._scratch.size:
            self._scratch = np.empty(2 * nbytes, dtype=np.uint8)
            self._scratch_at = self._scratch.ctypes.data
        raw = self._scratch
        self._ggml.lib.ggml_backend_tensor_get(tensor, self._scratch_at, 0, nbytes)
        width = np.dtype(dtype).itemsize
        if nb1 == ne0 * width or rows == 1:
            return raw[: rows * ne0 * width].view(dtype).reshape(rows, ne0).copy()
        raw = raw[:nbytes]
        out = np.lib.stride_tricks.as_strided(
            raw.view(dtype) if nbytes % width == 0 else raw[: nbytes - nbytes % width].view(dtype),
            shape=(rows, ne0),
            strides=(nb1, width),
        )
        return np.ascontiguousarray(out)

    def routing_log(self, n_layers: int, n_experts: int, top_k: int) -> RoutingLog | None:
        """Keep one-token routing events whose experts are all resident out of Python (the C
        tap logs them; see runtime/experts/pager.py); None when the tap answers in Python."""
        if self._tap is None or self._routing_kinds != (TOPK,) or self._extra:
            return None
        log = self._tap.routing_log(TOPK, n_layers, n_experts, top_k)
        if log is not None and HIDDEN in self._tap.watch:
            log.read_hidden = self._hidden_rows
        return log

    def _hidden_rows(self, layer: int) -> np.ndarray | None:
        """The residual input (`ffn_inp`) of `layer` for the batch being computed: watched,
        and still alive while the layer's routing event is delivered."""
        assert self._tap is not None
        addr = self._tap.watched(self._tap.watch.index(HIDDEN), layer)
        return self._read_rows(addr, np.float32) if addr else None

    # --- tokens ----------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.model.tokenize(
            text.encode("utf-8"), add_bos=self.model.add_bos_token(), special=special
        )

    def token_bytes(self, token: int) -> bytes:
        """The token's bytes, exactly as many as llama.cpp writes (it adds no terminator).

        A buffer per call: /detokenize and logprobs read pieces on request threads while the
        engine thread generates, and a shared buffer would mix their bytes."""
        buf = ctypes.create_string_buffer(64)
        n = self._llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:  # buffer too small: -n is the size needed
            buf = ctypes.create_string_buffer(-n)
            n = self._llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def file_mapping(self) -> FileMapping | None:
        if self.mapping_base is None:
            return None
        return FileMapping.whole(self.mapping_base, self.cfg.model_path.stat().st_size)

    def expert_file(self) -> ExpertFile | None:
        return None  # llama.cpp reads experts where the GGUF has them

    def eos_token(self) -> int:
        return int(self.model.token_eos())

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # --- decoding --------------------------------------------------------------------------
    def reset(self) -> None:
        self.ctx.kv_cache_clear()
        self.n_past = 0
        self._rollback_room = 0
        self._pending.clear()

    def truncate(self, n_past: int) -> None:
        """Forget every position from n_past on (a speculative step's rejected drafts), so the
        next decode continues from there; llama_memory_seq_rm on the context's KV memory."""
        if not 0 <= n_past <= self.n_past:
            raise EdgemoeError(f"cannot truncate {self.n_past} positions to {n_past}")
        if n_past == self.n_past:
            return
        if self.recurrent and self.n_past - n_past > self._rollback_room:
            # Refused before llama.cpp is asked: it would restore a stale snapshot.
            raise EdgemoeError(
                f"cannot roll the recurrent state back {self.n_past - n_past} positions "
                f"(this context keeps {self.rollback_depth} snapshots, "
                f"{self._rollback_room} usable now)"
            )
        mem = self.ctx.memory
        if mem is None or not self._llama_cpp.llama_memory_seq_rm(mem, 0, n_past, -1):
            raise EdgemoeError(f"llama.cpp could not remove positions {n_past}.. from its cache")
        self.n_past = n_past
        self._rollback_room = 0  # llama.cpp's pending rollback is single-use

    @property
    def last_logits(self) -> np.ndarray:
        """The last decode's logits, [positions, n_vocab]: every position of its last batch
        with all_outputs (a speculative verify reads one row per drafted token), else one."""
        assert self._batch_shape is not None, "decode first"
        n_tokens, all_outputs = self._batch_shape
        rows = n_tokens if all_outputs else 1
        ptr = self._llama_cpp.llama_get_logits(self.ctx.ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab)).copy()

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
                if self._tap is not None:
                    self._tap.new_graph_shape()
            self.batch.set_batch(chunk, n_past=self.n_past, logits_all=all_outputs)
            if self._tap is not None:
                self._tap.first_question_ns(reset=True)
                start = time.monotonic_ns()
                self.ctx.decode(self.batch)
                asked = self._tap.first_question_ns()
                self.graph_build_s += (asked - start) / 1e9 if asked > start else 0.0
            else:
                self.ctx.decode(self.batch)
            self.n_past += len(chunk)
            # A batch's snapshots are the states after each of its last tokens.
            self._rollback_room = min(self.rollback_depth or 0, len(chunk) - 1)
        ptr = self.ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def sampler(self, params: SamplerSettings) -> LlamaSampler:
        """llama.cpp's sampler chain for `params`. Constrained output is masked above the seam
        (runtime/structured/guide.py), so the chain never holds a grammar."""
        return LlamaSampler(self, params)

    def sample(self, sampler: LlamaSampler, logits_idx: int = -1) -> int:
        ptr = self.ctx.get_logits_ith(logits_idx)
        return sampler.sample(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))

    def close(self) -> None:
        if getattr(self, "_tap", None) is not None and self._tap.log is not None:
            self._tap.log.close()  # its process fd; the C side stops logging and prefetching
        for obj in ("batch", "ctx", "model"):
            o = getattr(self, obj, None)
            if o is not None:
                o.close()
                setattr(self, obj, None)


# --- sampling ------------------------------------------------------------------------------------
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class LlamaSampler:
    """llama.cpp's sampler chain (top-k, top-p, temperature, seeded draw; greedy at temperature
    0) applied to a logits vector. Logits come in as an array (the runtime adds logit_bias, and
    a constrained choice's mask sets refused tokens to -inf), so the same sampler serves every
    choice of an `n` request from the prompt's saved logits.
    """

    def __init__(self, backend: LlamaBackend, params: SamplerSettings) -> None:
        import llama_cpp
        from llama_cpp import _internals as li

        self._lib = llama_cpp
        self.greedy = params.temperature <= 0
        self._chain = li.LlamaSampler()
        if self.greedy:
            self._chain.add_greedy()
        else:
            if params.top_k > 0:
                self._chain.add_top_k(params.top_k)
            if params.top_p < 1.0:
                self._chain.add_top_p(params.top_p, 1)
            self._chain.add_temp(params.temperature)
            # llama.cpp takes a 32-bit seed and reads 0xFFFFFFFF as "random": fold, never collide.
            seed = params.seed if params.seed is not None else fresh_seed()
            self._chain.add_dist(seed % 0xFFFFFFFF)
        self._cells = np.empty(backend.n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(backend.n_vocab, dtype=np.int32)

    def sample(self, logits: np.ndarray) -> int:
        """The index of the pick in `logits` (the whole vocabulary in token-id order, or the
        tokens a grammar allows: see `Sampler`)."""
        if self.greedy:
            return int(np.argmax(logits))  # llama.cpp's greedy: the first best token
        cells = self._cells[: len(logits)]
        cells["id"] = self._ids[: len(logits)]
        cells["logit"] = logits
        cells["p"] = 0.0
        arr = self._lib.llama_token_data_array(
            data=cells.ctypes.data_as(self._lib.llama_token_data_p),
            size=len(cells), selected=-1, sorted=False,
        )
        self._lib.llama_sampler_apply(self._chain.sampler, ctypes.byref(arr))
        index = int(arr.data[arr.selected].id)
        # The chain keeps no history (no penalties, no grammar), so accepting the index rather
        # than a subset's token id changes nothing; it is llama.cpp's protocol all the same.
        self._lib.llama_sampler_accept(self._chain.sampler, index)
        return index

    def close(self) -> None:
        self._chain.close()
