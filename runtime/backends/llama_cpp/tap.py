"""The eval-callback tap: which of llama.cpp's graph nodes we stop at, answered in C when we can.

llama.cpp's scheduler asks the eval callback about *every* node of every graph ("do you want this
one?", ~50 nodes per layer) and then calls it again with the data of the nodes it said yes to. A
ctypes callback into Python costs about a microsecond per call, so answering the questions in
Python costs more than the whole decode step of a small model. When a C compiler is available we
build a small helper once (runtime/backends/llama_cpp/tap_source.py; cached on disk, keyed by its
source) that answers the questions in C, keeps all-resident one-token routing events in a log
(`RoutingLog`) and can prefetch by pre-gating; otherwise the Python answer is used, cached per
node address, and every tapped node reaches Python. Results never depend on which runs.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.backends.base import MARK
from runtime.backends.llama_cpp.tap_source import (
    MAX_TAPS,
    MAX_TENSORS,
    MAX_WATCH,
    MAX_WIDTH,
    SOURCE,
    TapState,
)

log = logging.getLogger(__name__)

# (tensor address, tap index, layer): one tapped node's data is ready to read. A true result
# stops the graph there (the runtime found it cannot go on: e.g. an expert it could not read).
Deliver = Callable[[int, int, int], bool | None]

_DELIVER = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)
_NATIVE: ctypes.CDLL | None | bool = False  # False: not tried yet; None: unavailable


def _cache_dir() -> Path:
    """EDGEMOE_CACHE/native, else the user's cache folder (XDG) under edgemoe/native."""
    own = os.environ.get("EDGEMOE_CACHE")
    if own:
        return Path(own) / "native"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgemoe" / "native"


def _build() -> ctypes.CDLL | None:
    """Compile the helper once per source/platform (atomic rename: concurrent builds are safe)."""
    if os.environ.get("EDGEMOE_NATIVE_TAP", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    digest = hashlib.sha256((SOURCE + sys.platform + os.uname().machine).encode()).hexdigest()
    target = _cache_dir() / f"edgemoe_tap-{digest[:16]}.so"
    if not target.exists():
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            log.info("no C compiler: the routing tap answers llama.cpp in Python (slower)")
            return None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src, out = Path(tmp) / "tap.c", Path(tmp) / "tap.so"
                src.write_text(SOURCE)
                subprocess.run(
                    [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src), "-lm"],
                    check=True, capture_output=True, timeout=120,
                )
                os.replace(out, target)
        except (OSError, subprocess.SubprocessError) as e:
            log.info("routing tap helper not built (%s): answering in Python", e)
            return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as e:
        log.info("routing tap helper not loadable (%s): answering in Python", e)
        return None
    lib.edgemoe_tap_eval.restype = ctypes.c_bool
    lib.edgemoe_tap_eval.argtypes = [ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p]
    return lib


def native_library() -> ctypes.CDLL | None:
    """The compiled helper, built on first use; None when it cannot be (then Python answers)."""
    global _NATIVE
    if _NATIVE is False:
        _NATIVE = _build()
    return _NATIVE  # type: ignore[return-value]


