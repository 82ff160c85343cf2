"""One thread count for every CPU runtime patchbank touches: torch, FAISS and numpy's BLAS.

torch (its OpenMP pool and MKL), FAISS (a second OpenMP runtime, bundled in the faiss-cpu
wheel, with its own OpenBLAS) and numpy (OpenBLAS with pthreads) each start as many threads as
there are cores.  They run one after another in patchbank, but a runtime left at the core count
while torch is limited oversubscribes the cores (and spinning OpenMP workers of one runtime slow
the other).  :func:`set_threads` gives all of them the same count; :func:`sync_faiss` copies
torch's current count to FAISS before each FAISS call, so ``torch.set_num_threads(n)`` alone is
honoured too.

``patchbank ... --threads N`` calls :func:`set_threads` (and sets ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` when torch is not imported yet).
"""
from __future__ import annotations

import os
import sys

_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_blas_limiter = None
#: The most threads one process asks for: far above any CPU's cores, below where OpenMP runtimes
#: fail to create their threads (libgomp refused 16,384 on a 2-core machine; 32,768 crashed the
#: process with a segmentation fault).
MAX_THREADS = 1024


def set_threads(n: int | None) -> None:
    """Use ``n`` threads in torch, FAISS and numpy's BLAS (None: leave everything as it is)."""
    global _blas_limiter
    if n is None:
        return
    n = int(n)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"threads: must be in [1, {MAX_THREADS}], got {n}")
    if "torch" not in sys.modules:
        for var in _ENV:
            os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    sync_faiss()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: numpy BLAS then follows OPENBLAS_NUM_THREADS only
        return
    # limits every BLAS / OpenMP library loaded in the process (numpy's and FAISS's OpenBLAS too)
    _blas_limiter = threadpool_limits(limits=n)


def sync_faiss() -> None:
    """Give FAISS's OpenMP runtime torch's current thread count (no-op without FAISS)."""
    faiss = sys.modules.get("faiss")
    if faiss is None:
        return
    import torch

    n = torch.get_num_threads()
    if faiss.omp_get_max_threads() != n:
        faiss.omp_set_num_threads(n)


def thread_report() -> dict:
    """Thread counts of every runtime loaded now (for benchmark JSON and tests)."""
    import torch

    out = {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        out["faiss_omp"] = faiss.omp_get_max_threads()
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return out
    out["pools"] = [{"library": i.get("prefix"), "api": i.get("user_api"),
                     "threads": i.get("num_threads")} for i in threadpool_info()]
    return out
