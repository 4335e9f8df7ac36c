"""How much memory a job would take, checked against what the machine has, up front.

A 100,000 x 100,000 grid is 10**10 points: its coefficient matrix alone is 149 GiB, and
NumPy would try to allocate it before anything is evaluated. :func:`check_memory`
refuses such a job with the estimate, the available memory and a smaller setting.
"""

from __future__ import annotations

import os

from basinscope.errors import BasinscopeError

__all__ = ["MEMORY_FRACTION", "available_memory", "check_memory", "format_bytes"]

#: A job may plan to use at most this fraction of the available memory.
MEMORY_FRACTION = 0.5


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), or ``None``.

    Read from ``/proc/meminfo`` on Linux, else from ``os.sysconf`` (available physical
    pages); ``None`` where neither exists (the check is then skipped).
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_memory(nbytes: float, what: str, fix: str) -> None:
    """Raise a :class:`BasinscopeError` if ``what`` needs more than :data:`MEMORY_FRACTION`
    of the available memory (``nbytes`` is the estimate)."""
    avail = available_memory()
    if avail is None or nbytes <= MEMORY_FRACTION * avail:
        return
    raise BasinscopeError(
        f"{what} needs about {format_bytes(nbytes)} of memory, but {format_bytes(avail)} are "
        f"available (a job may use at most {MEMORY_FRACTION:.0%} of it); {fix}"
    )
