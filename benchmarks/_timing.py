"""Timing on a shared machine: wall time plus a record of how busy the rest of it was.

The benchmark scripts in this folder import these helpers (``from _timing import ...``;
a script's own folder is on ``sys.path`` when it runs as ``python benchmarks/bench_x.py``).

Another process on a 2-core machine slows a 2-thread PyTorch run down by up to 10x, so
:func:`timed` records, next to the wall time, how many cores *other* processes used
meanwhile (busy ticks of the whole machine from ``/proc/stat`` less this process's own
ticks from ``/proc/self/stat``). A run is *clean* (:func:`is_clean`) when that stays at or
under ``contended_cores``; :func:`wait_for_quiet` sleeps until the machine looks quiet
before a run, and :func:`median_seconds` takes the median over the clean runs. Off Linux
the core usage is ``None`` and every run counts as clean.

Each script keeps its own ``QUIET_WAIT`` and ``CONTENDED_CORES`` settings and passes them in.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["is_clean", "machine", "median_seconds", "timed", "wait_for_quiet"]


def machine(**extra: Any) -> dict[str, Any]:
    """What every benchmark's JSON records about the machine (``extra`` adds to it)."""
    import platform

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **extra,
    }


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                int, f.readline().split()[1:9]
            )
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return user + nice + system + irq + softirq + steal, int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float | None]]:
    """``fn()``, its wall time in seconds and the cores other processes used meanwhile."""
    c0 = _cpu_ticks()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    c1 = _cpu_ticks()
    others = None
    if c0 is not None and c1 is not None:
        ticks = (c1[0] - c0[0]) - (c1[1] - c0[1]) - 1  # 1 tick of slack: 10 ms resolution
        others = round(max(ticks, 0) / os.sysconf("SC_CLK_TCK") / seconds, 3)
    return out, {"seconds": seconds, "others_cores": others}


def is_clean(run: dict[str, Any], contended_cores: float) -> bool:
    """Whether other processes used at most ``contended_cores`` cores during ``run``."""
    return run["others_cores"] is None or run["others_cores"] <= contended_cores


def wait_for_quiet(max_wait: float, contended_cores: float) -> float:
    """Sleep in 0.5 s looks until other processes use few cores (or ``max_wait`` s pass).

    Returns the seconds waited.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        _, look = timed(lambda: time.sleep(0.5))
        if is_clean(look, contended_cores):
            break
    return time.perf_counter() - t0


def median_seconds(runs: list[dict[str, Any]], contended_cores: float) -> tuple[float, int]:
    """Median seconds over the clean runs (over all runs if none was clean), and their count."""
    clean = [r["seconds"] for r in runs if is_clean(r, contended_cores)]
    return statistics.median(clean or [r["seconds"] for r in runs]), len(clean)
