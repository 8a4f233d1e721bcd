"""How many threads the engine runs and how they wait, on a CPU other work may share.

llama.cpp's CPU backend (the OpenMP build llama-cpp-python ships) puts every thread through a
barrier after each graph node, hundreds of times per token, so how a waiting thread waits decides
decode speed. GNU OpenMP's default spins ~300k iterations before sleeping: on a quiet device every
thread has a core and a barrier costs nanoseconds; sleeping at once (`OMP_WAIT_POLICY=PASSIVE`)
pays a futex wake-up of an idle core at every barrier instead. Measured side by side against stock
llama.cpp (bench/bench_threads.py, README "Thread waiting"): PASSIVE cost ~4x on a quiet machine
for a modest gain with one core busy, so edgemoe now waits as stock llama.cpp does unless the
profile, the caller or the user's own environment asks otherwise.

OpenMP reads its settings once, when the library loads: the first engine in a process decides,
and a later, different request is reported, not silently honoured (`wait_policy_in_effect`).

onnxruntime's intra-op pool waits between its parallel kernels the same way, per session
(`session.intra_op.allow_spinning`, `spin_duration_us`), so every policy also names its
onnxruntime settings (`onnxruntime_wait`), and the ONNX backend takes them session by session.
Its default spins 50 us, then sleeps: measured on qwen3moe-large int8 at 2 threads
(bench/bench_onnx.py --parts waiting, README "Thread waiting on onnxruntime"), sleeping at once
decoded 186 tok/s against 270 on a quiet machine; with one core busy the short spin gave up 19 %
of what sleeping got and stayed ahead of llama.cpp there, and onnxruntime's own longer spinning
lost more, collapsing at a paged budget (one pool per stage session, all spinning).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import EdgemoeError

log = logging.getLogger(__name__)

# The variables GNU OpenMP reads at load; a user who set any of them chose for us.
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class WaitPolicy:
    """A named way for engine threads to wait at a barrier: the OpenMP settings it means for
    llama.cpp, and the session settings it means for onnxruntime."""

    name: str
    env: tuple[tuple[str, str], ...]  # OpenMP's variables (llama.cpp)
    onnxruntime: tuple[tuple[str, str], ...]  # session config entries (the ONNX backend)
    meaning: str


# How long the ONNX backend's idle workers spin before they sleep, by default (measured:
# bench/bench_onnx.py --parts waiting). A token's kernels follow each other within microseconds,
# so a short spin keeps the pool awake through a step and asleep between steps.
ONNX_SPIN_US = 50
_ORT_SPIN = "session.intra_op.allow_spinning"
_ORT_SPIN_US = "session.intra_op.spin_duration_us"


WAIT_POLICIES: dict[str, WaitPolicy] = {
    p.name: p
    for p in (
        WaitPolicy("spin", (), ((_ORT_SPIN, "1"), (_ORT_SPIN_US, str(ONNX_SPIN_US))),
                   "spin a while, then sleep: OpenMP's default ~300k iterations (stock "
                   f"llama.cpp); onnxruntime {ONNX_SPIN_US} us"),
        WaitPolicy("passive", (("OMP_WAIT_POLICY", "PASSIVE"),), ((_ORT_SPIN, "0"),),
                   "sleep at every barrier"),
        WaitPolicy("active", (("OMP_WAIT_POLICY", "ACTIVE"),), ((_ORT_SPIN, "1"),),
                   "spin without bound (onnxruntime: its own default spinning)"),
        WaitPolicy("spin-10k", (("GOMP_SPINCOUNT", "10000"),),
                   ((_ORT_SPIN, "1"), (_ORT_SPIN_US, "10")),
                   "spin 10k iterations (onnxruntime 10 us), then sleep"),
    )
}
DEFAULT_WAIT_POLICY = "spin"
ENVIRONMENT = "environment"  # the user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT

_in_effect: str | None = None


class WaitPolicyError(EdgemoeError, ValueError):
    """A wait policy name edgemoe does not know."""


def check_wait_policy(name: str | None) -> str | None:
    """`name` if it is a known policy (or None), else a one-line error listing the known ones."""
    if name is None or name in WAIT_POLICIES:
        return name
    raise WaitPolicyError(
        f"wait policy '{name}' is not known; known: {', '.join(WAIT_POLICIES)}"
    )


def _openmp_loaded() -> bool:
    """Whether GNU OpenMP is already mapped into this process (it then has read its settings)."""
    try:
        return "libgomp" in Path("/proc/self/maps").read_text(errors="replace")
    except OSError:
        return False


def _from_environment() -> str | None:
    """The user's own OpenMP settings, described, or None if they set none."""
    set_ = [f"{k}={os.environ[k]}" for k in OPENMP_VARIABLES if k in os.environ]
    return f"{ENVIRONMENT} ({', '.join(set_)})" if set_ else None


