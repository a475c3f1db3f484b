"""Process-wide allocator settings that keep the store's memory down, applied once per process.

Measured with ``bench/bench_store.py --rss-child 43200`` (one month of W1, 2 cores): peak RSS
744 MB with pyarrow's default mimalloc pool and glibc's default arenas, 606 MB with Arrow on the
system allocator, 521 MB with that and at most two malloc arenas; throughput did not drop. mimalloc
keeps freed pages of the batch tables for reuse, and every writer thread gets an arena of its own
that keeps what it freed. Both are process-wide, so the store changes them only when asked
(``RESULTS_STORE_TUNE_ALLOCATORS``, on by default) and says so in its event log.

Switching at run time is the fallback for an engine that embeds the store: memory pyarrow took
before the switch stays with mimalloc (the month's peak was ~600 MB that way). Our own entry points
set the environment before anything loads: ``cli/__init__.py`` (ARROW_DEFAULT_MEMORY_POOL) and the
deployments' ``job_variables.env`` in prefect.yaml (that and MALLOC_ARENA_MAX).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["ALLOCATOR_ENV", "tune_allocators"]

# The same settings as environment variables, for entry points that set them before pyarrow loads
# (cli/__init__.py, the bench's RSS children; prefect.yaml's job variables, checked by a test).
# This module imports pyarrow only inside tune_allocators() so that those can import it first.
ALLOCATOR_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"}

_M_ARENA_MAX = -8  # glibc's mallopt() parameter number for the arena limit
_ARENAS = int(ALLOCATOR_ENV["MALLOC_ARENA_MAX"])
_applied: dict[str, str] | None = None


def tune_allocators() -> dict[str, str]:
    """Put Arrow on the system allocator and cap glibc's malloc arenas; returns what was set."""
    import pyarrow as pa

    global _applied
    if _applied is not None:
        return _applied
    applied = {}
    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
        applied["arrow_memory_pool"] = "system"
    if sys.platform.startswith("linux"):
        libc_name = ctypes.util.find_library("c")
        if libc_name and ctypes.CDLL(libc_name).mallopt(_M_ARENA_MAX, _ARENAS) == 1:
            applied["malloc_arena_max"] = str(_ARENAS)
    _applied = applied
    return applied
