"""Numbers as the estimate prints them: counts, times and rates for people."""

from __future__ import annotations

from advbench.estimate.summary import Hardware


def human_count(x: float) -> str:
    if x != x:
        return "?"
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}" if x else "0"


def human_time(seconds: float) -> str:
    if seconds != seconds:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 or seconds == 0 else "<1 s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def human_rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def hardware_line(hw: Hardware) -> str:
    where = f"{hw.gpus} GPU(s) and {hw.cpus} CPU core(s)" if hw.gpus else f"{hw.cpus} CPU core(s), no GPU"
    return f"estimate for {where}"
