"""Thread-level parallelism for the denoising passes.

numpy releases the GIL in its heavy loops (copies, conversions, einsum, BLAS), so a few Python
threads each working on its own block use the cores well. BLAS is kept single-threaded while
they run (:func:`single_threaded_blas`): on a busy machine OpenBLAS's own threads spin-wait on
each other and small products become several times slower, while independent blocks per Python
thread keep scaling.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor


def default_threads() -> int:
    """Threads used by default: the CPUs this process may run on, at most 2 (the target box)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:                      # not Linux
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def pmap(fn, items, threads: int) -> list:
    """``[fn(x) for x in items]`` on ``threads`` threads, results in order; errors propagate."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(fn, items))


@contextlib.contextmanager
def single_threaded_blas(enabled: bool = True):
    """Limit BLAS to one thread inside the block (no-op if threadpoolctl is missing)."""
    if not enabled:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                         # optional: scikit-learn brings it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
