"""The transpose-reduction weight solve against numpy.linalg.lstsq on the full data."""

import numpy as np
import pytest

from admm_mpi.grid import Grid
from admm_mpi.ops.linalg import transpose_reduce_weights


def _full_problem(n, n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_in, n)), rng.standard_normal((n_out, n))


def _lstsq_reference(a, z, ridge):
    """min ||z - W a - b||² + ridge ||[W b]||² as an ordinary least-squares problem."""
    A = np.vstack([a, np.ones((1, a.shape[1]))]).T            # n x (n_in + 1)
    if ridge:
        A = np.vstack([A, np.sqrt(ridge) * np.eye(A.shape[1])])
        rhs = np.vstack([z.T, np.zeros((A.shape[1], z.shape[0]))])
    else:
        rhs = z.T
    Wb = np.linalg.lstsq(A, rhs, rcond=None)[0].T
    return Wb[:, :-1], Wb[:, -1]


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_serial_solve_equals_lstsq(ridge):
    a, z = _full_problem(101, 7, 4)
    W, b = transpose_reduce_weights(Grid.serial(), a, z, ridge)
    W_ref, b_ref = _lstsq_reference(a, z, ridge)
    np.testing.assert_allclose(W, W_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
@pytest.mark.parametrize("n", [101, 104])  # 101 is uneven over 2, 3 and 4 ranks
def test_distributed_solve_equals_lstsq_on_full_data(comm, n):
    grid = Grid(comm)
    a, z = _full_problem(n, 7, 4, seed=n)
    start, stop = grid.block_range(n)
    W, b = transpose_reduce_weights(grid, a[:, start:stop], z[:, start:stop], 0.1)
    W_ref, b_ref = _lstsq_reference(a, z, 0.1)
    np.testing.assert_allclose(W, W_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-12)
    # Bit-identical on every rank: the root solved, everyone received its bytes.
    spread = grid.allmax(np.array([np.max(np.abs(W - comm.bcast(W, root=0)))]))
    assert spread[0] == 0.0
    grid.close()


def test_spd_solve_survives_an_ill_conditioned_float32_gram():
    """A float32 Cholesky of a wide Gram over many samples fails; ours factors in float64."""
    from admm_mpi.ops.linalg import spd_solve

    rng = np.random.default_rng(0)
    A = (1 / (1 + np.exp(-rng.normal(size=(300, 20000))))).astype(np.float32)  # sigmoid features
    G = A @ A.T + np.float32(1e-4) * np.eye(300, dtype=np.float32)
    B = rng.normal(size=(300, 2)).astype(np.float32)
    X = spd_solve(G, B)
    assert X.dtype == np.float32
    X64 = np.linalg.solve(G.astype(np.float64), B.astype(np.float64))
    np.testing.assert_allclose(X, X64, rtol=1e-3, atol=1e-3 * np.abs(X64).max())


def test_spd_solve_of_a_singular_matrix_adds_a_jitter():
    from admm_mpi.ops.linalg import spd_solve

    X = spd_solve(np.diag([2.0, 1.0, 0.0]), np.array([[2.0], [1.0], [0.0]]))
    np.testing.assert_allclose(X[:2, 0], [1.0, 1.0])
    assert np.all(np.isfinite(X))


def test_gram_by_syrk_equals_the_product():
    from admm_mpi.ops.linalg import gram

    rng = np.random.default_rng(7)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        a = rng.standard_normal((37, 501)).astype(dtype)
        G = gram(a)
        assert G.dtype == dtype and np.array_equal(G, G.T)
        assert np.allclose(G, a.astype(np.float64) @ a.T.astype(np.float64), rtol=tol, atol=tol * 501)


def test_local_normal_equations_equal_the_stacked_ones_row_formula():
    from admm_mpi.ops.linalg import local_normal_equations, with_ones_row

    rng = np.random.default_rng(8)
    a, z = rng.standard_normal((6, 40)), rng.standard_normal((3, 40))
    A = with_ones_row(a)
    assert np.allclose(local_normal_equations(a, z), np.hstack([A @ A.T, A @ z.T]), rtol=1e-13, atol=1e-12)


# Woodbury with P formed (more columns than inputs) or applied through W (fewer), square, tall
@pytest.mark.parametrize("n_out, n_in, columns", [(3, 9, 50), (3, 60, 7), (9, 9, 50), (12, 5, 50)])
def test_activation_solve_is_the_least_squares_minimiser(n_out, n_in, columns):
    from admm_mpi.ops.linalg import activation_solve

    rng = np.random.default_rng(n_out * 10 + n_in)
    W = rng.standard_normal((n_out, n_in))
    T, H = rng.standard_normal((n_out, columns)), rng.standard_normal((n_in, columns))
    beta, gamma = 0.7, 1.9
    # brute force: the stacked least-squares problem [sqrt(beta) W; sqrt(gamma) I] a = [sqrt(beta) T; sqrt(gamma) H]
    M = np.vstack([np.sqrt(beta) * W, np.sqrt(gamma) * np.eye(n_in)])
    R = np.vstack([np.sqrt(beta) * T, np.sqrt(gamma) * H])
    expected = np.linalg.lstsq(M, R, rcond=None)[0]
    assert np.allclose(activation_solve(W, T, H, beta, gamma), expected, rtol=1e-10, atol=1e-10)
    from admm_mpi.ops.linalg import activation_solver  # W @ H handed in (the forward pass's) gives the same

    assert np.allclose(activation_solver(W, beta, gamma)(T, H, WH=W @ H), expected, rtol=1e-10, atol=1e-10)


def _spd_problem(k, m, n, seed):
    """Columns of ``[a; z]`` (k - 1 + m rows) and an anchor ``(W, b)``: the same on every rank."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k - 1, n)), rng.standard_normal((m, n)),
            (rng.standard_normal((m, k - 1)), rng.standard_normal(m)))


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
@pytest.mark.parametrize("k, m", [(9, 7), (40, 5), (6, 2), (5, 13)])  # uneven row splits; 2 rows leave ranks idle
def test_spread_solve_equals_the_root_solve(comm, k, m):
    """Every rank factors and solves its block of rows of [W | b]: the root's solve of all rows, bit-identical everywhere."""
    from admm_mpi.ops import linalg

    grid = Grid(comm)
    a, z, anchor = _spd_problem(k, m, 57, seed=k * 100 + m)
    start, stop = grid.block_range(57)
    solved_rows = []
    original = linalg.solve_normal_equation_rows

    def recording(stats, factor, rows, *args):
        solved_rows.append(tuple(rows))
        return original(stats, factor, rows, *args)

    linalg.solve_normal_equation_rows = recording
    try:
        W, b = transpose_reduce_weights(grid, a[:, start:stop], z[:, start:stop], 0.3, anchor, 0.7)
    finally:
        linalg.solve_normal_equation_rows = original
    own = grid.block_range(m)
    assert solved_rows == ([own] if own[1] > own[0] else [])  # this rank's rows only

    W_root, b_root = linalg._transpose_reduce_on_root(grid, a[:, start:stop], z[:, start:stop], 0.3, anchor, 0.7)
    np.testing.assert_allclose(W, W_root, rtol=1e-12, atol=1e-12 * np.abs(W_root).max())
    np.testing.assert_allclose(b, b_root, rtol=1e-12, atol=1e-12 * np.abs(b_root).max())
    # the reference: the anchored ridge problem by the normal equations on the full data
    A = np.vstack([a, np.ones((1, 57))])
    Wb_anchor = np.hstack([anchor[0], anchor[1][:, None]])
    Wb_ref = np.linalg.solve(A @ A.T + 1.0 * np.eye(k), A @ z.T + 0.7 * Wb_anchor.T).T
    np.testing.assert_allclose(np.hstack([W, b[:, None]]), Wb_ref, rtol=1e-10, atol=1e-12)
    for x in (W, b):
        assert np.array_equal(x, comm.bcast(x, root=0))  # the same bytes on every rank
    grid.close()


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_rows_solved_in_blocks_equal_the_whole_solve(parts):
    """Any block split of the right-hand sides gives the rows of the whole solve (row by row)."""
    from admm_mpi.ops.linalg import factor_normal_equations, local_normal_equations, solve_normal_equation_rows
    from admm_mpi.partition import block_range

    a, z, anchor = _spd_problem(30, 11, 80, seed=parts)
    stats = local_normal_equations(a, z)
    whole = np.array(solve_normal_equation_rows(stats, factor_normal_equations(stats, 0.2 + 0.5, np.float64),
                                                (0, 11), anchor, 0.5))
    blocks = [np.array(solve_normal_equation_rows(stats, factor_normal_equations(stats, 0.2 + 0.5, np.float64),
                                                  block_range(11, parts, r), anchor, 0.5)) for r in range(parts)]
    np.testing.assert_allclose(np.vstack(blocks), whole, rtol=1e-12, atol=1e-12 * np.abs(whole).max())
    k = stats.shape[0]
    G = stats[:, :k] + 0.7 * np.eye(k)
    rhs = stats[:, k:] + 0.5 * np.hstack([anchor[0], anchor[1][:, None]]).T
    np.testing.assert_allclose(whole, np.linalg.solve(G, rhs).T, rtol=1e-10, atol=1e-12)


def test_gram_fills_both_triangles_into_a_strided_view():
    from admm_mpi.ops.linalg import gram

    rng = np.random.default_rng(3)
    a = rng.standard_normal((600, 50))  # over two 256-blocks of the mirror
    buffer = np.full((601, 700), np.nan)
    G = gram(a, out=buffer[:-1, :600])
    assert G.base is buffer or G is buffer[:-1, :600] or np.shares_memory(G, buffer)
    assert np.array_equal(buffer[:-1, :600], buffer[:-1, :600].T)
    np.testing.assert_allclose(buffer[:-1, :600], a @ a.T, rtol=1e-12, atol=1e-10)
    assert np.all(np.isnan(buffer[-1])) and np.all(np.isnan(buffer[:, 600:]))  # nothing outside the view


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
@pytest.mark.parametrize("shape", [(1, 3), (7, 5), (40, 41)])  # 3 elements: a rank sums none at 4 ranks
def test_allsum_in_place_equals_allsum_bit_identically_everywhere(comm, shape):
    grid = Grid(comm)
    local = np.random.default_rng(grid.rank).standard_normal(shape)
    total = grid.allsum_in_place(local.copy())
    np.testing.assert_allclose(total, grid.allsum(local), rtol=1e-14, atol=1e-14)
    assert np.array_equal(total, comm.bcast(total, root=0))
    grid.close()


# ---- the weight solve through the batch's kernel matrix (n columns narrower than the k-wide input) ----
def _anchored_reference(a, z, ridge, anchor, anchor_weight):
    """min ||z - W a - b||² + ridge ||[W b]||² + anchor_weight ||[W b] - anchor||², by lstsq on stacked rows."""
    k, m = a.shape[0] + 1, z.shape[0]
    A = np.vstack([a, np.ones((1, a.shape[1]))])
    Wb0 = np.hstack([anchor[0], anchor[1][:, None]])
    M = np.hstack([A, np.sqrt(ridge) * np.eye(k), np.sqrt(anchor_weight) * np.eye(k)])
    Y = np.hstack([z, np.zeros((m, k)), np.sqrt(anchor_weight) * Wb0])
    return np.linalg.lstsq(M.T, Y.T, rcond=None)[0].T


@pytest.mark.parametrize("k, n, m", [(51, 20, 7), (301, 100, 40), (30, 29, 3), (12, 40, 5)])
@pytest.mark.parametrize("with_output", [False, True])
def test_kernel_form_equals_the_gram_form_and_lstsq(k, n, m, with_output):
    from admm_mpi.ops.linalg import kernel_form_weights, local_normal_equations, solve_normal_equations

    a, z, anchor = _spd_problem(k, m, n, seed=k + n)
    output = anchor[0] @ a + anchor[1][:, None] if with_output else None
    W, b = kernel_form_weights(Grid.serial(), a, z, 0.3 + 0.7, anchor, 0.7, anchor_output=output)
    Wb = np.hstack([W, b[:, None]])
    Wb_gram = solve_normal_equations(local_normal_equations(a, z), 0.3, np.hstack([anchor[0], anchor[1][:, None]]), 0.7)
    reference = _anchored_reference(a, z, 0.3, anchor, 0.7)
    np.testing.assert_allclose(Wb, reference, rtol=1e-10, atol=1e-12 * np.abs(reference).max())
    np.testing.assert_allclose(Wb, Wb_gram, rtol=1e-10, atol=1e-12 * np.abs(reference).max())


def test_kernel_form_without_anchor_is_the_ridge_solve():
    from admm_mpi.ops.linalg import kernel_form_weights

    a, z, _ = _spd_problem(40, 6, 15, seed=4)
    W, b = kernel_form_weights(Grid.serial(), a, z, 0.5)
    W_ref, b_ref = _lstsq_reference(a, z, 0.5)
    np.testing.assert_allclose(W, W_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-12)


def test_kernel_form_keeps_an_inactive_unit_at_its_decayed_anchor_exactly():
    """A unit that is 0 on every sample contributes nothing: its weight column is (mu/c) W0, exactly."""
    from admm_mpi.ops.linalg import kernel_form_weights

    a, z, anchor = _spd_problem(30, 4, 12, seed=5)
    a[7] = 0.0
    W, _ = kernel_form_weights(Grid.serial(), a, z, 0.25 + 0.75, anchor, 0.75)
    assert np.array_equal(W[:, 7], 0.75 * anchor[0][:, 7])


def test_kernel_form_is_chosen_only_where_it_is_cheaper():
    from admm_mpi.ops.linalg import kernel_form_cheaper

    assert kernel_form_cheaper(4001, 2000, 1000)      # the MNIST recipe's second layer
    assert not kernel_form_cheaper(785, 2000, 4000)   # its first layer
    assert not kernel_form_cheaper(1001, 2000, 10)    # its output layer
    assert not kernel_form_cheaper(65, 60000, 512)    # a full-batch solve


@pytest.mark.parametrize("n, size", [(2000, 2), (10, 4), (3, 4), (1, 3), (1000, 7)])
def test_upper_triangle_rows_cover_the_rows_in_near_equal_areas(n, size):
    from admm_mpi.ops.linalg import upper_triangle_rows

    ranges = upper_triangle_rows(n, size)
    assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) == size
    assert all(stop == start for (_, stop), (start, _) in zip(ranges, ranges[1:]))
    areas = [sum(n - r for r in range(start, stop)) for start, stop in ranges]
    assert max(areas) - min(areas) <= 2 * n  # within about a row of the even share


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
@pytest.mark.parametrize("n", [37, 5, 2])  # uneven columns; at 3 and 4 ranks some ranks hold no column
def test_distributed_kernel_form_equals_serial_bit_identically_everywhere(comm, n):
    from admm_mpi.ops.linalg import kernel_form_weights

    grid = Grid(comm)
    a, z, anchor = _spd_problem(60, 9, n, seed=n)
    start, stop = grid.block_range(n)
    W, b = kernel_form_weights(grid, a[:, start:stop], z[:, start:stop], 1.0, anchor, 0.7)
    W_serial, b_serial = kernel_form_weights(Grid.serial(), a, z, 1.0, anchor, 0.7)
    np.testing.assert_allclose(W, W_serial, rtol=1e-12, atol=1e-12 * np.abs(W_serial).max())
    np.testing.assert_allclose(b, b_serial, rtol=1e-12, atol=1e-12 * np.abs(b_serial).max())
    for x in (W, b):
        assert np.array_equal(x, comm.bcast(x, root=0))  # the same bytes on every rank
    grid.close()