class RoutingLog:
    """What the C tap did without asking Python, for the pager to replay in order.

    Records are `width` int32s (runtime/backends/llama_cpp/tap_source.py): a one-token routing
    event whose experts were all resident (layer, k, ids), a batch mark, or a prefetch the tap
    issued (PREFETCH_BASE - layer, n, ids). The pager keeps `resident` equal to its books and
    replays `drain()` before it handles any event itself, so the books see every event in order.
    """

    def __init__(self, state: TapState, ids_tap: int, n_layers: int, n_experts: int,
                 top_k: int, sources: dict[str, tuple[str, int]], capacity: int = 4096) -> None:
        self._state = state
        self.sources = sources  # hidden-state name -> ("watch" | "stop", index)
        self.routers = None  # pre-gating reads them from the GGUF
        self.max_guess = min(MAX_WIDTH, max(top_k, 2 * top_k))
        self.width = 2 + self.max_guess
        self.resident = np.zeros((n_layers, n_experts), dtype=np.uint8)
        # Per layer, what a one-token step knows without stopping (tap_source.py: `known`);
        # all zero until the pager says otherwise with `use_known`.
        self.known = np.zeros(n_layers, dtype=np.uint8)
        self._log = np.zeros(capacity * self.width, dtype=np.int32)
        self._mark = np.zeros(self.width, dtype=np.int32)
        self._mark[0] = MARK
        self._keep: list[np.ndarray] = []
        self._pidfd = -1
        # The engine's reader of a layer's residual input rows (set by the backend).
        self.read_hidden: Callable[[int], np.ndarray | None] | None = None
        state.n_layers, state.n_experts = n_layers, n_experts
        state.resident = self.resident.ctypes.data
        state.log = self._log.ctypes.data
        state.width, state.log_cap, state.log_len = self.width, capacity, 0
        state.ids_tap = ids_tap

    def __len__(self) -> int:
        return int(self._state.log_len)

    def drain(self) -> np.ndarray:
        """The records, oldest first ([n, width]); the log is empty afterwards."""
        n = self._state.log_len
        out = self._log[: n * self.width].reshape(n, self.width).copy()
        self._state.log_len = 0
        return out

    def mark(self) -> bool:
        """Note that a new batch starts here (for per-position routing rows); False if full."""
        n = self._state.log_len
        if n >= self._state.log_cap:
            return False
        self._log[n * self.width : (n + 1) * self.width] = self._mark
        self._state.log_len = n + 1
        return True

    def hidden(self, layer: int) -> np.ndarray | None:
        """`layer`'s residual input rows of the batch being computed, f32 [n_tokens, n_embd]
        (valid while its routing event is handled); None when the engine cannot say."""
        return self.read_hidden(layer) if self.read_hidden is not None else None

    # --- quiet layers ------------------------------------------------------------------------
    def use_known(self, on: bool) -> None:
        """Let one-token steps run through layers whose `known` level says every expert they
        can pick is resident (no stop, no log record; counted in `quiet_counts`), or stop at
        every layer again (a caller that needs every event: routing traces)."""
        self._state.known = self.known.ctypes.data if on else None

    @property
    def sample(self) -> int:
        return int(self._state.sample)

    @sample.setter
    def sample(self, level: int) -> None:
        """Stop at layers whose `known` level is at most `level` (0: only unknown ones)."""
        self._state.sample = int(level)

    @property
    def quiet_counts(self) -> tuple[int, int]:
        """One-token events not stopped at so far: (every expert resident, every pinned)."""
        return int(self._state.quiet_by[1]), int(self._state.quiet_by[2])

    @property
    def python_needed(self) -> bool:
        return bool(self._state.python_needed)

    @python_needed.setter
    def python_needed(self, value: bool) -> None:
        self._state.python_needed = int(value)

    # --- prefetch ----------------------------------------------------------------------------
    def configure_prefetch(self, routers: np.ndarray, next_layers: np.ndarray,
                           spans: np.ndarray, biases: np.ndarray | None,
                           softmax_bias: bool = False, logit_biases: np.ndarray | None = None,
                           eps: float = 1e-6, *, source: str, page: int) -> None:
        """Hand the tap what pre-gating needs: folded routers [layers, experts, n_embd] (f32),
        the next MoE layers after each layer [layers, 2] (i32, -1: none), each layer's expert
        tensors as (address of expert 0, stride) [layers, MAX_TENSORS, 2] (u64, checked
        against the mapping by the caller), the selection biases [layers, experts] (f32) of
        routers that add one to a sigmoid (None: none do) or, with `softmax_bias`, to the
        softmax probabilities (ERNIE), the routers' own logit biases [layers, experts] (f32;
        None: none have one; with them the hidden state is RMS-normalised with `eps` first,
        gpt-oss), and which hidden state to read (`sources`)."""
        if source not in self.sources:
            raise ValueError(f"hidden state '{source}' is not tapped (have: {list(self.sources)})")
        kind, index = self.sources[source]
        st = self._state
        routers = np.ascontiguousarray(routers, dtype=np.float32)
        next_layers = np.ascontiguousarray(next_layers, dtype=np.int32)
        spans = np.ascontiguousarray(spans, dtype=np.uint64)
        n_layers, n_experts, n_embd = routers.shape
        if (n_layers, n_experts) != self.resident.shape or spans.shape[1:] != (MAX_TENSORS, 2):
            raise ValueError("prefetch tables do not match the routing log's shape")
        scratch = np.zeros(n_embd + n_experts, dtype=np.float32)
        if biases is not None:
            biases = np.ascontiguousarray(biases, dtype=np.float32)
            if biases.shape != (n_layers, n_experts):
                raise ValueError("prefetch biases do not match the routing log's shape")
        if logit_biases is not None:
            logit_biases = np.ascontiguousarray(logit_biases, dtype=np.float32)
            if logit_biases.shape != (n_layers, n_experts):
                raise ValueError("prefetch router biases do not match the routing log's shape")
        self._keep = [routers, next_layers, spans, scratch, biases, logit_biases]
        if self._pidfd < 0 and hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(os.getpid())
            except OSError:
                self._pidfd = -1
        st.pf_depth = st.pf_width = 0
        st.pf_watch, st.pf_tap = (index, -1) if kind == "watch" else (0, index)
        st.n_embd, st.page, st.pidfd = n_embd, page, self._pidfd
        st.routers, st.next = routers.ctypes.data, next_layers.ctypes.data
        st.biases = None if biases is None else biases.ctypes.data
        st.softmax_bias = int(bool(softmax_bias) and biases is not None)
        st.logit_biases = None if logit_biases is None else logit_biases.ctypes.data
        st.norm_eps = float(eps)
        st.spans, st.scratch = spans.ctypes.data, scratch.ctypes.data

    def set_prefetch(self, depth: int, width: int) -> None:
        """Guess `width` experts for each of the next `depth` MoE layers (0: off)."""
        if self._state.routers is None:
            raise RuntimeError("configure_prefetch() first")
        self._state.pf_depth = max(0, min(2, depth))
        self._state.pf_width = max(0, min(self.max_guess, width))

    @property
    def prefetch_issued(self) -> tuple[int, int]:
        """(batched WILLNEED calls, bytes advised) so far."""
        return int(self._state.pf_calls), int(self._state.pf_bytes)

    def close(self) -> None:
        """Stop logging and prefetching (the C side sees neither any more)."""
        self._state.pf_depth = self._state.pf_width = 0
        self._state.known = None
        self._state.log = None
        self._state.ids_tap = -1
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    @property
    def counts(self) -> tuple[int, int]:
        """(events kept in C, events delivered to Python) so far."""
        return int(self._state.logged), int(self._state.delivered)


