import pytest

import itertools

import numpy as np

from admm_mpi.partition import balanced_blocks, block_range


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 203, 1500])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_blocks_tile_the_rows_in_order_and_are_balanced(n, size):
    blocks = [block_range(n, size, r) for r in range(size)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(blocks[r][1] == blocks[r + 1][0] for r in range(size - 1))
    lengths = [stop - start for start, stop in blocks]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)  # the extra rows go to the first ranks


def test_known_split():
    assert [block_range(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]


@pytest.mark.parametrize("size, rank", [(0, 0), (2, 2), (2, -1)])
def test_bad_rank_is_refused(size, rank):
    with pytest.raises(ValueError):
        block_range(5, size, rank)


def _largest(costs, blocks):
    return max(sum(costs[start:stop]) for start, stop in blocks)


@pytest.mark.parametrize("seed", range(40))
def test_balanced_blocks_reach_the_least_largest_block_of_every_contiguous_split(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    parts = int(rng.integers(1, n + 1))
    costs = [int(c) for c in rng.integers(1, 60, n)]
    blocks = balanced_blocks(costs, parts)
    assert len(blocks) == parts and blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(start < stop for start, stop in blocks)
    assert all(blocks[k][1] == blocks[k + 1][0] for k in range(parts - 1))
    brute = min(_largest(costs, list(zip((0, *cuts), (*cuts, n))))
                for cuts in itertools.combinations(range(1, n), parts - 1))
    assert _largest(costs, blocks) == brute


@pytest.mark.parametrize("n", range(1, 16))
def test_equal_costs_split_as_block_range(n):
    for parts in range(1, n + 1):
        assert balanced_blocks([3] * n, parts) == [block_range(n, parts, r) for r in range(parts)]


def test_the_mnist_pdadmm_layers_split_by_weights():
    costs = [785 * 500, 501 * 500, 501 * 10]  # 784-500-500-10
    assert balanced_blocks(costs, 2) == [(0, 1), (1, 3)]  # by count: [(0, 2), (2, 3)]
    assert balanced_blocks(costs, 3) == [(0, 1), (1, 2), (2, 3)]


@pytest.mark.parametrize("n, parts", [(0, 1), (2, 3), (3, 0)])
def test_balanced_blocks_refuse_empty_blocks(n, parts):
    with pytest.raises(ValueError):
        balanced_blocks([1] * n, parts)
