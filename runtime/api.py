"""The runtime's Python API: `load(bundle) -> Model`. HTTP, CLI and apps are thin shells over it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.quant_types import kv_bytes_per_element
from runtime.backends.base import Backend, EngineConfig
from runtime.backends.llama_cpp.lazy_load import (
    advise_random_except,
    complement,
    pending_bytes,
)
from runtime.backends.mapping import FileMapping
from runtime.backends.registry import backend_for, format_for, open_backend
from runtime.budget import BudgetPlan, parse_budget, plan_budget
from runtime.bundles.open import OpenBundle, attention_shape, open_bundle
from runtime.errors import (
    BudgetError,
    BundleError,
    ChatTemplateError,
    EdgemoeError,
    SamplingError,
)
from runtime.experts.cache import ExpertCache
from runtime.experts.pager import ExpertPager
from runtime.experts.pinning import expected_hit_share, pinned_set
from runtime.experts.policy import DEFAULT_POLICY
from runtime.experts.prefetcher import PrefetchSettings
from runtime.experts.residency import MadviseResidency
from runtime.experts.resize import BudgetChange, BudgetHistory, apply_budget
from runtime.generation.decoding import run
from runtime.generation.latency import LatencyRecorder, PromptTiming
from runtime.generation.preparation import prepare_request
from runtime.generation.request import (
    GenerationRequest,
    GenerationResult,
    PreparedRequest,
    SamplingParams,
    StreamEvent,
    Usage,
)
from runtime.integrity import BackgroundCheck, ExpertReader, integrity_for, ranges_to_check
from runtime.options import LoadOptions
from runtime.procfs import mapping_rss, process_rss
from runtime.recurrent import recurrent_shape, speculation_refusal
from runtime.speculative.draft_budget import minimum_total, split_budget
from runtime.speculative.drafting import NGRAM, ModelDrafter, NgramDrafter, check_vocabularies
from runtime.speculative.speculator import DEFAULT_DRAFT_TOKENS, Speculator
from runtime.structured.tools import ToolChoice, ToolSpec
from runtime.threads import engine_threads

DEFAULT_CTX = 2048

__all__ = [
    "ChatTemplateError",
    "GenerationRequest",
    "GenerationResult",
    "LoadOptions",
    "Model",
    "PreparedRequest",
    "SamplingParams",
    "StreamEvent",
    "Usage",
    "load",
    "minimum_budget",
    "open_model",
]

log = logging.getLogger(__name__)


def _profile_value(bundle: OpenBundle, key: str, default: Any) -> Any:
    value = getattr(bundle.manifest.profile, key)
    return default if value in (None, 0) else value


def load(
    bundle: str | Path,
    budget: str | int | None = None,
    *,
    n_ctx: int | None = None,
    threads: int | None = None,
    backend: str | None = None,
    policy: str = DEFAULT_POLICY,
    cold: bool = False,
    prefetch: PrefetchSettings | bool | None = None,
    draft: str | Path | None = None,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    wait_policy: str | None = None,
    verify: bool = False,
    check_reads: bool = True,
    resizable: bool = False,
    record_routing: bool = False,
    options: LoadOptions | None = None,
) -> Model:
    """Open a bundle and start an engine on it, keeping experts resident within `budget`.

    The keywords are the fields of `LoadOptions` (runtime/options.py, which says what each
    does), with its defaults; `options` passes the record itself, and keywords given beside it
    change those fields. `model.prefetch` says whether prefetching is on, or why it is off.
    """
    given = locals()
    changes = {f.name: given[f.name] for f in fields(LoadOptions) if given[f.name] != f.default}
    return open_model(bundle, replace(options, **changes) if options else LoadOptions(**changes))


def open_model(bundle: str | Path, options: LoadOptions) -> Model:
    """`load` with its options as one record (what the CLI and the server call)."""
    o = options
    opened = open_bundle(bundle, verify=o.verify, fmt=format_for(o.backend))
    m = opened.manifest
    n_ctx = _context(opened, o.n_ctx)
    threads = engine_threads(o.threads, _profile_value(opened, "threads", 4),
                             _profile_value(opened, "cores", None))  # runtime/threads.py
    spec = parse_budget(o.budget)
    if spec is None and m.profile.model_memory_bytes:
        spec = parse_budget(m.profile.model_memory_bytes)
    draft_opened = None if o.draft is None or o.draft == NGRAM else \
        open_bundle(o.draft, verify=o.verify, fmt=format_for(o.backend))
    snapshots, off = _rollback_snapshots(opened, o.draft, draft_opened, o.draft_tokens)
    if off is not None:  # recurrent state that cannot roll back: plain decoding, said so
        log.warning("%s: %s", opened.name, off)
        o, draft_opened = replace(o, draft=None), None
    if draft_opened is None:
        plan = plan_budget(spec, **_budget_inputs(opened, n_ctx, snapshots))
        model = Model(opened, plan, n_ctx, threads, o, rollback=snapshots)
        model.speculation_off = off
        if o.draft is not None:
            model.speculation = Speculator(NgramDrafter(), o.draft_tokens)
        return model
    plan, draft_plan = split_budget(
        spec, _budget_inputs(opened, n_ctx, snapshots), _budget_inputs(draft_opened, n_ctx)
    )
    model = Model(opened, plan, n_ctx, threads, o, rollback=snapshots)
    try:
        drafter = ModelDrafter(Model(draft_opened, draft_plan, n_ctx, threads,
                                     replace(o, record_routing=False, prefetch=None)))
        model.speculation = Speculator(drafter, o.draft_tokens)  # closed with the model from now
        check_vocabularies(model, drafter.model)
    except BaseException:
        model.close()
        raise
    return model


def _context(opened: OpenBundle, n_ctx: int | None) -> int:
    m = opened.manifest
    return int(
        n_ctx or min(_profile_value(opened, "context_length", DEFAULT_CTX), m.shape.context_length)
    )


def _kv_cache_type(opened: OpenBundle) -> str:
    return str(_profile_value(opened, "kv_cache_type", "f16"))


def _budget_inputs(opened: OpenBundle, n_ctx: int, snapshots: int = 0) -> dict[str, int]:
    """The budget's parts; "kv_bytes" holds the KV cache and any recurrent state (with
    `snapshots` rollback copies of it: runtime/recurrent.py)."""
    m, build = opened.manifest, opened.build
    per_layer = sum(x.expert_bytes for x in build.expert_layers)
    # llama.cpp stores the KV cache in the profile's type; the ONNX graph in its float type.
    kv_type = _kv_cache_type(opened) if build.format == "gguf" else "f32"
    per_value = kv_bytes_per_element(kv_type)
    recurrent = recurrent_shape(opened.model_path)
    state = recurrent.state_bytes(snapshots) if recurrent is not None else 0
    return {
        "dense_bytes": build.dense_bytes,
        "kv_bytes": attention_shape(opened.model_path).kv_bytes(n_ctx, per_value) + state,
        "expert_bytes_total": opened.expert_bytes_total,
        "one_token_expert_bytes": m.shape.top_k * per_layer,
    }


def minimum_budget(
    bundle: str | Path,
    n_ctx: int | None = None,
    backend: str | None = None,
    draft: str | Path | None = None,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
) -> int:
    """The smallest budget `load` accepts: dense weights + KV cache (and recurrent state) + one
    token's experts; with a draft bundle, both models' at one expert fraction
    (runtime/speculative/draft_budget.py)."""
    opened = open_bundle(bundle, fmt=format_for(backend))
    n_ctx = _context(opened, n_ctx)
    draft_opened = None if draft is None or str(draft) == NGRAM else \
        open_bundle(draft, fmt=format_for(backend))
    snapshots = _rollback_snapshots(opened, draft, draft_opened, draft_tokens)[0]
    b = _budget_inputs(opened, n_ctx, snapshots)
    if draft_opened is not None:
        return minimum_total(b, _budget_inputs(draft_opened, n_ctx))
    return b["dense_bytes"] + b["kv_bytes"] + b["one_token_expert_bytes"]


def _rollback_snapshots(opened: OpenBundle, draft: str | Path | None,
                        draft_opened: OpenBundle | None, k: int) -> tuple[int, str | None]:
    """(recurrent-state snapshots the target's context keeps, why drafting is off or None).

    A recurrent target that speculates keeps k snapshots so a verify batch of k drafts can be
    rolled back (runtime/recurrent.py); a pair that cannot roll back does not speculate."""
    if draft is None:
        return 0, None
    target = recurrent_shape(opened.model_path)
    other = recurrent_shape(draft_opened.model_path) if draft_opened is not None else None
    off = speculation_refusal(target, other, draft_opened is not None)
    if off is not None:
        return 0, off
    return (k if target is not None else 0), None


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
        self._timings: dict[str, float] = {}
        # A budget changed while loaded (set_budget): applied at the next step boundary.
        self._pending_budget: tuple[BudgetPlan, str] | None = None
        self.budget_history = BudgetHistory()
        self._tokens_decoded = 0
        self.build = opened.build
        # Weights verified as they are read (runtime/integrity/): the books and the first fault.
        self.integrity = integrity_for(self.manifest, self.build, options.check_reads)
        self._check_reads = options.check_reads
        self._reader: ExpertReader | None = None
        self._background: BackgroundCheck | None = None
        self._expert_bytes = {x.layer: x.expert_bytes for x in self.build.expert_layers}
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
            layers={x.layer: x for x in self.build.expert_layers},
            n_experts=self.manifest.shape.n_experts,
        )
        self.engine: Backend = open_backend(
            EngineConfig(
                opened.model_path,
                n_ctx,
                threads,
                observe_routing=plan.offloading or options.resizable
                or options.record_routing,
                kv_cache_type=_kv_cache_type(opened),
                lazy_load=plan.offloading,
                wait_policy=options.wait_policy,
                rollback_tokens=rollback,
            ),
            self.pager.on_routing,
            kind=backend_for(self.build.format),
        )
        self.pager.attach_engine(self.engine)  # hits stay in the engine's C tap when it can
        self.lazy_load = self.engine.lazy_load
        self._dense_spans: list[tuple[int, int]] = []  # file ranges of the dense weights
        self.dense_read_s: float | None = None  # a lazy load's wait for them
        if self.lazy_load is not None and self.lazy_load.active:
            self._read_dense_only()
        self.cache: ExpertCache | None = None
        self.residency: MadviseResidency | None = None
        self._pins: dict[int, tuple[int, ...]] = {}
        if plan.offloading or options.resizable:
            mapping = self.engine.file_mapping()
            if mapping is None:
                self.engine.close()
                raise BundleError(
                    f"{opened.expert_path}: cannot find the engine's mapping of the expert file"
                )
            try:
                self._start_paging(options.policy, options.cold, mapping)
            except BaseException:
                self.close()
                raise
        self._start_background_check()

    def _start_background_check(self) -> None:
        """Dense tensors (and every expert, when nothing is paged) verified off the request
        path (runtime/integrity/background.py)."""
        if not self.integrity.checksums:
            return
        files = [f for f in (self.build.model_file, self.build.data_file) if f is not None]
        ranges = ranges_to_check(self.bundle.path, self.manifest, files,
                                 experts=self.cache is None)
        self._background = BackgroundCheck(ranges, self.integrity).start()

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
        self._dense_spans = complement(experts, size)
        t0 = time.perf_counter()
        advise_random_except(base, size, self._dense_spans)
        self.dense_read_s = time.perf_counter() - t0

    def _start_paging(self, policy: str, cold: bool, mapping: FileMapping) -> None:
        layers = {x.layer: x for x in self.build.expert_layers}
        self._pins = pinned_set(
            self.manifest.hot_experts,
            self._expert_bytes,
            self.budget.expert_capacity_bytes,
            self.manifest.shape.top_k,
            self.manifest.hot_shares,
        )
        self.residency = MadviseResidency(
            self.bundle.expert_path, mapping, lambda layer, e: layers[layer].ranges(e), cold=cold
        )
        if self._check_reads:  # verified on first read, paged in without SIGBUS
            sums = self.manifest.checksums.get(self.build.expert_file)
            self._reader = ExpertReader(
                self.bundle.expert_path, layers, sums.experts if self.integrity.checksums and sums
                else None, self.manifest.shape.n_experts, self.integrity, self.residency.populate,
                self.residency.view)
        # A capacity that holds every expert (a full budget loaded resizable) holds them from
        # the start: no misses, and no layer needs the engine to stop (runtime/experts/quiet.py).
        rest: list[tuple[int, int]] = []
        if self.budget.expert_capacity_bytes >= self.budget.expert_bytes_total:
            rest = [(layer, e) for layer in sorted(layers)
                    for e in range(self.manifest.shape.n_experts)
                    if e not in self._pins.get(layer, ())]
        if self._reader is not None:  # the hot set (and the rest) is read now, so now checked
            now = [(layer, e) for layer, experts in self._pins.items() for e in experts] + rest
            # Readahead for all of them first: the mapping is MADV_RANDOM, so populating a cold
            # expert alone reads it one page per synchronous fault (seconds per load, cold).
            for layer, e in now:
                self.residency.load(layer, e)
            for layer, e in now:
                self._reader.bring_in(layer, e)
        self.cache = ExpertCache(
            expert_bytes=self._expert_bytes,
            n_experts=self.manifest.shape.n_experts,
            capacity_bytes=self.budget.expert_capacity_bytes,
            pinned=self._pins,
            policy=policy,
            residency=self.residency,
        )
        self.cache.warm(rest)  # release what llama.cpp populated beyond it, pin the hot set
        self.pager.cache, self.pager.residency = self.cache, self.residency
        self.pager.reader = self._reader
        # Expert prefetch by pre-gating (runtime/experts/prefetcher.py): "on", "off" or why not.
        self.prefetch = self.pager.start_prefetch(self.options.prefetch, cold,
                                                  self.bundle.model_path)

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
                    self._timings = ev.timings
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
        return plan_budget(parse_budget(budget), **_budget_inputs(self.bundle, self.n_ctx))

    def _apply_budget(self) -> None:
        pending, self._pending_budget = self._pending_budget, None
        if pending is None or self.cache is None:
            return
        plan, reason = pending
        self.pager.sync()  # the books see every logged hit before they are resized
        self._pins, released = apply_budget(plan.expert_capacity_bytes, self.manifest,
                                            self._expert_bytes, self.cache, self._reader,
                                            self.pager.prefetcher)
        self.budget = plan
        self.budget_history.add(BudgetChange(time.monotonic(), self._tokens_decoded,
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
        self._tokens_decoded += len(tokens)
        self.integrity.check()  # a known fault: this model answers nothing more
        prompt = timed and (empty or len(tokens) > 1)
        before = self._prompt_counters(dense=True) if prompt else None
        self.pager.begin_batch()
        logits = self.engine.decode(tokens, all_outputs=all_outputs)
        self.pager.reconcile()
        self.integrity.check()  # found during this step: its logits are not an answer
        if timed:
            self.latency.step(len(tokens), empty, start,
                              self._prompt_timing(before, len(tokens), start)
                              if before is not None else None)
        return logits

    def _prompt_counters(self, dense: bool = False) -> dict[str, Any]:
        """What a prompt step's breakdown is measured against (runtime/generation/latency.py:
        PromptTiming); dense: also the dense bytes not in memory now (mincore)."""
        base = self.engine.mapping_base if dense and self._dense_spans else None
        cs = self.cache.stats() if self.cache is not None else None
        return {"graph": getattr(self.engine, "graph_build_s", None),
                "routing": self.pager.stats.routing_s,
                "verify": self.integrity.expert_verify_s,
                "bytes": (cs.bytes_loaded if cs is not None else 0)
                + self.pager.stats.transient_bytes,
                "dense_pending": (pending_bytes(base, self._dense_spans)
                                  if base is not None else None)}

    def _prompt_timing(self, before: dict[str, Any], n_tokens: int,
                       start: float) -> PromptTiming:
        step_ms = (time.perf_counter() - start) * 1e3
        after = self._prompt_counters()
        graph = None if before["graph"] is None else (after["graph"] - before["graph"]) * 1e3
        return PromptTiming(
            tokens=n_tokens,
            step_ms=step_ms,
            graph_ms=graph or None,
            experts_ms=(after["routing"] - before["routing"]) * 1e3,
            verify_ms=(after["verify"] - before["verify"]) * 1e3,
            expert_bytes=int(after["bytes"] - before["bytes"]),
            dense_pending_bytes=before["dense_pending"],
        )

    # --- introspection -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        if self._lock.acquire(blocking=False):  # the engine's routing log is the decoder's
            try:
                self.pager.sync()
            finally:
                self._lock.release()
        b = self.budget
        s: dict[str, Any] = {
            **self.integrity.stats(),
            "budget_changes": self.budget_history.count,
            "budget_history": self.budget_history.as_list(),
            "tokens_decoded": self._tokens_decoded,
            "budget_bytes": b.budget_bytes,
            "dense_bytes": b.dense_bytes,
            "kv_bytes": b.kv_bytes,
            "expert_bytes_total": b.expert_bytes_total,
            "expert_capacity_bytes": b.expert_capacity_bytes,
            "budget_fraction": b.fraction,
            "offloading": b.offloading,
            "n_ctx": self.n_ctx,
            **{k: v for k, v in self._timings.items()},
            "dense_read_s": self.dense_read_s,
            "transient_loads": self.pager.stats.transient_loads,
            "process_rss_bytes": process_rss(),
            "mapping_rss_bytes": mapping_rss(self.bundle.expert_path),
            "backend": self.engine.name if self.engine is not None else None,
            "threads": self.engine.cfg.n_threads if self.engine is not None else None,
            "wait_policy": self.engine.wait_policy if self.engine is not None else None,
        }
        if self.speculation is not None:
            s.update(self.speculation.stats())
        if self.speculation_off is not None:
            s["speculation_off"] = self.speculation_off
        if self.recurrent is not None:  # hybrid: the state is part of kv_bytes
            s["recurrent_state_bytes"] = self.recurrent.state_bytes(self.engine_rollback)
            s["recurrent_layers"] = len(self.recurrent.layers)
        s.update(self.latency.stats())
        if self.cache is None:
            s.update(
                resident_expert_bytes=b.expert_bytes_total,
                pinned_bytes=0,
                hits=0,
                misses=0,
                bytes_loaded=0,
                evictions=0,
                hot_experts={},
                pinned_share=None,
            )
            return s
        cs = self.cache.stats()
        quiet_hits, _ = self.pager.quiet_hits()  # layers run through without a stop
        s.update(self.pager.prefetch_stats(), prefetch=self.prefetch)
        s.update(
            resident_expert_bytes=cs.resident_bytes,
            pinned_bytes=cs.pinned_bytes,
            hits=cs.hits + quiet_hits,
            unobserved_hits=quiet_hits,
            misses=cs.misses + self.pager.stats.transient_loads,
            bytes_loaded=cs.bytes_loaded + self.pager.stats.transient_bytes,
            evictions=cs.evictions,
            hot_experts={str(k): list(v) for k, v in self._pins.items()},
            pinned_share=expected_hit_share(self._pins, self.manifest.hot_experts,
                                            self.manifest.hot_shares,
                                            self.manifest.shape.moe_layers),
        )
        return s

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
