"""onnxruntime backend: a bundle's model.onnx in a stock `InferenceSession` on CPU.

The graph has the conventional decoder-only interface (input_ids, attention_mask, position_ids,
past_key_values.i.key/value -> logits, present.i.key/value) plus `routing.i` outputs: the experts
each MoE layer's router chose. A hybrid's recurrent layers carry past_conv.i / past_ssm.i state
instead of K and V (recurrent_state.py). Expert weights are stacked initializers in the
external-data file, which onnxruntime memory-maps (one mapping per initializer).

A quantized int8 build runs each MoE layer's experts as one fused QMoE node whose stacks the
export declares as overridable initializers (packager/onnx_export/qmoe.py), so onnxruntime never
packs them on its own; the backend decides. At a full budget the stacks are made constants and
packed at load (a private copy of every expert, which a full budget holds anyway); when experts
are paged, the stages read onnxruntime's packed layout from a copy derived once per device
(packed.py), which the runtime pages and verifies as it pages the bundle's file (expert_file()).
Both run the same kernels, so the tokens are the same at every budget. Dense weights are packed
at load on every build; float and int4 builds gather their experts, which nothing packs, so no
expert is copied.

When the runtime acts on routing, a layer's routing must reach the expert cache before its
kernel reads them, so a prompt batch exceeds the budget by at most one layer's experts, as on
llama.cpp: a fused build runs the whole graph with a tap after each router (taps.py; one
onnxruntime run a step), any other build, or one where onnxruntime-extensions is missing, runs
in stages cut before each MoE layer's experts (stages.py; a run per layer).
"""

from __future__ import annotations

import gc
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import read_json
from contract.onnx_proto import read_model
from runtime.backends.base import (
    EngineConfig,
    RoutingEvent,
    RoutingLog,
    RoutingObserver,
    SamplerSettings,
)
from runtime.backends.mapping import ExpertFile, FileMapping
from runtime.backends.onnx import taps
from runtime.backends.onnx.kv_cache import InPlaceKV, in_place_pairs, run_bound
from runtime.backends.onnx.packed import cache_key, cache_root, load_or_derive
from runtime.backends.onnx.recurrent_state import (
    RollbackPoint,
    initial_state,
    no_point,
    present_name,
    state_names,
)
from runtime.backends.onnx.routers import read_routers, router_sources
from runtime.backends.onnx.session import (
    experts_as_constants,
    has_fused_experts,
    options,
    read_graph,
    read_only,
    release,
    releasing,
    trim_heap,
)
from runtime.backends.onnx.stages import (
    StagedRunner,
    Stopped,
    graph_io,
    plan_stages,
    stage_models,
    staged_runner,
)
from runtime.backends.onnx.taps import TappedRunner
from runtime.backends.onnx.tokenizer import HFTokenizer
from runtime.backends.routing_log import PythonRoutingLog
from runtime.backends.sampling import NumpySampler
from runtime.errors import BundleError, EdgemoeError
from runtime.procfs import MappedSpans, file_regions
from runtime.threads import onnxruntime_wait

log = logging.getLogger(__name__)
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_ROUTING = re.compile(r"^routing\.(\d+)$")
# The export's stacked expert tensors (packager/onnx_export: gathered and fused layouts).
_EXPERT_TENSOR = re.compile(r"\.experts\.(gate_up|down)(\.|$)")
DATA_SUFFIX = ".data"


def _eog_ids(bundle: Path, tok: HFTokenizer) -> set[int]:
    """End-of-generation ids: generation_config's eos ids and the tokenizer's eos token."""
    ids: set[int] = set()
    for name, key in (("generation_config.json", "eos_token_id"), ("config.json", "eos_token_id")):
        value = _optional_json(bundle / name).get(key)
        ids.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
    eos = _optional_json(bundle / "tokenizer_config.json").get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if isinstance(eos, str) and (i := tok.token_id(eos)) is not None:
        ids.add(i)
    return ids