def apply_wait_policy(requested: str | None = None) -> str:
    """Put the OpenMP settings of `requested` (None: the user's environment if they set one,
    else DEFAULT_WAIT_POLICY) in the environment before llama.cpp loads, once per process.

    Returns the policy in effect. Once OpenMP has loaded, its settings are fixed for the life of
    the process: the first answer stays, and a different request is logged."""
    global _in_effect
    check_wait_policy(requested)
    if _in_effect is None:
        _in_effect = _choose(requested)
    elif requested is not None and requested != _in_effect:
        log.warning("wait policy %r asked for, but %r is in effect: OpenMP reads its settings "
                    "once per process", requested, _in_effect)
    return _in_effect


def _choose(requested: str | None) -> str:
    if _openmp_loaded():  # something loaded llama.cpp before us (a pack in the same process)
        return _from_environment() or DEFAULT_WAIT_POLICY
    if requested is None and (own := _from_environment()):
        return own
    policy = WAIT_POLICIES[requested or DEFAULT_WAIT_POLICY]
    for var in OPENMP_VARIABLES:
        os.environ.pop(var, None)
    os.environ.update(dict(policy.env))
    return policy.name


def onnxruntime_wait(requested: str | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The policy an onnxruntime session's pool waits with and its session config entries:
    `requested`; else the user's own OMP_WAIT_POLICY read as they meant it (PASSIVE sleeps,
    ACTIVE spins), reported as theirs; else DEFAULT_WAIT_POLICY. onnxruntime reads no OpenMP
    variable, and each session takes its own settings, so nothing here is fixed per process."""
    check_wait_policy(requested)
    if requested is None and (own := _from_environment()):
        mode = os.environ.get("OMP_WAIT_POLICY", "").strip().lower()
        base = mode if mode in ("passive", "active") else DEFAULT_WAIT_POLICY
        return own, WAIT_POLICIES[base].onnxruntime
    policy = WAIT_POLICIES[requested or DEFAULT_WAIT_POLICY]
    return policy.name, policy.onnxruntime


def wait_policy_in_effect() -> str | None:
    """The policy this process's engines wait with; None before the first llama.cpp engine."""
    return _in_effect


# The variables that size a BLAS library's thread pool; a user who set one chose for us.
BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_blas_limited: object | None = None


def single_thread_blas() -> bool:
    """Run numpy's OpenBLAS on the calling thread only, once per process, unless the user's
    environment sized its pool. Returns whether a limit is in effect.

    The pager's own numpy work is tiny (pre-gating a prompt batch is a [tokens, hidden] x
    [hidden, experts] product per MoE layer), but a threaded OpenBLAS hands it to worker threads
    that then spin for more work on the cores the engine's threads need: measured on
    qwen3moe-large at 25 % cold, half the CPU samples of the prompt's step were OpenBLAS's idle
    workers, and the prompt took 3-5x as long. One thread computes such a product in well under
    a millisecond. Only OpenBLAS is limited (the BLAS numpy's wheels ship), so a reference
    model's MKL in the same process keeps its threads."""
    global _blas_limited
    if _blas_limited is None:
        _blas_limited = False
        if not any(v in os.environ for v in BLAS_VARIABLES):
            try:
                from threadpoolctl import ThreadpoolController

                pools = ThreadpoolController().select(internal_api="openblas")
                _blas_limited = pools.limit(limits=1) if pools.lib_controllers else False
            except Exception as e:  # noqa: BLE001  a speed hint: never a reason not to load
                log.warning("could not limit numpy's BLAS threads (%s): the engine's threads "
                            "may share their cores with idle BLAS workers", e)
    return bool(_blas_limited)


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def engine_threads(requested: int | None, profile_threads: int | None,
                   profile_cores: int | None) -> int:
    """Threads for the engine: what the caller asked for; else the profile's `threads`, never
    more than its `cores` (the share of the CPU the model may use) or the CPUs this process
    may run on."""
    if requested:
        return int(requested)
    n = profile_threads or 4
    return max(1, min(n, profile_cores or n, available_cores()))
