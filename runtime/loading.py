"""Opening a bundle as a `Model`: `load` (keywords) and `open_model` (one LoadOptions record).

The bundle is opened and checked, the budget planned from its footprint (runtime/footprint.py),
split with a draft model when one is asked for, and the model (and its drafter) started.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path

from contract.gguf_layout import one_parse_per_file
from runtime.allocator import fix_malloc_thresholds
from runtime.backends.registry import format_for
from runtime.budget import parse_budget, plan_budget
from runtime.bundles.open import open_bundle
from runtime.experts.policy import DEFAULT_POLICY
from runtime.experts.prefetcher import PrefetchSettings
from runtime.footprint import budget_inputs, context, profile_value, rollback_snapshots
from runtime.model import Model
from runtime.options import LoadOptions
from runtime.speculative.draft_budget import split_budget
from runtime.speculative.drafting import NGRAM, ModelDrafter, NgramDrafter, check_vocabularies
from runtime.speculative.speculator import DEFAULT_DRAFT_TOKENS, Speculator
from runtime.threads import engine_threads, single_thread_blas

log = logging.getLogger(__name__)


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
    flash_attn: bool | None = None,
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
    with one_parse_per_file():  # a GGUF header is parsed once per load, not kept beyond it
        return _open_model(bundle, options)


def _open_model(bundle: str | Path, options: LoadOptions) -> Model:
    o = options
    fix_malloc_thresholds()  # freed blocks go back to the system, not to a growing heap
    opened = open_bundle(bundle, verify=o.verify, fmt=format_for(o.backend))
    m = opened.manifest
    n_ctx = context(opened, o.n_ctx)
    threads = engine_threads(o.threads, profile_value(opened, "threads", 4),
                             profile_value(opened, "cores", None))  # runtime/threads.py
    single_thread_blas()  # numpy's idle BLAS workers must not spin on the engine's cores
    spec = parse_budget(o.budget)
    if spec is None and m.profile.model_memory_bytes:
        spec = parse_budget(m.profile.model_memory_bytes)
    draft_opened = None if o.draft is None or o.draft == NGRAM else \
        open_bundle(o.draft, verify=o.verify, fmt=format_for(o.backend))
    snapshots, off = rollback_snapshots(opened, o.draft, draft_opened, o.draft_tokens)
    if off is not None:  # recurrent state that cannot roll back: plain decoding, said so
        log.warning("%s: %s", opened.name, off)
        o, draft_opened = replace(o, draft=None), None
    if draft_opened is None:
        plan = plan_budget(spec, **budget_inputs(opened, n_ctx, snapshots))
        model = Model(opened, plan, n_ctx, threads, o, rollback=snapshots)
        model.speculation_off = off
        if o.draft is not None:
            model.speculation = Speculator(NgramDrafter(), o.draft_tokens)
        return model
    plan, draft_plan = split_budget(
        spec, budget_inputs(opened, n_ctx, snapshots), budget_inputs(draft_opened, n_ctx)
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

