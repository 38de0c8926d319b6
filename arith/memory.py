"""Process memory settings for serving: keep freed memory in the allocator instead of giving it back to the OS.

A slider move in ``full`` mode allocates ~150 MB of activations and merged weights and frees them again.  glibc's
malloc hands freed blocks above its (dynamic, at most 32 MB) mmap threshold, and free space at the top of a heap
beyond its trim threshold, back to the kernel, so the next request faults the same pages in again: tens of thousands
of minor page faults and 50-170 ms of system time per request on the CI machine, which made the same request take
200 ms in one process and 300 ms in another (``python -m bench.allocator``).  :func:`keep_freed_memory` raises both
thresholds and keeps every thread on one arena, so a process settles at its peak working set and a request causes
no page faults at all.  The price is that resident memory does not shrink after a burst (bounded by the trim
threshold above the peak).

Process-wide, so the library never calls it on import: the app calls it as the server starts, the CLI and the
benchmarks at their start.  ``ARITH_MALLOC=default`` turns it off.  Only glibc has ``mallopt``; elsewhere this is a
no-op that says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8

_applied: dict | None = None


def keep_freed_memory(trim_mb: int = 512, mmap_mb: int = 256, arenas: int = 1) -> dict | None:
    """Set glibc's trim threshold to ``trim_mb``, its mmap threshold to ``mmap_mb`` (fixed, no longer dynamic) and
    the number of malloc arenas to ``arenas``.  Returns the settings applied (None when not glibc or turned off by
    ``ARITH_MALLOC=default``).  Idempotent; the first call's settings stay."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("ARITH_MALLOC", "").lower() == "default":
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("no glibc mallopt here: allocator settings left alone")
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    wanted = {"trim_threshold_mb": (M_TRIM_THRESHOLD, trim_mb << 20), "mmap_threshold_mb": (M_MMAP_THRESHOLD, mmap_mb << 20),
              "arena_max": (M_ARENA_MAX, arenas)}
    done = {key: (value if key == "arena_max" else value >> 20) for key, (param, value) in wanted.items()
            if mallopt(param, value) == 1}
    _applied = done
    log.info("malloc settings: %s", done)
    return done


def settings() -> dict | None:
    """What :func:`keep_freed_memory` applied in this process (None: nothing)."""
    return _applied
