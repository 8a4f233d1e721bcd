"""A loaded bundle: `Model` generates through the one paged decode step, within a budget it may
change while loaded, and reports its figures. `load` (runtime/loading.py) makes one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from runtime.backends.base import Backend, EngineConfig
from runtime.backends.mapping import ExpertFile
from runtime.backends.registry import backend_for, open_backend
from runtime.budget import BudgetPlan, parse_budget, plan_budget
from runtime.bundles.open import OpenBundle
from runtime.errors import BudgetError, BundleError, EdgemoeError, SamplingError
from runtime.experts.cache import ExpertCache
from runtime.experts.pager import ExpertPager
from runtime.experts.residency import MadviseResidency
from runtime.experts.resize import BudgetChange, BudgetHistory, apply_budget
from runtime.footprint import budget_inputs, kv_cache_type
from runtime.generation.decoding import run
from runtime.generation.latency import LatencyRecorder
from runtime.generation.preparation import prepare_request
from runtime.generation.request import (
    GenerationRequest,
    GenerationResult,
    PreparedRequest,
    SamplingParams,
    StreamEvent,
)
from runtime.integrity import BackgroundCheck, ExpertReader, integrity_for, ranges_to_check
from runtime.options import LoadOptions
from runtime.paging import PagedExperts, bundle_experts, read_dense_only, start_paging
from runtime.recurrent import recurrent_shape
from runtime.speculative.drafting import ModelDrafter
from runtime.speculative.speculator import Speculator
from runtime.stats import ModelStats, collect_stats
from runtime.stats.prompt import PromptCounters, prompt_counters, prompt_timing
from runtime.structured.tools import ToolChoice, ToolSpec


class Model:
    """A loaded bundle. Not thread-safe for concurrent generations: calls are serialised."""

    def __init__(
        self,
        opened: OpenBundle,
        plan: BudgetPlan,
        n_ctx: int,
        threads: int,
        options: LoadOptions,
        *,
        rollback: int = 0,
    ) -> None:
        """rollback: recurrent-state snapshots the engine keeps for speculative decoding."""
        self.bundle = opened
        self.manifest = opened.manifest
        self.budget = plan
        self.name = opened.name
        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        self.last_timings: dict[str, float] = {}  # the last generation's (StreamEvent.timings)
        # A budget changed while loaded (set_budget): applied at the next step boundary.
        self._pending_budget: tuple[BudgetPlan, str] | None = None
        self.budget_history = BudgetHistory()
        self.tokens_decoded = 0  # prompts included: the clock of budget_history
        self.build = opened.build
        # Weights verified as they are read (runtime/integrity/): the books and the first fault.
        self.integrity = integrity_for(self.manifest, self.build, options.check_reads)
        self._reader: ExpertReader | None = None
        self._background: BackgroundCheck | None = None
        self.experts = bundle_experts(opened, self.integrity)  # what the pager reads
        self._expert_bytes = self.experts.expert_bytes
        self.speculation: Speculator | None = None  # drafting (load(draft=...))
        self.speculation_off: str | None = None  # why a draft was asked for but is not used
        self.recurrent = recurrent_shape(opened.model_path)  # None: attention layers only
        self.engine_rollback = rollback
        self.options = options
        self.prefetch = "off"
        self.latency = LatencyRecorder()
        self.pager = ExpertPager(
            None,
            None,
            self._expert_bytes,
            self.manifest.shape.top_k,
            record=options.record_routing,
            layers=self.experts.layers,
            n_experts=self.manifest.shape.n_experts,
        )
        self.engine: Backend = open_backend(
            EngineConfig(
                opened.model_path,
                n_ctx,
                threads,
                observe_routing=plan.offloading or options.resizable
                or options.record_routing,
                kv_cache_type=kv_cache_type(opened),
                lazy_load=plan.offloading,
                wait_policy=options.wait_policy,
                flash_attn=options.flash_attn,
                rollback_tokens=rollback,
            ),
            self.pager.on_routing,
            kind=backend_for(self.build.format),
        )
        self._use_expert_file(self.engine.expert_file())
        self.pager.attach_engine(self.engine)  # hits stay in the engine's C tap when it can
        self.lazy_load = self.engine.lazy_load
        self._dense_spans: list[tuple[int, int]] = []  # file ranges of the dense weights
        self.dense_read_s: float | None = None  # a lazy load's wait for them
        if self.lazy_load is not None and self.lazy_load.active:
            self._dense_spans, self.dense_read_s = read_dense_only(self.engine, opened)
        self.cache: ExpertCache | None = None
        self.residency: MadviseResidency | None = None
        self.pins: dict[int, tuple[int, ...]] = {}  # the pinned hot set, per layer
        if plan.offloading or options.resizable:
            mapping = self.engine.file_mapping()
            if mapping is None:
                self.engine.close()
                raise BundleError(
                    f"{opened.expert_path}: cannot find the engine's mapping of the expert file"
                )
            try:
                paging = start_paging(opened, self.experts, plan, self.integrity,
                                      options.check_reads,
                                      self.pager, mapping, policy=options.policy,
                                      cold=options.cold, prefetch=options.prefetch)
            except BaseException:
                self.close()
                raise
            self.pins, self.residency, self._reader = paging.pins, paging.residency, paging.reader
            self.cache, self.prefetch = paging.cache, paging.prefetch
        self._start_background_check()

    def _use_expert_file(self, source: ExpertFile | None) -> None:
        """Page the experts where the engine reads them: the engine's own copy when it has one
        (onnxruntime's packed experts, derived per device), by that copy's table and digests."""
        if source is None:
            return
        self.experts = PagedExperts(source.path, {x.layer: x for x in source.layers},
                                    source.digests if self.options.check_reads else None)
        self._expert_bytes.clear()  # the pager holds this dict
        self._expert_bytes.update(self.experts.expert_bytes)
        self.pager.layers = self.experts.layers

    def _start_background_check(self) -> None:
        """Dense tensors (and every expert, when nothing is paged) verified off the request
        path (runtime/integrity/background.py)."""
        if not self.integrity.checksums:
            return
        files = [f for f in (self.build.model_file, self.build.data_file) if f is not None]
        ranges = ranges_to_check(self.bundle.path, self.manifest, files,
                                 experts=self.cache is None)
        self._background = BackgroundCheck(ranges, self.integrity).start()

    # --- text ----------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenize(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of `tokens` (invalid UTF-8 replaced). Safe while another thread generates."""
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_piece(self, token: int) -> bytes:
        """One token's bytes; SamplingError for an id outside the vocabulary."""
        n_vocab = self.engine.n_vocab
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < n_vocab:
            raise SamplingError(f"tokens must be ids in 0..{n_vocab - 1}, got {token!r}")
        return self.engine.token_bytes(token)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | None = None,
    ) -> str:
        from runtime.generation.chat_template import render_chat

        return render_chat(self.manifest.chat_template, messages, tools=tools,
                           tool_choice=tool_choice)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Render the chat template, tokenize, check the context window and build the grammar,
        once (runtime/generation/preparation.py). Safe to call while another thread generates."""
        if self.engine is None:
            raise EdgemoeError(f"{self.name}: the model is closed")
        return prepare_request(self.engine, self.manifest.chat_template, self.n_ctx, request)

    def logit_bias_vector(
        self, pairs: tuple[tuple[int, float], ...], n_vocab: int
    ) -> np.ndarray | None:
        if not pairs:
            return None
        bias = np.zeros(n_vocab, dtype=np.float32)
        for token, value in pairs:
            bias[token] = value
        return bias

    # --- generation ----------------------------------------------------------------------
    # generate/stream/chat/stream_events take SamplingParams' fields (max_tokens, temperature,
    # top_p, top_k, seed, stop, n, logprobs, logit_bias, grammar) and the request's
    # response_format, tools, tool_choice, parallel_tool_calls as keywords, and prepare
    # eagerly: bad input raises at the call.
    def generate(
        self, prompt: str, *, cancel: threading.Event | None = None, **options: Any
    ) -> GenerationResult:
        return self.generate_prepared(self.prepare(_request(prompt, None, options)),
                                      cancel=cancel)

    def stream(
        self, prompt: str, *, cancel: threading.Event | None = None, **options: Any
    ) -> Iterator[str]:
        events = self.stream_events(prompt, cancel=cancel, **options)
        return (ev.text for ev in events if ev.text)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        cancel: threading.Event | None = None,
        **options: Any,
    ) -> GenerationResult:
        return self.generate_prepared(self.prepare(_request(None, messages, options)),
                                      cancel=cancel)

    def stream_events(
        self, prompt: str, *, cancel: threading.Event | None = None, **options: Any
    ) -> Iterator[StreamEvent]:
        return self.stream_prepared(self.prepare(_request(prompt, None, options)), cancel=cancel)

    def generate_prepared(
        self, prepared: PreparedRequest, *, cancel: threading.Event | None = None
    ) -> GenerationResult:
        text: list[str] = []
        last: StreamEvent | None = None
        for ev in self.stream_prepared(prepared, cancel=cancel):
            if ev.index == 0:
                text.append(ev.text)
            last = ev
        assert last is not None and last.usage is not None
        first = last.choices[0] if last.choices else None
        return GenerationResult(
            first.text if first is not None else "".join(text),
            list(last.tokens or ()),
            first.finish_reason if first is not None else (last.finish_reason or "stop"),
            last.usage,
            last.timings or {},
            last.choices,
        )

    def stream_prepared(
        self, prepared: PreparedRequest, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]:
        """Run a prepared request; the last event carries finish_reason, usage and timings.

        Generations are serialised on this Model; `cancel` is checked between tokens.
        """
        with self._lock:
            if self.speculation is not None and self.speculation.serves(prepared):
                events = self.speculation.run(self, prepared, cancel)
            else:
                events = run(self, prepared, cancel)
            for ev in events:
                if ev.timings is not None:
                    self.last_timings = ev.timings
                yield ev

    # --- the budget while loaded ------------------------------------------------------------
    def set_budget(self, budget: str | int, *, reason: str = "api") -> BudgetPlan:
        """Change the memory budget while loaded ("40%", "1.5GB" or bytes, as at load).

        Applied at once when no generation runs, else at the running generation's next step
        (never inside one): the coldest experts are released until the cache fits, the pinned
        set and the prefetch width follow (runtime/experts/resize.py). Tokens never change.
        Raises BudgetError below the minimum, or when nothing is paged (a model loaded at a full
        budget without `resizable=True` has no routing tap to page with)."""
        plan = self.plan_budget(budget)
        if self.cache is None:
            raise BudgetError(f"{self.name}: loaded at a full budget, nothing is paged; load it "
                              "with a partial budget or resizable=True to change its budget")
        self._pending_budget = (plan, reason)
        if self._lock.acquire(blocking=False):
            try:
                self._apply_budget()
            finally:
                self._lock.release()
        return plan

    @property
    def budget_pending(self) -> bool:
        """A budget change waits for the running generation's next step."""
        return self._pending_budget is not None

    def plan_budget(self, budget: str | int) -> BudgetPlan:
        """What `budget` would mean for this model (BudgetError below its minimum)."""
        return plan_budget(parse_budget(budget), **budget_inputs(self.bundle, self.n_ctx))

    def _apply_budget(self) -> None:
        pending, self._pending_budget = self._pending_budget, None
        if pending is None or self.cache is None:
            return
        plan, reason = pending
        self.pager.sync()  # the books see every logged hit before they are resized
        self.pins, released = apply_budget(plan.expert_capacity_bytes, self.manifest,
                                            self._expert_bytes, self.cache, self._reader,
                                            self.pager.prefetcher)
        self.budget = plan
        self.budget_history.add(BudgetChange(time.monotonic(), self.tokens_decoded,
                                             plan.budget_bytes, plan.expert_capacity_bytes,
                                             released, reason))

    @property
    def closed(self) -> bool:
        return self.engine is None

    @property
    def draft_model(self) -> Model | None:
        """The smaller model speculative decoding drafts with (None: none, or n-gram lookup)."""
        drafter = self.speculation.drafter if self.speculation is not None else None
        return drafter.model if isinstance(drafter, ModelDrafter) else None  # type: ignore

    @property
    def lock(self) -> threading.Lock:
        """Held while this model decodes: its generations, and a speculator's proposals."""
        return self._lock

    def step(self, tokens: list[int], *, all_outputs: bool = False,
             timed: bool = True) -> np.ndarray:
        """The one paged decode step every loop runs (plain, speculative verify, a draft's
        proposals): the engine computes `tokens` after its current position while the pager
        keeps the experts they route to resident; the weights' integrity is checked around it.
        Returns the last position's logits (all of them are in `engine.last_logits` with
        all_outputs); timed: the step counts in the TTFT / inter-token histograms."""
        if self._pending_budget is not None:
            self._apply_budget()  # a step boundary
        start, empty = time.perf_counter(), self.engine.n_past == 0
        self.tokens_decoded += len(tokens)
        self.integrity.check()  # a known fault: this model answers nothing more
        prompt = timed and (empty or len(tokens) > 1)
        before = self._counters(dense=True) if prompt else None
        self.pager.begin_batch()
        logits = self.engine.decode(tokens, all_outputs=all_outputs)
        self.pager.reconcile()
        self.integrity.check()  # found during this step: its logits are not an answer
        if timed:
            self.latency.step(len(tokens), empty, start,
                              prompt_timing(before, self._counters(), len(tokens), start)
                              if before is not None else None)
        return logits

    def _counters(self, dense: bool = False) -> PromptCounters:
        """What a prompt step's breakdown is measured against (runtime/stats/prompt.py)."""
        return prompt_counters(self.engine, self.pager, self.cache, self.integrity,
                               self._dense_spans if dense else None)

    # --- introspection -------------------------------------------------------------------
    def stats(self) -> ModelStats:
        """Budget, memory, expert cache, integrity, latency and (with a draft) speculation
        figures: a typed record (runtime/stats/record.py); `.to_json()` for the flat JSON."""
        if self._lock.acquire(blocking=False):  # the engine's routing log is the decoder's
            try:
                self.pager.sync()
            finally:
                self._lock.release()
        return collect_stats(self)


    def close(self) -> None:
        if self._background is not None:
            self._background.stop()
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self.speculation is not None:
                self.speculation.close()
                self.speculation = None
            if self.residency is not None:  # unlock pins while llama.cpp's mapping still exists
                self.residency.close()
                self.residency = None
            if self.engine is not None:
                self.engine.close()
                self.engine = None  # type: ignore[assignment]
            self.bundle.close()  # its version may be pruned from now on

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What `generate`/`chat` keywords shape the request rather than the sampling.
_REQUEST_OPTIONS = ("response_format", "tools", "tool_choice", "parallel_tool_calls")


def _request(
    prompt: str | None, messages: Sequence[Mapping[str, Any]] | None, options: dict[str, Any]
) -> GenerationRequest:
    shape = {k: options.pop(k) for k in _REQUEST_OPTIONS if k in options}
    return GenerationRequest(prompt=prompt, messages=messages,
                             params=SamplingParams(**options), **shape)
