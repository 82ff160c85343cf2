"""Keep the C heap from holding on to freed memory (glibc malloc settings).

Fitting decodes images in worker threads and allocates and frees large feature tensors batch
after batch.  With glibc's defaults every decoding thread gets its own malloc arena (up to 8 per
core), each keeping the blocks freed into it, and the mmap threshold rises after the first large
free, so later large tensors come from the heap and their freed pages stay resident
(measurements and the alternatives tried: docs/performance.md, "patchbank.runtime.malloc").

:func:`tune_malloc` limits glibc to two arenas (``mallopt(M_ARENA_MAX, 2)``).  The
``patchbank`` command calls it at start-up (before any thread starts), as do the benchmarks;
library users may call it once before fitting.  It does nothing where the C library is not
glibc.

:func:`trim_malloc` (glibc ``malloc_trim(0)``) gives the heap's free pages back to the system;
the fit calls it after each raw chunk of the bank is embedded and freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_ARENA_MAX = -8   # glibc <malloc.h>
_done: bool | None = None
_trim = None   # glibc malloc_trim, False where there is none


def _glibc(name: str, argtypes: list) -> ctypes._CFuncPtr | None:
    """The C library's function ``name`` with its argument types set (int result), or None
    where there is no such function (not glibc)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


def tune_malloc(arenas: int = 2) -> bool:
    """Limit glibc to ``arenas`` malloc arenas, once per process (later calls return the first
    call's result whatever ``arenas``); True where glibc accepted the setting, False elsewhere."""
    global _done
    if _done is None:
        mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
        _done = mallopt is not None and bool(mallopt(_M_ARENA_MAX, int(arenas)))
    return _done


def trim_malloc() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``, which also
    releases free pages in the middle of the heap, not only at its top).  The fit calls it after
    each raw chunk of the bank is embedded and freed.  Does nothing where the C library is not
    glibc."""
    global _trim
    if _trim is None:
        _trim = _glibc("malloc_trim", [ctypes.c_size_t]) or False
    if _trim:
        _trim(0)
