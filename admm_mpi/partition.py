"""Block layout of samples over ranks: pure arithmetic, no communication."""


def block_range(n, size, rank):
    """Rows ``[start, stop)`` owned by ``rank`` when ``n`` rows are split over ``size`` ranks.

    Balanced: the first ``n % size`` ranks hold one row more than the others. Any rank can
    compute any other rank's block, so readers, checkpoints and tests share this one function.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a grid of size {size}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