def _optional_json(path: Path) -> dict[str, Any]:
    """A config file's object, or {} when it is absent or unreadable (the ids it may add are
    extra end-of-generation ids; the tokenizer's own come first)."""
    try:
        value = read_json(path, BundleError)
    except BundleError:
        return {}
    return value if isinstance(value, dict) else {}


class OnnxBackend:
    """One onnxruntime session decoding a single sequence (the `Backend` protocol)."""

    name = "onnx"
    recurrent = False  # set per graph: hybrids carry recurrent state (recurrent_state.py)
    lazy_load = None  # onnxruntime maps each initializer itself: nothing to read lazily
    mapping_base = None  # ... in many pieces (file_mapping() lists them)
    graph_build_s = None  # the graph is the session's, built once at load
    # How a step reaches the pager: "tapped" (one run, a tap per MoE layer: taps.py),
    # "stages" (a run per MoE layer: stages.py) or "whole" (one run; routing read after it,
    # or not at all at a full budget).
    paging = "whole"

    def __init__(self, cfg: EngineConfig, observer: RoutingObserver | None = None) -> None:
        import onnxruntime as ort

        self.cfg = cfg
        # The process's file mappings before this backend's sessions map anything: another
        # model of the same bundle (a reload loading beside the one it replaces) maps the same
        # files, and its regions go when that model does (file_mapping). Where this bundle's
        # files are mapped already, collected first: a model dropped without close() that only
        # the collector frees would otherwise leave regions here and unmap them during this
        # load, where onnxruntime may map its own (a collection in a large process: ~0.2 s).
        self._mapped_before = MappedSpans()
        if self._mapped_before.any_under(cfg.model_path.parent, cache_root()):
            gc.collect()
            self._mapped_before = MappedSpans()
        self.wait_policy = onnxruntime_wait(cfg.wait_policy)[0]  # session.py applies it
        self._observer = observer if cfg.observe_routing else None
        self._bundle = cfg.model_path.parent
        self._tokenizer: HFTokenizer | None = None  # read on first use (logits need none)
        self._eog_set: set[int] | None = None
        model = read_graph(cfg.model_path)
        fused = has_fused_experts(model)
        so = options(ort, cfg)
        data = Path(str(cfg.model_path) + DATA_SUFFIX)
        self.data_path = data if data.is_file() else None
        self._expert_file: ExpertFile | None = None
        # A fused build runs onnxruntime's packed experts at every budget (the same kernels, so
        # the same tokens): packed at load in memory when nothing is paged (a full budget holds
        # every expert anyway), else read from the packed copy derived for this device
        # (packed.py). When the runtime acts on routing, the graph runs in stages cut before each
        # MoE layer's experts (stages.py), so a layer's experts are admitted before its kernel
        # reads them. Stages share one arena, growing only by what is asked (kSameAsRequested):
        # an arena keeps its high-water mark.
        self._staged: StagedRunner | None = None
        self._log: PythonRoutingLog | None = None  # made when the pager asks (routing_log)
        self._tapped_graph: tuple[Path, dict[int, str]] | None = None  # (graph, routing ids)
        source: str | bytes = str(cfg.model_path)
        if fused and model is not None and self._observer is not None:
            self._staged = self._packed_stages(ort, model)
        elif fused and model is not None:
            source = experts_as_constants(model, so, self._bundle)
        if self._staged is None and self._observer is not None and model is not None:
            self._staged = self._stages(ort, options(ort, cfg, shared=True), model)
            self.paging = "stages" if self._staged is not None else "whole"
        if self._staged is None:
            try:
                self.session = ort.InferenceSession(
                    source, so, providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
                first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                raise BundleError(
                    f"{cfg.model_path}: onnxruntime could not load it ({first})"
                ) from None
            self._inputs = {i.name: i for i in self.session.get_inputs()}
            graph_outputs = self.session.get_outputs()
        else:
            self.session = None  # type: ignore[assignment]
            self._inputs = self._staged.inputs()
            graph_outputs = self._staged.outputs()
        outputs = [o.name for o in graph_outputs]
        logits = next(o for o in graph_outputs if o.name == "logits")
        self.n_vocab = int(logits.shape[-1] or 0)
        self._logits_dtype = np.float16 if "float16" in logits.type else np.float32
        self._past_names = sorted(
            (n for n in self._inputs if _PAST.match(n)),
            key=lambda n: (int(_PAST.match(n).group(1)), n),  # type: ignore[union-attr]
        )
        # A hybrid's recurrent state rides along with K and V (fed back after every run).
        self._state_names = state_names(self._inputs)
        self._past_names += self._state_names
        self.recurrent = bool(self._state_names)
        self._point: RollbackPoint | None = None  # the state before the last batch (truncate)
        self._routing = {int(m.group(1)): n for n in outputs if (m := _ROUTING.match(n))}
        self._kv_dtype = np.float16 if "float16" in self._first_past_type() else np.float32
        # Causal layers' caches are written in place (kv_cache.py); the others come back as
        # presents and are fed in again as the next run's pasts.
        pairs = in_place_pairs(model.graph) if model is not None else {}
        shapes = {n: self._inputs[n].shape for n in pairs}
        self._kv: InPlaceKV | None = None
        if pairs:
            self._kv = InPlaceKV.allocate(ort, pairs, shapes, cfg.n_ctx, self._kv_dtype)
        self._fed_back = [n for n in self._past_names if n not in pairs]
        # Fetched every run, in this order: logits, each fed-back present, and each MoE layer's
        # ids when someone listens (a full budget runs with no observer and fetches none).
        self._outputs = [
            "logits",
            *(present_name(n) for n in self._fed_back),
            *(self._routing[k] for k in sorted(self._routing) if self._observer is not None),
        ]
        self.n_past = 0
        self._past: dict[str, np.ndarray] = {}
        self._logits: np.ndarray | None = None
        self._batch = cfg.n_batch
        self.reset()

    def _packed_stages(self, ort, model) -> StagedRunner | None:  # type: ignore[no-untyped-def]
        """Stages over onnxruntime's packed experts, derived into the cache on first use
        (packed.py); None, with a warning, when that cannot be done here (the unpacked kernel
        then runs, slower, with the same budget)."""
        experts = [t.name for t in model.graph.initializer if _EXPERT_TENSOR.search(t.name)]
        plan = plan_stages(model.graph, experts)
        if plan is None:
            return None
        try:
            key = cache_key(self.cfg.model_path, ort.__version__)
            build = load_or_derive(key, lambda: stage_models(model, plan), self._bundle, experts,
                                   lambda: options(ort, self.cfg))  # fmt: skip
            tapped = self._tapped(ort, model, plan, experts, build)
            if tapped is not None:
                return tapped
            sessions = []
            for stage in build.stages:
                so = options(ort, self.cfg, shared=True)
                sessions.append(
                    ort.InferenceSession(str(stage), so, providers=["CPUExecutionProvider"])
                )
                # onnxruntime reads every packed buffer once while loading a stage; give those
                # pages back now, so a load never holds more than one stage's experts, and the
                # heap it freed while loading (it stays with the process otherwise).
                release(build.data, build.expert_spans())
                trim_heap()
        except Exception as e:  # OSError (no space, read-only cache) or onnxruntime's own
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            log.warning("%s: onnxruntime's packed experts are unavailable (%s); running the "
                        "unpacked kernel", self.cfg.model_path, first)  # fmt: skip
            return None
        self._use_packed(build, "stages")
        return StagedRunner(sessions, plan, graph_io(model))

    def _tapped(  # type: ignore[no-untyped-def]
        self, ort, model, plan, experts, build
    ) -> TappedRunner | None:
        """One session over the derived packed experts with a routing tap per MoE layer
        (taps.py), or None (onnxruntime-extensions missing, EDGEMOE_ONNX_TAPS=0, a graph whose
        expert kernels the taps do not gate, or a session that will not load): then the
        stages."""
        lib = taps.library() if taps.wanted() else None
        if lib is None:
            return None
        try:
            whole = taps.derive_tapped(build.folder, build.stages, plan, graph_io(model), experts)
            if whole is None:
                return None
            so = options(ort, self.cfg, shared=True, custom_ops=lib)
            # onnxruntime reads every packed expert while it loads: released behind it.
            session = releasing(build.data, build.expert_spans(), lambda: ort.InferenceSession(
                str(whole), so, providers=["CPUExecutionProvider"]))
        except Exception as e:  # OSError or onnxruntime's own types
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            log.warning("%s: the routing taps did not load (%s); running in stages",
                        self.cfg.model_path, first)  # fmt: skip
            return None
        trim_heap()
        self._use_packed(build, "tapped")
        self._tapped_graph = (whole, dict(plan.routing))
        return TappedRunner(session, graph_io(model))

    def _use_packed(self, build, paging: str) -> None:  # type: ignore[no-untyped-def]
        """Experts are read from the packed derivation `build` (packed.py), paged `paging`."""
        self.data_path = build.data
        self._expert_file = ExpertFile(build.data, build.layers, build.digests)
        self.paging = paging

    def expert_file(self) -> ExpertFile | None:
        """Where this engine reads experts when it is not the bundle's data file (mapping.py)."""
        return self._expert_file

    def _stages(self, ort, so, model) -> StagedRunner | None:  # type: ignore[no-untyped-def]
        """The graph's stages as sessions (weights read from the bundle folder), or None when
        it has no experts to cut before."""
        experts = [t.name for t in model.graph.initializer if _EXPERT_TENSOR.search(t.name)]
        so.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(self._bundle)
        )
        try:
            return staged_runner(
                model, experts,
                lambda stage: ort.InferenceSession(stage, so, providers=["CPUExecutionProvider"]),
            )  # fmt: skip
        except Exception as e:  # onnxruntime's own types
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise BundleError(
                f"{self.cfg.model_path}: cannot run it in stages for paging ({first})"
            ) from None

    def _first_past_type(self) -> str:
        return self._inputs[self._past_names[0]].type if self._past_names else "tensor(float)"

    # --- residency hook ------------------------------------------------------------------
    def file_mapping(self) -> FileMapping | None:
        """onnxruntime maps each external initializer on its own: one region per mapping.

        It maps them private and writable, though it never writes a weight; the regions are
        made read-only here, because mlock (how the runtime pins its hot experts) on a writable
        private mapping breaks copy-on-write and pins an anonymous copy of every page instead
        of the file's own (measured: 55 MiB of copies for a 25 % budget's hot set).

        Only regions mapped since this backend started count: the same file mapped by another
        model's sessions is that model's, and unmapped when it closes."""
        if self.data_path is None:
            return None
        found = [r for r in file_regions(self.data_path) if not self._mapped_before.covers(r)]
        for r in found:
            if "w" in r.perms:
                read_only(r.start, r.end - r.start)
        regions = tuple((r.offset, r.offset + (r.end - r.start), r.start) for r in found)
        return FileMapping(regions) if regions else None

    def routing_log(self, n_layers: int, n_experts: int, top_k: int) -> RoutingLog | None:
        """For staged runs, a log in Python (runtime/backends/routing_log.py): a one-token
        event whose experts are all resident is noted there between two stages instead of
        going through the pager. None for a whole-graph run, whose routing comes back after it,
        every event to Python."""
        if self._staged is None:
            return None
        self._log = PythonRoutingLog(n_layers, n_experts, top_k, routers=self.pregate_routers)
        return self._log

    def pregate_routers(self) -> dict[int, np.ndarray] | str:
        """Each MoE layer's router read from the tapped graph, for a prompt's prefetch
        (routers.py), or why there are none: the taps hand over the residual stream, stages
        do not."""
        if self._tapped_graph is None:
            return "the ONNX stages hand over no hidden state (the routing taps are not running)"
        path, routing = self._tapped_graph
        try:
            graph = read_model(path).graph
            found = router_sources(graph, routing)
            if isinstance(found, str):
                return found
            tapped = {next(a.i for a in n.attribute if a.name == "layer"): n.input[1:]
                      for n in graph.node if n.op_type == taps.OP}  # fmt: skip
            if any(list(tapped.get(k, ())) != [f"{x.residual}/f32"] for k, x in found.items()):
                return "the taps read no hidden state"
            return read_routers(graph, path.parent, found)
        except Exception as e:  # OSError, ValueError, protobuf's DecodeError: prefetch is off
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            return f"the routers could not be read ({first})"

    # --- tokens ----------------------------------------------------------------------------
    @property
    def tokenizer(self) -> HFTokenizer:
        if self._tokenizer is None:
            self._tokenizer = HFTokenizer(self._bundle)
        return self._tokenizer

    @property
    def _eog(self) -> set[int]:
        if self._eog_set is None:
            self._eog_set = _eog_ids(self._bundle, self.tokenizer)
        return self._eog_set

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer.tokenize(text, special)

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def eos_token(self) -> int:
        return min(self._eog) if self._eog else 0

    # --- decoding --------------------------------------------------------------------------
    def reset(self) -> None:
        self.n_past = 0
        self._past = {}
        self._point = None
        for name in self._state_names:
            self._past[name] = initial_state(self._inputs[name].shape)
        for name in self._fed_back:
            if name in self._past:
                continue
            shape = [1 if not isinstance(d, int) else d for d in self._inputs[name].shape]
            shape[2] = 0  # [batch, kv heads, past length, head dim]
            self._past[name] = np.zeros(shape, dtype=self._kv_dtype)

    def truncate(self, n_past: int) -> None:
        """Forget every position from n_past on (a speculative step's rejected drafts): the
        past arrays are cut along their sequence axis ([batch, heads, past length, ...]); a
        recurrent state goes back to before the last batch and its kept tokens are recomputed
        (recurrent_state.py), which reaches no further back than that batch."""
        if not 0 <= n_past <= self.n_past:
            raise EdgemoeError(f"cannot truncate {self.n_past} positions to {n_past}")
        if n_past == self.n_past:
            return
        replay: tuple[int, ...] = ()
        if self.recurrent:  # back to the state before the last batch, then its kept tokens
            if self._point is None:
                raise no_point(self.n_past, n_past)
            replay = self._point.replay(n_past, self.n_past)
            self._past.update(self._point.states)
            n_past = self._point.n_past
        for name, past in self._past.items():
            if name not in self._state_names:
                self._past[name] = np.ascontiguousarray(past[:, :, :n_past])
        self.n_past = n_past
        for start in range(0, len(replay), self._batch):
            self._run(list(replay[start : start + self._batch]))
        if self.n_past != n_past + len(replay):
            raise EdgemoeError("the recurrent state could not be recomputed (a layer's experts "
                               "were not brought in)")  # fmt: skip

    def decode(self, tokens: list[int], all_outputs: bool = False) -> np.ndarray:
        if self.n_past + len(tokens) > self.cfg.n_ctx:
            raise EdgemoeError(f"context full ({self.cfg.n_ctx} tokens)")
        if self.recurrent and self.cfg.rollback_tokens > 0:
            states = {n: self._past[n] for n in self._state_names}
            self._point = RollbackPoint(self.n_past, states, tuple(tokens))
        out: list[np.ndarray] = []
        for start in range(0, len(tokens), self._batch):
            logits = self._run(tokens[start : start + self._batch])
            out.append(logits if all_outputs else logits[-1:])
        self._logits = np.concatenate(out)
        return self._logits[-1].copy()

    @property
    def last_logits(self) -> np.ndarray:
        """The last decode's logits: every position's with all_outputs, else the last one's."""
        assert self._logits is not None, "decode first"
        return self._logits

    def _run(self, chunk: list[int]) -> np.ndarray:
        n = len(chunk)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([chunk], dtype=np.int64),
            "attention_mask": np.ones((1, self.n_past + n), dtype=np.int64),
            "position_ids": np.arange(self.n_past, self.n_past + n, dtype=np.int64)[None, :],
            **self._past,
        }
        feeds = {k: v for k, v in feeds.items() if k in self._inputs}
        if self._staged is not None:
            return self._run_staged(feeds, n)
        bound = self._kv.bound if self._kv is not None else {}
        kept = self._kv if n == 1 else None
        results = run_bound(self.session, self._outputs, feeds, bound, kept, self._into(n))
        logits, rest = results[0], results[1:]
        for past, present in zip(self._fed_back, rest[: len(self._fed_back)], strict=True):
            self._past[past] = present
        self.n_past += n
        if self._observer is not None:
            routed = rest[len(self._fed_back) :]
            for layer, ids in zip(sorted(self._routing), routed, strict=True):
                self._observer(RoutingEvent(layer, np.asarray(ids, dtype=np.int32).reshape(n, -1)))
        return np.asarray(logits[0], dtype=np.float32)

    def _into(self, n: int) -> dict[str, np.ndarray] | None:
        """A buffer for a run's logits ([1, n, vocab]), written by onnxruntime in place of
        one it would allocate and hand back wrapped (kv_cache.run_bound). None where no cache
        is bound in place: such runs take plain `session.run`, which allocates its own."""
        if not self.n_vocab or self._kv is None:
            return None
        return {"logits": np.empty((1, n, self.n_vocab), dtype=self._logits_dtype)}

    def _run_staged(self, feeds: dict[str, np.ndarray], n: int) -> np.ndarray:
        """Each layer's routing goes to the observer before that layer's experts run; if it
        asks to stop (an expert could not be brought in), the step ends with no logits and the
        position does not advance (the runtime reports the fault)."""
        assert self._staged is not None
        observe = self._observer

        log = self._log

        def admit(layer: int, ids: np.ndarray, hidden: np.ndarray | None = None) -> bool:
            if observe is None:
                return False
            if n == 1 and log is not None and log.note_row(layer, ids.ravel().tolist()):
                return False  # the usual decode step: one lookup per expert, nothing else
            ids = np.asarray(ids, np.int32).reshape(n, -1)
            batch = log if n > 1 else None
            if batch is not None:
                batch.note_hit(layer, ids)  # counted as delivered: a batch is never noted
                batch.keep_hidden(layer, hidden)  # its prompt prefetch reads the state
            try:
                return bool(observe(RoutingEvent(layer, ids)))
            finally:
                if batch is not None:  # n_batch x n_embd floats: not held past the event
                    batch.keep_hidden(layer, None)

        n_past = len(self._fed_back)
        fetch = [o for o in self._outputs if not _ROUTING.match(o)]
        try:
            results = self._staged.run(fetch, feeds, admit, self._kv, n == 1, self._into(n))
        except Stopped:
            return np.zeros((n, self.n_vocab), dtype=np.float32)
        for past, present in zip(self._fed_back, results[1 : 1 + n_past], strict=True):
            self._past[past] = present
        self.n_past += n
        return np.asarray(results[0][0], dtype=np.float32)

    def sampler(self, params: SamplerSettings) -> NumpySampler:
        """numpy sampling (runtime/backends/sampling.py); constrained output is masked above
        the seam (runtime/structured/guide.py), as on every backend."""
        return NumpySampler(params)

    def sample(self, sampler: NumpySampler, logits_idx: int = -1) -> int:
        assert self._logits is not None, "decode before sampling"
        return sampler.sample(self._logits[logits_idx])

    def close(self) -> None:
        """Let the sessions go now, and their mappings of the model's files with them (not
        whenever a reference cycle through the model is collected)."""
        self.session = None  # type: ignore[assignment]
        self._staged = None
        self._log = None
        self._past = {}
        self._kv = None
