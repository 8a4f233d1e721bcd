"""The runtime's Python API: `load(bundle) -> Model`. HTTP, CLI and apps are thin shells over it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.quant_types import kv_bytes_per_element
from runtime.backends.base import (
    Backend,
    EngineConfig,
    backend_for,
    format_for,
    open_backend,
)
from runtime.backends.lazy_load import advise_random_except, complement
from runtime.budget import BudgetPlan, parse_budget, plan_budget
from runtime.bundle import OpenBundle, attention_shape, open_bundle
from runtime.errors import BundleError, ChatTemplateError, EdgemoeError, PromptTooLongError
from runtime.expert_cache import ExpertCache
from runtime.expert_pager import ExpertPager
from runtime.generation import (
    DEFAULT_MAX_TOKENS,
    GenerationRequest,
    GenerationResult,
    PreparedRequest,
    SamplingParams,
    StreamEvent,
    TextAssembler,
    Usage,
)
from runtime.pinning import pinned_set
from runtime.policy import DEFAULT_POLICY
from runtime.procfs import mapping_rss, process_rss
from runtime.residency import FileMapping, MadviseResidency

DEFAULT_CTX = 2048

__all__ = [
    "ChatTemplateError",
    "GenerationRequest",
    "GenerationResult",
    "Model",
    "PreparedRequest",
    "SamplingParams",
    "StreamEvent",
    "Usage",
    "load",
    "minimum_budget",
]


def _profile_value(bundle: OpenBundle, key: str, default: Any) -> Any:
    value = getattr(bundle.manifest.profile, key)
    return default if value in (None, 0) else value


def load(
    bundle: str | Path,
    budget: str | int | None = None,
    *,
    n_ctx: int | None = None,
    threads: int | None = None,
    policy: str = DEFAULT_POLICY,
    cold: bool = False,
    verify: bool = False,
    record_routing: bool = False,
    backend: str | None = None,
) -> Model:
    """Open a bundle and start an engine on it, keeping experts resident within `budget`.

    budget: "40%" of expert bytes, a size ("1.5GB") or bytes for weights + KV cache; None uses
    the bundle's device profile. cold: also drop released experts from the OS page cache, so a
    miss reads storage (what a device without spare RAM sees). backend: "llama.cpp" (the GGUF
    build) or "onnx" (the ONNX build); None runs the bundle's primary build.
    """
    opened = open_bundle(bundle, verify=verify, fmt=format_for(backend))
    m = opened.manifest
    n_ctx = _context(opened, n_ctx)
    threads = int(threads or min(_profile_value(opened, "threads", 4), os.cpu_count() or 1))
    spec = parse_budget(budget)
    if spec is None and m.profile.model_memory_bytes:
        spec = parse_budget(m.profile.model_memory_bytes)
    plan = plan_budget(spec, **_budget_inputs(opened, n_ctx))
    return Model(opened, plan, n_ctx, threads, policy, cold, record_routing)


def _context(opened: OpenBundle, n_ctx: int | None) -> int:
    m = opened.manifest
    return int(
        n_ctx or min(_profile_value(opened, "context_length", DEFAULT_CTX), m.shape.context_length)
    )


def _kv_cache_type(opened: OpenBundle) -> str:
    return str(_profile_value(opened, "kv_cache_type", "f16"))


def _budget_inputs(opened: OpenBundle, n_ctx: int) -> dict[str, int]:
    m, build = opened.manifest, opened.build
    per_layer = sum(x.expert_bytes for x in build.expert_layers)
    # llama.cpp stores the KV cache in the profile's type; the ONNX graph in its float type.
    kv_type = _kv_cache_type(opened) if build.format == "gguf" else "f32"
    per_value = kv_bytes_per_element(kv_type)
    return {
        "dense_bytes": build.dense_bytes,
        "kv_bytes": attention_shape(opened.model_path).kv_bytes(n_ctx, per_value),
        "expert_bytes_total": opened.expert_bytes_total,
        "one_token_expert_bytes": m.shape.top_k * per_layer,
    }


def minimum_budget(
    bundle: str | Path, n_ctx: int | None = None, backend: str | None = None
) -> int:
    """The smallest budget `load` accepts: dense weights + KV cache + one token's experts."""
    opened = open_bundle(bundle, fmt=format_for(backend))
    b = _budget_inputs(opened, _context(opened, n_ctx))
    return b["dense_bytes"] + b["kv_bytes"] + b["one_token_expert_bytes"]


