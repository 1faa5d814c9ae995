import pytest

from admm_mpi.partition import block_range


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
