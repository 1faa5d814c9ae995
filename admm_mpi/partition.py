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


def balanced_blocks(costs, parts):
    """Contiguous blocks ``[start, stop)`` of ``len(costs)`` items over ``parts`` parts, none empty,
    whose largest summed cost is the least possible.

    Layers of unequal widths split by count leave ranks idle (784-500-500-10 over two ranks by
    count: 642 000 weights on one, 5 000 on the other); split by cost, the largest block is as
    small as contiguity allows. Of the splits that achieve it, the most even one (least sum of
    squared block costs; then the later last blocks), so equal costs split as :func:`block_range`
    does. Exact (dynamic programming over the split points, cheap for the few layers of a
    network) and deterministic: every rank computes the same blocks from the same costs.
    """
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"{n} items cannot fill {parts} non-empty blocks")
    prefix = [0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    bound = _split_points(prefix, parts, lambda best, block: max(best, block))[0]
    _, cut = _split_points(prefix, parts, lambda best, block: best + block * block if block <= bound else float("inf"))
    stops = [n]
    for k in range(parts, 1, -1):
        stops.append(cut[k][stops[-1]])
    stops.reverse()
    return [(start, stop) for start, stop in zip([0, *stops[:-1]], stops)]


def _split_points(prefix, parts, combine):
    """Dynamic programme over contiguous splits of the items whose cost prefix sums are ``prefix``:
    ``best[k][i]``, the least ``combine``-accumulated value of items ``[0, i)`` in ``k`` blocks, and
    ``cut[k][i]``, its last block's start (ties: the latest). Returns (the value of all items, cut)."""
    n = len(prefix) - 1
    best = [[float("inf")] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for i in range(k, n - parts + k + 1):
            for j in range(k - 1, i):
                value = combine(best[k - 1][j], prefix[i] - prefix[j])
                if value <= best[k][i]:
                    best[k][i], cut[k][i] = value, j
    return best[parts][n], cut