class NodeTap:
    """The eval callback for one llama.cpp context: stop at nodes named `<tap>-<layer>`.

    taps: node-name prefixes whose data is delivered (`deliver(tensor, tap index, layer)`) while
    the graph waits. watch: prefixes only remembered per layer (`watched(i, layer)` gives the
    node's address), for tensors still alive when a tapped node is delivered (a layer's
    residual input is, until the layer's last add) without splitting the graph at them.
    c_only (native only): nodes C itself may stop at for prefetching, never delivered.
    """

    def __init__(
        self,
        taps: tuple[str, ...],
        deliver: Deliver,
        ggml: ctypes.CDLL,
        watch: tuple[str, ...] = (),
        native: bool | None = None,
        c_only: tuple[str, ...] = (),
    ) -> None:
        names = taps + c_only + watch
        if len(names) > MAX_TAPS or len(watch) > MAX_WATCH:
            raise ValueError(f"at most {MAX_TAPS} names ({MAX_WATCH} watched), got {names}")
        import llama_cpp

        self.taps, self.watch = taps, watch
        self._deliver = deliver
        self._get_name = ggml.ggml_get_name
        self.log: RoutingLog | None = None
        lib = native_library() if native is not False else None
        if native and lib is None:
            raise RuntimeError("the native routing tap could not be built")
        self.kind = "native" if lib is not None else "python"
        if lib is not None:
            state = TapState()
            state.get_name = ctypes.cast(ggml.ggml_get_name, ctypes.c_void_p).value
            state.tensor_get = ctypes.cast(ggml.ggml_backend_tensor_get, ctypes.c_void_p).value
            self._c_deliver = _DELIVER(self._safe_deliver)
            state.deliver = ctypes.cast(self._c_deliver, ctypes.c_void_p).value
            state.n_taps, state.n_watch = len(taps) + len(c_only), len(watch)
            state.n_deliver = len(taps)
            state.ids_tap = state.pf_tap = -1
            state.epoch = 1  # slots start at epoch 0: empty
            self._sources = {name: ("stop", len(taps) + j) for j, name in enumerate(c_only)}
            self._sources.update({name: ("watch", j) for j, name in enumerate(watch)})
            for i, name in enumerate(names):
                prefix = (name + "-").encode()
                state.prefixes[i].value = prefix
                state.lens[i] = len(prefix)
            self._state = state
            self._lib = lib
            addr = ctypes.cast(lib.edgemoe_tap_eval, ctypes.c_void_p).value
            self.callback = llama_cpp.ggml_backend_sched_eval_callback(addr)
            self.user_data: int | None = ctypes.addressof(state)
            return
        either = b"|".join(re.escape(t.encode()) for t in taps + watch)
        self._named = re.compile(rb"^(" + either + rb")-(\d+)$")
        self._index = {t.encode(): i for i, t in enumerate(taps + watch)}
        self._prefixes = tuple(t.encode() + b"-" for t in taps)
        self._watch_prefixes = tuple(t.encode() + b"-" for t in watch)
        self._asked: dict[int, bool] = {}
        self._watched: dict[tuple[int, int], int] = {}
        self._first_ask_ns = 0
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._py_eval)
        self.user_data = None

    def routing_log(self, ids_tap: str, n_layers: int, n_experts: int,
                    top_k: int) -> RoutingLog | None:
        """Let C keep all-resident one-token events of `ids_tap` from Python (native only)."""
        if self.kind != "native":
            return None
        if self.log is None:
            self.log = RoutingLog(self._state, self.taps.index(ids_tap), n_layers, n_experts,
                                  top_k, self._sources)
        return self.log

    # --- the Python answer (no compiler) -----------------------------------------------------
    def _py_eval(self, tensor: int, ask: bool, _user: int) -> bool:
        if ask:
            if not self._first_ask_ns:
                self._first_ask_ns = time.monotonic_ns()
            # Graphs of one batch shape are laid out identically, so the answer is cached per
            # node address (`new_graph_shape` resets it); watched nodes are always re-read.
            known = self._asked.get(tensor)
            if known is None:
                name = self._get_name(tensor)
                known = name.startswith(self._prefixes)
                if not known and self._watch_prefixes and name.startswith(self._watch_prefixes):
                    m = self._named.match(name)
                    if m:
                        key = (self._index[m.group(1)] - len(self.taps), int(m.group(2)))
                        self._watched[key] = tensor
                    return False
                self._asked[tensor] = known
            return known
        m = self._named.match(self._get_name(tensor))
        if m:
            i = self._index[m.group(1)]
            if i < len(self.taps):
                return not self._safe_deliver(tensor, i, int(m.group(2)))
        return True

    def _safe_deliver(self, tensor: int, tap: int, layer: int) -> int:
        """1 to stop the graph at this node (ggml's scheduler then computes nothing further
        of it), else 0."""
        try:
            return 1 if self._deliver(tensor, tap, layer) else 0
        except Exception:  # never let a Python error unwind through C
            import traceback

            traceback.print_exc()
            return 0

    # --- state -------------------------------------------------------------------------------
    def new_graph_shape(self) -> None:
        """The batch shape changed: node addresses mean other nodes now."""
        if self.kind == "python":
            self._asked.clear()
        else:
            self._state.epoch = (self._state.epoch + 1) & 0xFFFFFFFF or 1

    def watched(self, index: int, layer: int) -> int | None:
        """Address of the last `watch[index]` node of `layer` the scheduler asked about."""
        if self.kind == "native":
            return self._state.watched[index][layer] or None
        return self._watched.get((index, layer))

    def first_question_ns(self, reset: bool = False) -> int:
        """time.monotonic_ns() of the first question about a node since the last reset (0:
        none yet): a decode's graph is built and allocated by then, and its compute starts."""
        if self.kind == "native":
            got = int(self._state.first_ask_ns)
            if reset:
                self._state.first_ask_ns = 0
        else:
            got = self._first_ask_ns
            if reset:
                self._first_ask_ns = 0
        return got