@pytest.mark.mpi(ranks=[1, 2, 3], timeout=60)
def test_transpose_reduce_takes_the_kernel_form_for_a_narrow_batch(comm, monkeypatch):
    from admm_mpi.ops import linalg

    calls = []
    original = linalg.kernel_form_weights
    monkeypatch.setattr(linalg, "kernel_form_weights", lambda *args, **kw: calls.append(1) or original(*args, **kw))
    grid = Grid(comm)
    a, z, anchor = _spd_problem(200, 30, 41, seed=2)
    start, stop = grid.block_range(41)
    W, b = linalg.transpose_reduce_weights(grid, a[:, start:stop], z[:, start:stop], 0.3, anchor, 0.7, n_columns=41)
    assert calls == [1]
    reference = _anchored_reference(a, z, 0.3, anchor, 0.7)
    np.testing.assert_allclose(np.hstack([W, b[:, None]]), reference, rtol=1e-10,
                               atol=1e-12 * np.abs(reference).max())
    grid.close()


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
@pytest.mark.parametrize("n_out, n_in", [(3, 40), (9, 9), (12, 5)])  # wide (W Wᵀ shared), square, tall
def test_activation_operator_formed_by_the_ranks_together_equals_serial_and_is_bit_identical(comm, n_out, n_in):
    from admm_mpi.ops.linalg import activation_solver

    grid = Grid(comm)
    rng = np.random.default_rng(n_out + n_in)
    W = rng.standard_normal((n_out, n_in))
    T, H = rng.standard_normal((n_out, 6)), rng.standard_normal((n_in, 6))
    shared = activation_solver(W, 0.7, 1.9, grid)(T, H)
    alone = activation_solver(W, 0.7, 1.9)(T, H)
    np.testing.assert_allclose(shared, alone, rtol=1e-12, atol=1e-12)
    assert np.array_equal(shared, comm.bcast(shared, root=0))  # the same operator on every rank
    grid.close()


@pytest.mark.parametrize("n", [1, 2, 7, 255, 256, 257, 600])
@pytest.mark.parametrize("order", ["C", "F"])
def test_fill_lower_from_upper_mirrors_the_strict_upper_triangle_in_place(n, order):
    from admm_mpi.ops.linalg import fill_lower_from_upper

    rng = np.random.default_rng(n)
    upper = np.triu(rng.standard_normal((n, n)))
    M = np.array(upper + np.tril(rng.standard_normal((n, n)), -1), order=order)  # garbage below
    fill_lower_from_upper(M)
    assert np.array_equal(M, upper + np.triu(upper, 1).T)
    T = np.array(upper.T, order=order)  # the transposed view, as the solvers pass Fortran results
    fill_lower_from_upper(T.T)
    assert np.array_equal(T.T, upper + np.triu(upper, 1).T)