class Model:
    """A loaded bundle. Not thread-safe for concurrent generations: calls are serialised."""

    def __init__(
        self,
        opened: OpenBundle,
        plan: BudgetPlan,
        n_ctx: int,
        threads: int,
        policy: str,
        cold: bool,
        record_routing: bool,
    ) -> None:
        self.bundle = opened
        self.manifest = opened.manifest
        self.budget = plan
        self.name = opened.name
        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        self._timings: dict[str, float] = {}
        self.build = opened.build
        self._expert_bytes = {x.layer: x.expert_bytes for x in self.build.expert_layers}
        self.pager = ExpertPager(
            None,
            None,
            self._expert_bytes,
            self.manifest.shape.top_k,
            record=record_routing,
            layers={x.layer: x for x in self.build.expert_layers},
            n_experts=self.manifest.shape.n_experts,
        )
        self.engine: Backend = open_backend(
            EngineConfig(
                opened.model_path,
                n_ctx,
                threads,
                observe_routing=plan.offloading or record_routing,
                kv_cache_type=_kv_cache_type(opened),
                lazy_load=plan.offloading,
            ),
            self.pager.on_routing,
            kind=backend_for(self.build.format),
        )
        self.lazy_load = getattr(self.engine, "lazy_load", None)
        if self.lazy_load is not None and self.lazy_load.active:
            self._read_dense_only()
        self.cache: ExpertCache | None = None
        self.residency: MadviseResidency | None = None
        self._pins: dict[int, tuple[int, ...]] = {}
        if plan.offloading:
            mapping = self.engine.file_mapping()
            if mapping is None:
                self.engine.close()
                raise BundleError(
                    f"{opened.expert_path}: cannot find the engine's mapping of the expert file"
                )
            self._start_paging(policy, cold, mapping)

    def _read_dense_only(self) -> None:
        """A lazy load mapped the file without reading it: no readahead on the mapping, and
        the dense weights read now; experts come in as the cache admits them."""
        base = self.engine.mapping_base
        if base is None:
            return
        size = self.bundle.model_path.stat().st_size
        experts = [
            (t.offset, t.offset + t.stride * self.manifest.shape.n_experts)
            for x in self.build.expert_layers
            for t in x.tensors
        ]
        advise_random_except(base, size, complement(experts, size))

    def _start_paging(self, policy: str, cold: bool, mapping: FileMapping) -> None:
        layers = {x.layer: x for x in self.build.expert_layers}
        self._pins = pinned_set(
            self.manifest.hot_experts,
            self._expert_bytes,
            self.budget.expert_capacity_bytes,
            self.manifest.shape.top_k,
        )
        self.residency = MadviseResidency(
            self.bundle.expert_path, mapping, lambda layer, e: layers[layer].ranges(e), cold=cold
        )
        self.cache = ExpertCache(
            expert_bytes=self._expert_bytes,
            n_experts=self.manifest.shape.n_experts,
            capacity_bytes=self.budget.expert_capacity_bytes,
            pinned=self._pins,
            policy=policy,
            residency=self.residency,
        )
        self.cache.warm()  # release what llama.cpp populated at load, pin the hot set
        self.pager.cache, self.pager.residency = self.cache, self.residency

    # --- text ----------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenize(text)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        from runtime.chat_template import render_chat

        return render_chat(self.manifest.chat_template, messages)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Render the chat template, tokenize and check the context window, once.

        Every generation goes through here before it runs (or waits in a server's queue), so a
        prompt that cannot run fails early with ChatTemplateError or PromptTooLongError, and
        the engine never tokenizes again. Safe to call while another thread generates:
        rendering is pure and tokenizing only reads the vocabulary.
        """
        if self.engine is None:
            raise EdgemoeError(f"{self.name}: the model is closed")
        if request.messages is not None:
            prompt = self.apply_chat_template(request.messages)
        else:
            assert request.prompt is not None  # GenerationRequest holds exactly one
            prompt = request.prompt
        ids = self.tokenize(prompt) or [self.engine.eos_token()]
        params, room = request.params, self.n_ctx - len(ids)
        if params.max_tokens is None:  # the default: as much as fits, up to DEFAULT_MAX_TOKENS
            if room < 1:
                raise PromptTooLongError(len(ids), self.n_ctx)
            params = replace(params, max_tokens=min(DEFAULT_MAX_TOKENS, room))
        elif params.max_tokens > room:
            raise PromptTooLongError(len(ids), self.n_ctx, params.max_tokens)
        return PreparedRequest(prompt, tuple(ids), params)

    # --- generation ----------------------------------------------------------------------
    # generate/stream/chat/stream_events take SamplingParams' fields as keywords (max_tokens,
    # temperature, top_p, top_k, seed, stop) and prepare eagerly: bad input raises at the call.
    def generate(
        self, prompt: str, *, cancel: threading.Event | None = None, **sampling: Any
    ) -> GenerationResult:
        request = GenerationRequest(prompt=prompt, params=SamplingParams(**sampling))
        return self.generate_prepared(self.prepare(request), cancel=cancel)

    def stream(
        self, prompt: str, *, cancel: threading.Event | None = None, **sampling: Any
    ) -> Iterator[str]:
        events = self.stream_events(prompt, cancel=cancel, **sampling)
        return (ev.text for ev in events if ev.text)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        cancel: threading.Event | None = None,
        **sampling: Any,
    ) -> GenerationResult:
        request = GenerationRequest(messages=messages, params=SamplingParams(**sampling))
        return self.generate_prepared(self.prepare(request), cancel=cancel)

    def stream_events(
        self, prompt: str, *, cancel: threading.Event | None = None, **sampling: Any
    ) -> Iterator[StreamEvent]:
        request = GenerationRequest(prompt=prompt, params=SamplingParams(**sampling))
        return self.stream_prepared(self.prepare(request), cancel=cancel)

    def generate_prepared(
        self, prepared: PreparedRequest, *, cancel: threading.Event | None = None
    ) -> GenerationResult:
        text: list[str] = []
        last: StreamEvent | None = None
        for ev in self.stream_prepared(prepared, cancel=cancel):
            text.append(ev.text)
            last = ev
        assert last is not None and last.usage is not None
        return GenerationResult(
            "".join(text),
            list(last.tokens or ()),
            last.finish_reason or "stop",
            last.usage,
            last.timings or {},
        )

    def stream_prepared(
        self, prepared: PreparedRequest, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]:
        """Run a prepared request; the last event carries finish_reason, usage and timings.

        Generations are serialised on this Model; `cancel` is checked between tokens.
        """
        with self._lock:
            yield from self._run(prepared, cancel)

    def _decode(self, tokens: list[int]) -> np.ndarray:
        self.pager.begin_batch()
        logits = self.engine.decode(tokens)
        self.pager.reconcile()
        return logits

    def _run(
        self, prepared: PreparedRequest, cancel: threading.Event | None
    ) -> Iterator[StreamEvent]:
        engine, params, max_tokens = self.engine, prepared.params, prepared.max_tokens
        prompt_ids = list(prepared.prompt_ids)
        out: list[int] = []
        engine.reset()
        t0 = time.perf_counter()
        self._decode(prompt_ids)
        t_prefill = time.perf_counter() - t0
        sampler = engine.sampler(params)
        text = TextAssembler(prepared.stop)
        finish, ttft, t1 = "length", None, time.perf_counter()
        try:
            for i in range(max_tokens):
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                tok = engine.sample(sampler)
                if engine.is_eog(tok):
                    finish = "stop"
                    break
                out.append(tok)
                piece = text.feed(engine.token_bytes(tok))
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                if piece:
                    yield StreamEvent(piece, tok)
                if text.stopped:
                    finish = "stop"
                    break
                if i + 1 < max_tokens:
                    self._decode([tok])
        finally:
            sampler.close()
        t_decode = time.perf_counter() - t1
        timings = {
            "prefill_s": t_prefill,
            "decode_s": t_decode,
            "ttft_s": ttft if ttft is not None else t_prefill,
            "prefill_tok_s": len(prompt_ids) / t_prefill if t_prefill > 0 else 0.0,
            "decode_tok_s": len(out) / t_decode if t_decode > 0 and out else 0.0,
        }
        self._timings = timings
        usage = Usage(len(prompt_ids), len(out))
        yield StreamEvent(text.flush(), None, finish, usage, timings, tuple(out))

    # --- introspection -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        b = self.budget
        s: dict[str, Any] = {
            "budget_bytes": b.budget_bytes,
            "dense_bytes": b.dense_bytes,
            "kv_bytes": b.kv_bytes,
            "expert_bytes_total": b.expert_bytes_total,
            "expert_capacity_bytes": b.expert_capacity_bytes,
            "budget_fraction": b.fraction,
            "offloading": b.offloading,
            "n_ctx": self.n_ctx,
            **{k: v for k, v in self._timings.items()},
            "transient_loads": self.pager.stats.transient_loads,
            "process_rss_bytes": process_rss(),
            "mapping_rss_bytes": mapping_rss(self.bundle.expert_path),
            "backend": self.engine.name if self.engine is not None else None,
        }
        if self.cache is None:
            s.update(
                resident_expert_bytes=b.expert_bytes_total,
                pinned_bytes=0,
                hits=0,
                misses=0,
                bytes_loaded=0,
                evictions=0,
                hot_experts={},
            )
            return s
        cs = self.cache.stats()
        s.update(
            resident_expert_bytes=cs.resident_bytes,
            pinned_bytes=cs.pinned_bytes,
            hits=cs.hits,
            misses=cs.misses + self.pager.stats.transient_loads,
            bytes_loaded=cs.bytes_loaded + self.pager.stats.transient_bytes,
            evictions=cs.evictions,
            hot_experts={str(k): list(v) for k, v in self._pins.items()},
        )
        return s

    def close(self) -> None:
        with self._lock:
            if self.residency is not None:  # unlock pins while llama.cpp's mapping still exists
                self.residency.close()
                self.residency = None
            if self.engine is not None:
                self.engine.close()
                self.engine = None  # type: ignore[assignment]

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
