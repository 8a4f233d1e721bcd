"""Plain-text views of device profiles for `edgemoe profiles` and `edgemoe profiles show`."""

from __future__ import annotations

from collections.abc import Iterable

from contract.device_profile import DeviceProfile


def format_bytes(n: int) -> str:
    """Binary units, as profiles are usually written ("6GiB" -> "6 GiB", "1.5 GiB")."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def render_profile_table(profiles: Iterable[DeviceProfile]) -> str:
    """One line per profile: name, class, memory, threads, default quant, context, speeds."""
    header = ("name", "class", "memory", "threads", "quant", "context", "storage", "bandwidth")
    rows = [header] + [
        (p.name, p.device_class, format_bytes(p.model_memory_bytes), str(p.threads),
         p.default_quant, str(p.context_length), f"{p.storage_read_mb_s:g} MB/s",
         f"{p.memory_bandwidth_gb_s:g} GB/s")
        for p in profiles
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def render_profile(p: DeviceProfile) -> str:
    """Every field of one profile, each with its documented source when the file gives one."""
    values = {
        "description": p.description,
        "class": p.device_class,
        "model_memory": f"{format_bytes(p.model_memory_bytes)} ({p.model_memory_bytes} bytes)",
        "context_length": str(p.context_length),
        "kv_cache_type": p.kv_cache_type,
        "threads": str(p.threads),
        "isa": ", ".join(p.isa) or "-",
        "storage_read_mb_s": f"{p.storage_read_mb_s:g} MB/s",
        "memory_bandwidth_gb_s": f"{p.memory_bandwidth_gb_s:g} GB/s",
        "compute_gflops": f"{p.compute_gflops:g} GFLOP/s",
        "cores": str(p.cores) if p.cores is not None else f"not limited (threads: {p.threads})",
        "ttft_ms_target": f"{p.ttft_ms_target:g} ms",
        "itl_ms_target": f"{p.itl_ms_target:g} ms",
        "formats": ", ".join(p.formats),
        "default_quant": p.default_quant,
        "quant_preferences": " > ".join(p.quant_preferences),
    }
    width = max(len(k) for k in values)
    lines = [f"{p.name}  ({p.path or 'built-in'})"]
    for key, value in values.items():
        lines.append(f"  {key:<{width}}  {value}")
        if key in p.notes:
            lines.append(f"  {'':<{width}}    ^ {p.notes[key]}")
    return "\n".join(lines) + "\n"
