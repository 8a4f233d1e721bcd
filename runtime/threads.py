"""How many threads the engine runs and how they wait, on a CPU other work shares.

llama.cpp's CPU backend (the OpenMP build llama-cpp-python ships) puts every thread through a
barrier after each graph node, hundreds of times per token. GNU OpenMP's default is to spin at a
barrier (~300k iterations) before sleeping, so when another process holds a core, the thread
that finished burns its time slice spinning while the one it waits for cannot get the CPU.
Measured on a shared 2-core machine (`bench/bench_runtime.py --contention`, trained fixture):
2 spinning threads decoded 26 tok/s even without a neighbour; waiting passively, 302 tok/s, and
x0.63 (prefill) / x0.55 (decode) of that with a busy loop on one core. So edgemoe asks OpenMP
to wait passively unless the user set a policy, and never runs more threads than the profile's
`cores` or the CPUs this process may use. llama.cpp's threadpool settings (polling level, priority,
`llama_attach_threadpool`) do not reach OpenMP's barriers in this build, and raising priority
would only move the problem to the neighbour, so they are left at their defaults.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"


def wait_passively() -> bool:
    """Ask OpenMP to sleep at barriers instead of spinning, unless the user chose; must run
    before llama.cpp's libraries are loaded (OpenMP reads it once). True if ours applies."""
    if WAIT_POLICY in os.environ:
        return False
    os.environ[WAIT_POLICY] = "PASSIVE"
    return True


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
