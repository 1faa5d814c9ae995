"""Column-blocked work on a rank's samples, spread over its cores.

Per-sample updates are independent column by column. Doing them block by block keeps the
element-wise temporaries in cache, and since numpy's element-wise loops run on one core, the
blocks are handed to ``threads`` Python threads, each calling single-threaded BLAS (numpy and
BLAS release the GIL), so every core of the rank works on the element-wise part too. Each
block's arithmetic is the same whichever thread runs it, so results do not depend on the
thread count.
"""

from concurrent.futures import ThreadPoolExecutor

BLOCK_COLUMNS = 512  # measured best of 256..20000 for a 1000-wide layer (bench/gemm_efficiency.py)


def column_blocks(n, width=BLOCK_COLUMNS):
    """Slices of ``width`` columns covering ``0..n``."""
    return [slice(s, min(s + width, n)) for s in range(0, n, width)]


def blas_threads():
    """Threads the BLAS libraries of this process are set to use (the rank's share of cores)."""
    from threadpoolctl import threadpool_info

    return max([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] or [1])


def for_each_block(fn, n, threads=None, width=BLOCK_COLUMNS):
    """Call ``fn(cols)`` for every column block of ``0..n``, on ``threads`` threads (default: BLAS's)."""
    blocks = column_blocks(n, width)
    threads = blas_threads() if threads is None else threads
    if threads <= 1 or len(blocks) < 2:
        for cols in blocks:
            fn(cols)
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, blocks):  # re-raises a block's exception here
            pass
