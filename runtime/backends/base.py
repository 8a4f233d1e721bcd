"""The engine seam: what the runtime, calibration and tracing need from an inference engine.

An engine (llama.cpp, onnxruntime) loads one model file, decodes one sequence, and reports each
MoE layer's routing *before* that layer's expert matmuls run (llama.cpp's eval callback), or
right after its run (onnxruntime's routing outputs), which is when the expert cache must admit
what the layer needs. The protocol here is everything the runtime uses of an engine; this module
imports nothing of the runtime above it, and engines are opened by name in registry.py.
Everything above the seam (budget, cache, residency, sampling parameters, the request path) is
engine-independent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from runtime.backends.mapping import ExpertFile, FileMapping


@dataclass(frozen=True)
class RoutingEvent:
    """One MoE layer's routing decision for one batch, in token order.

    ids: int32 [n_tokens, top_k], the chosen experts. probs (f32 [n_tokens, n_experts], the
    router's probabilities before top-k) and weights (f32 [n_tokens, top_k], the mixing weights
    after any normalisation) are filled only when the engine was asked for routing detail.
    """

    layer: int
    ids: np.ndarray
    probs: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


# Returns True to stop the batch before the layer's expert matmuls run (an expert could not be
# brought in whole or verified): an engine that can stops computing, and the runtime fails the
# step; one that reports routing after the run (onnxruntime) ignores it.
RoutingObserver = Callable[[RoutingEvent], bool | None]


@dataclass(frozen=True)
class EngineConfig:
    """How to start an engine on one model file; the same for every backend."""

    model_path: Path
    n_ctx: int
    n_threads: int
    n_batch: int = 512
    n_ubatch: int = 512
    observe_routing: bool = True
    routing_detail: bool = False  # also router probabilities and mixing weights (calibration)
    kv_cache_type: str = "f16"  # llama.cpp's --cache-type-k/v names (f16, q8_0, ...)
    lazy_load: bool = False  # map without reading the whole file (a partial budget's cold start)
    wait_policy: str | None = None  # how engine threads wait (runtime/threads.py); None: default
    flash_attn: bool | None = None  # llama.cpp's flash attention; None: its `auto`
    # Recurrent-state snapshots per sequence, so a speculative verify batch of this many drafts
    # can be rolled back (llama.cpp's n_rs_seq; runtime/recurrent.py); 0: none kept.
    rollback_tokens: int = 0
    verbose: bool = False


@dataclass(frozen=True)
class LazyLoad:
    """What a lazy load did (EngineConfig.lazy_load): active (mapped without reading the whole
    file), or why not."""

    active: bool
    reason: str = ""
    slots: tuple[str, ...] = ()


# A routing log's record kinds (first int32 of a record): >= 0 a routing event of that layer,
# MARK a batch start, <= PREFETCH_BASE a prefetch issued for layer PREFETCH_BASE - kind.
MARK = -1
PREFETCH_BASE = -2


class RoutingLog(Protocol):
    """Events an engine answered without calling Python (llama.cpp's C tap), for the pager to
    replay in order, and the prefetch the tap can issue on its own (runtime/experts/)."""

    resident: np.ndarray  # uint8 [layers, experts]: 1 = counted in the books (kept exact)
    python_needed: bool  # True: deliver the next event to Python (transients to release)
    sources: dict[str, tuple[str, int]]  # hidden states it can read: name -> (kind, index)
    max_guess: int  # experts a prefetch may guess per layer at most
    # The engine's own routers for pre-gating (layer -> f32 [n_experts, n_embd], the norm's scale
    # folded in), or why it has none; None: read them from the GGUF (llama.cpp).
    routers: dict[int, np.ndarray] | str | None
    known: np.ndarray  # uint8 [layers]: 2 all pinned, 1 all resident and never evicted, 0 not
    sample: int  # this step stops at layers whose `known` is at most this (0 or 1)

    def __len__(self) -> int: ...

    def drain(self) -> np.ndarray:
        """[n, width] records, oldest first (runtime/backends/llama_cpp/tap_source.py): a routing
        hit (layer, k, ids), a batch MARK, or a prefetch (PREFETCH_BASE - layer, n, ids)."""
        ...

    def mark(self) -> bool:
        """Note a batch start in the log; False when full (then nothing was noted)."""
        ...

    def configure_prefetch(self, routers: np.ndarray, next_layers: np.ndarray,
                           spans: np.ndarray, biases: np.ndarray | None,
                           softmax_bias: bool = False, *, source: str, page: int) -> None: ...

    def set_prefetch(self, depth: int, width: int) -> None: ...

    def hidden(self, layer: int) -> np.ndarray | None:
        """`layer`'s residual input rows of the batch being computed, f32 [n_tokens, n_embd],
        while its routing event is handled; None when the engine cannot say."""
        ...

    def use_known(self, on: bool) -> None:
        """One-token steps skip the stop at `known` layers (counted, not logged), or not."""
        ...

    @property
    def quiet_counts(self) -> tuple[int, int]:
        """One-token events not stopped at: (known level 1, known level 2)."""
        ...

    @property
    def prefetch_issued(self) -> tuple[int, int]:
        """(batched WILLNEED calls, bytes advised) so far."""
        ...

    def close(self) -> None: ...


class SamplerSettings(Protocol):
    """What an engine's sampler reads of a request's sampling parameters.

    `runtime.generation.request.SamplingParams` is the one record that satisfies it; the seam
    names only the fields it needs, so the floor imports nothing of the request path above it.
    """

    @property
    def temperature(self) -> float: ...

    @property
    def top_p(self) -> float: ...

    @property
    def top_k(self) -> int: ...

    @property
    def seed(self) -> int | None: ...


class Sampler(Protocol):
    """An engine's token sampler, built from SamplerSettings; closed after a generation.

    It samples from a logits vector the runtime hands it (logit_bias already added), so every
    choice of an `n` request can start from the prompt's logits, and returns the index of its
    pick in that vector. A constrained choice hands it the logits of only the tokens its grammar
    allows, in token order: the same draw as over the whole vocabulary with the others at -inf
    (they would get probability 0), for less work."""

    def sample(self, logits: np.ndarray) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """One loaded model + context decoding a single sequence.

    Residency hook: `file_mapping()` says where the engine mapped the file that holds the
    experts, so the expert cache can give an expert's pages back with madvise; None when the
    engine keeps no file-backed mapping (then nothing can be paged).
    """

    name: str
    cfg: EngineConfig
    wait_policy: str  # how its threads wait for each other (runtime/threads.py), as in effect
    recurrent: bool  # keeps recurrent state, which truncate cannot take far back (recurrent.py)
    n_vocab: int
    n_past: int

    def tokenize(self, text: str, special: bool = True) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def eos_token(self) -> int: ...

    def reset(self) -> None: ...

    def decode(self, tokens: list[int], all_outputs: bool = False) -> np.ndarray:
        """Feed tokens after the current position; returns the last position's logits."""
        ...

    def truncate(self, n_past: int) -> None:
        """Drop every cached position from n_past on; the next decode continues there
        (speculative decoding rolls back rejected drafts)."""
        ...

    @property
    def last_logits(self) -> np.ndarray:
        """The last decode's logits [positions, n_vocab]: all of them with all_outputs."""
        ...

    def sampler(self, params: SamplerSettings) -> Sampler: ...

    def close(self) -> None: ...

    def file_mapping(self) -> FileMapping | None:
        """Where the expert file is mapped (residency hook); None: it is not mapped."""
        ...

    def expert_file(self) -> ExpertFile | None:
        """The file and byte ranges the engine reads experts from when they are not the
        bundle's own (onnxruntime's packed copy); None: the manifest's."""
        ...

    # What a lazy load did (None: the engine has no such load); where the model file's one
    # mapping starts (None: it is not mapped in one piece).
    lazy_load: LazyLoad | None
    mapping_base: int | None
    # Seconds spent building compute graphs so far (a prompt's breakdown takes the difference);
    # None: the engine builds no graph per step (onnxruntime's is built once, at load).
    graph_build_s: float | None

    def routing_log(self, n_layers: int, n_experts: int, top_k: int) -> RoutingLog | None:
        """A log of the routing events the engine answers itself (hits never reach Python);
        None when every event comes to the observer."""
        ...


class Tokenizer(Protocol):
    """A model file's own tokenizer, without weights or a context (cheap to open)."""

    def tokenize(self, text: str, special: bool = True) -> list[int]: ...

    def close(self) -> None: ...
