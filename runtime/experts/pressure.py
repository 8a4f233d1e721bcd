"""Following memory pressure: shrink the expert budget toward a floor when memory is short, grow
it back gradually when it is not (`edgemoe serve --follow-pressure`).

Two signals, read once a second:
  * Linux PSI: the share of the last 10 s in which some task stalled waiting for memory
    (`some avg10` of the cgroup's own `memory.pressure` on cgroup v2, else /proc/pressure/memory);
  * the cgroup's limit against the memory its tasks hold and the kernel cannot just drop
    (v2: `anon` + `file_mapped` of memory.stat; v1: `total_rss` + `total_mapped_file`), since
    the page cache it may reclaim freely fills any limit and says nothing.
`decide` (pure) turns a reading into a new expert capacity: short of memory, shrink by the
shortfall or a quarter, whichever is more, at most to the floor; calm for several readings in a
row, grow by a small step up to the budget the model was loaded with. The kernel already
reclaims expert pages under a limit, but by its own LRU rather than by expert heat, and a
budget above the memory really there thrashes; following pressure keeps the hottest experts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edgemoe.pressure")

PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number


@dataclass(frozen=True)
class Reading:
    """What the system says about memory now (None: not available here)."""

    psi_some_avg10: float | None = None  # % of the last 10 s some task stalled on memory
    limit_bytes: int | None = None  # the cgroup's memory limit
    held_bytes: int | None = None  # anon + mapped file pages of the cgroup


@dataclass(frozen=True)
class PressurePolicy:
    psi_high: float = 10.0  # shrink above this stall share (%)
    psi_calm: float = 1.0  # grow only below it
    low_free: float = 0.10  # shrink when less than this share of the limit is free
    high_free: float = 0.25  # grow only with more than this share free
    shrink_step: float = 0.25  # shrink by at least this share of the current capacity
    grow_step: float = 0.05  # grow by this share of the ceiling per step
    calm_readings: int = 5  # calm readings in a row before each growth step


def decide(r: Reading, capacity: int, floor: int, ceiling: int, calm: int,
           policy: PressurePolicy = PressurePolicy()) -> tuple[int, int, str]:
    """(new capacity, calm readings so far, why) for one reading; the same capacity when
    nothing should change."""
    short, why = 0, ""
    if r.limit_bytes is not None and r.held_bytes is not None:
        free = r.limit_bytes - r.held_bytes
        want = int(policy.low_free * r.limit_bytes)
        if free < want:
            short, why = want - free, f"{free / 2**20:.0f} MiB free of a " \
                                      f"{r.limit_bytes / 2**20:.0f} MiB limit"
    if r.psi_some_avg10 is not None and r.psi_some_avg10 > policy.psi_high:
        short = max(short, 1)
        why = why or f"memory stalls {r.psi_some_avg10:.1f} % of the last 10 s"
    if short:
        step = max(short, int(policy.shrink_step * capacity))
        return max(floor, capacity - step), 0, f"shrink: {why}"
    roomy = r.limit_bytes is None or r.held_bytes is None or \
        r.limit_bytes - r.held_bytes > policy.high_free * r.limit_bytes
    quiet = r.psi_some_avg10 is None or r.psi_some_avg10 < policy.psi_calm
    if not (roomy and quiet) or capacity >= ceiling:
        return capacity, 0, ""
    calm += 1
    if calm < policy.calm_readings:
        return capacity, calm, ""
    grown = min(ceiling, capacity + max(1, int(policy.grow_step * ceiling)))
    return grown, 0, "grow: memory is free again"


# --- reading the system -------------------------------------------------------------------------
def _psi(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("some "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            return float(fields["avg10"])
    return None


def _stat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def own_cgroups(proc: Path = PROC) -> dict[str, str]:
    """controller ("memory", or "" for the v2 unified tree) -> this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        text = (proc / "self" / "cgroup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


def read_pressure(proc: Path = PROC, cgroup: Path = CGROUP) -> Reading:
    """PSI and the cgroup's limit and held memory (v2 where mounted, else v1)."""
    groups = own_cgroups(proc)
    psi = limit = held = None
    v2 = groups.get("")
    for root in (cgroup, cgroup / "unified"):
        here = root / v2.lstrip("/") if v2 is not None else None
        if here is not None and (here / "memory.max").is_file():
            try:
                text = (here / "memory.max").read_text().strip()
                limit = None if text == "max" else int(text)
                s = _stat((here / "memory.stat").read_text())
                held = s.get("anon", 0) + s.get("file_mapped", 0)
                psi = _psi((here / "memory.pressure").read_text())
            except (OSError, ValueError):
                pass
            break
    v1 = groups.get("memory")
    if limit is None and v1 is not None:
        here = cgroup / "memory" / v1.lstrip("/")
        try:
            value = int((here / "memory.limit_in_bytes").read_text())
            s = _stat((here / "memory.stat").read_text())
            if value < UNLIMITED:
                limit = value
                held = s.get("total_rss", s.get("rss", 0)) + s.get(
                    "total_mapped_file", s.get("mapped_file", 0))
        except (OSError, ValueError):
            pass
    if psi is None:
        try:
            psi = _psi((proc / "pressure" / "memory").read_text())
        except (OSError, ValueError, KeyError):
            psi = None
    return Reading(psi, limit, held)


# --- the follower ------------------------------------------------------------------------------
class PressureFollower:
    """A daemon thread applying `decide` to the served model once per `interval_s`.

    `model()` returns the model to steer now (a reload swaps it; None: none is served); each
    model's ceiling is the budget it was loaded with. `set_budget(model, total_bytes, why)` is
    the model's own `set_budget`, so changes land at step boundaries and tokens never change."""

    def __init__(self, model: Callable[[], Any], floor: Callable[[Any], int],
                 interval_s: float = 1.0, policy: PressurePolicy = PressurePolicy(),
                 read: Callable[[], Reading] = read_pressure) -> None:
        self._model, self._floor, self._read = model, floor, read
        self.interval_s, self.policy = interval_s, policy
        self._stop = threading.Event()
        self._ceilings: dict[int, int] = {}
        self._calm = 0
        self._thread = threading.Thread(target=self._run, name="edgemoe-pressure", daemon=True)

    def start(self) -> PressureFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> str:
        """One reading and, if needed, one budget change; returns why (empty: none)."""
        model = self._model()
        if model is None or getattr(model, "cache", None) is None:
            return ""
        plan = model.budget
        ceiling = self._ceilings.setdefault(id(model), plan.expert_capacity_bytes)
        floor = min(self._floor(model), ceiling)
        new, self._calm, why = decide(self._read(), plan.expert_capacity_bytes, floor, ceiling,
                                      self._calm, self.policy)
        if new == plan.expert_capacity_bytes:
            return ""
        total = plan.dense_bytes + plan.kv_bytes + new
        log.warning("memory pressure: expert budget %d -> %d MiB (%s)",
                    plan.expert_capacity_bytes >> 20, new >> 20, why)
        model.set_budget(total, reason=f"pressure: {why}")
        return why

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except Exception:  # a model closing under us, a cgroup file gone: try again
                log.debug("pressure step failed", exc_info=True)
