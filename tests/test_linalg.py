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


# Woodbury with P formed (more columns than inputs) or applied through W (fewer), square, tall; and
# solved with the factor (columns at most FACTOR_SOLVE_FRACTION of the factored system: wide, square, tall)
@pytest.mark.parametrize("n_out, n_in, columns", [(3, 9, 50), (3, 60, 7), (9, 9, 50), (12, 5, 50),
                                                  (40, 60, 7), (16, 16, 3), (30, 12, 4)])
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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_out, n_in", [(40, 60), (16, 16), (30, 12)])  # wide, square, tall
def test_solving_with_the_factor_and_through_the_inverse_agree_and_keep_exact_answers_exact(n_out, n_in, dtype):
    """``n_columns`` chooses the way (few columns per rank: the factor; many: P); both give the
    least-squares answer, ``H`` itself when ``T = W H``, and exactly 0 for a unit that a zero
    column of ``W`` and a zero row of ``H`` cut off, on any mix of calls."""
    from admm_mpi.ops import linalg

    rng = np.random.default_rng(n_out + n_in)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    W[:, 2] = 0  # unit 2 feeds nothing
    T, H = rng.standard_normal((n_out, 5)).astype(dtype), rng.standard_normal((n_in, 5)).astype(dtype)
    H[2] = 0  # and is inactive on every sample
    system = min(n_out, n_in)
    few, many = 1, int(system / linalg.FACTOR_SOLVE_FRACTION) + 1
    by_factor = linalg.activation_solver(W, 0.7, 1.9, n_columns=few)
    by_inverse = linalg.activation_solver(W, 0.7, 1.9, n_columns=many)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(by_factor(T, H), by_inverse(T, H), rtol=tolerance, atol=tolerance)
    for solve in (by_factor, by_inverse):
        assert solve(T, H).dtype == dtype
        assert np.array_equal(solve(W @ H, H), H)  # T = W H: no correction, bit for bit
        assert not solve(T, H)[2].any()  # the cut-off unit stays exactly 0
    mixed = linalg.activation_solver(W, 0.7, 1.9)  # each call by its own columns, in either order
    for columns in (1, system - 1, 1, many, 1):  # the inverse formed from the factor leaves it usable
        block = rng.standard_normal((n_out, columns)).astype(dtype), rng.standard_normal((n_in, columns)).astype(dtype)
        np.testing.assert_allclose(mixed(*block), by_factor(*block), rtol=tolerance, atol=tolerance)


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


# ---- the inexact (CG) and memory-smoothed weight steps ----------------------------------------

def _proximal_problem(seed, k=None, m=None, n=None):
    """A random anchored least-squares problem: inputs ``a`` (k-1 x n), targets ``z``, anchor ``(W0, b0)``."""
    rng = np.random.default_rng(seed)
    k = k or int(rng.integers(4, 25))
    m, n = m or int(rng.integers(1, 7)), n or int(rng.integers(5, 60))
    a, z = rng.standard_normal((k - 1, n)), rng.standard_normal((m, n))
    anchor = rng.standard_normal((m, k - 1)), rng.standard_normal(m)
    return a, z, anchor, float(rng.uniform(0.01, 1)), float(rng.uniform(0.1, 3))


def _exact_by_lstsq(a, z, anchor, ridge, weight):
    """``[W b]`` of the anchored problem as one stacked least-squares problem (no normal equations)."""
    k, n = a.shape[0] + 1, a.shape[1]
    A1 = np.vstack([a, np.ones((1, n))])
    lhs = np.vstack([A1.T, np.sqrt(ridge) * np.eye(k), np.sqrt(weight) * np.eye(k)])
    rhs = np.vstack([z.T, np.zeros((k, z.shape[0])), np.sqrt(weight) * np.column_stack(anchor).T])
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0].T


@pytest.mark.parametrize("seed", range(6))
def test_cg_error_to_the_exact_solve_falls_with_the_iterations_to_1e10(seed):
    """Warm-started CG on ``[W b] (A Aᵀ + (ridge + q) I) = z Aᵀ + q anchor``, formed and matrix-free:
    the error to the lstsq solution never grows (in the Euclidean and the M-norm, row by row, as
    CG's theory says) and is below 1e-10 (relative) after k + 5 iterations."""
    from admm_mpi.ops.linalg import matrix_free_cg_weights, summed_normal_equations, weights_from_statistics

    a, z, anchor, ridge, weight = _proximal_problem(seed)
    grid, k = Grid.serial(), a.shape[0] + 1
    exact = _exact_by_lstsq(a, z, anchor, ridge, weight)
    A1 = np.vstack([a, np.ones((1, a.shape[1]))])
    M = A1 @ A1.T + (ridge + weight) * np.eye(k)
    stats = summed_normal_equations(grid, a, z).copy()
    previous = None
    for iters in range(1, k + 6):
        W, b = weights_from_statistics(grid, stats, ridge, anchor, weight, cg_iters=iters)
        Wf, bf = matrix_free_cg_weights(grid, a, z, ridge, anchor, weight, iters)
        error = np.column_stack([W, b]) - exact
        if iters <= 8:  # the same iterates, products apart (later, rounding grows as CG loses orthogonality)
            np.testing.assert_allclose(np.column_stack([Wf, bf]), np.column_stack([W, b]), rtol=0,
                                       atol=1e-11 * np.abs(exact).max())
        norms = np.linalg.norm(error, axis=1), np.sqrt(np.einsum("ij,jk,ik->i", error, M, error))
        if previous is not None:
            for now, before in zip(norms, previous):
                assert np.all(now <= before * (1 + 1e-9) + 1e-13)
        previous = norms
    assert np.abs(error).max() <= 1e-10 * np.abs(exact).max()
    assert np.abs(np.column_stack([Wf, bf]) - exact).max() <= 1e-10 * np.abs(exact).max()
    start = np.column_stack(anchor) - exact
    assert np.linalg.norm(start) > 1e3 * np.linalg.norm(error)  # it did move: the start was far off


def test_cg_from_the_solution_stays_there_and_a_zero_residual_row_is_left_alone():
    from admm_mpi.ops.linalg import conjugate_gradient_rows

    rng = np.random.default_rng(5)
    B = rng.standard_normal((6, 6))
    M = B @ B.T + np.eye(6)
    X_true = rng.standard_normal((3, 6))
    R = X_true @ M
    X = X_true.copy()
    X[1] += rng.standard_normal(6)  # rows 0 and 2 start at their solution
    out = conjugate_gradient_rows(lambda P: P @ M, X, R - X @ M, 4)
    np.testing.assert_array_equal(out[[0, 2]], X_true[[0, 2]])
    assert np.linalg.norm(out[1] - X_true[1]) < np.linalg.norm(rng.standard_normal(6)) * 10


def test_matrix_free_cg_is_chosen_for_narrow_outputs_only():
    from admm_mpi.ops.linalg import cg_matrix_free_cheaper

    assert cg_matrix_free_cheaper(257, 2000, 10, 3)        # the output layer of 256-256 on 10 classes
    assert not cg_matrix_free_cheaper(257, 2000, 256, 3)   # a hidden 256 -> 256 layer
    assert not cg_matrix_free_cheaper(31, 2000, 256, 3)    # a first layer on 30 features


@pytest.mark.parametrize("memory", [0.0, 0.5, 0.9])
def test_smoothed_statistics_equal_the_explicit_weighted_sums(memory):
    """After batches 1..t of ``n_j`` columns: ``Σ_j (1 - memory) memory^(t-j) [A Aᵀ | A zᵀ]_j / n_j``."""
    from admm_mpi.ops.linalg import local_normal_equations, smooth_statistics

    rng = np.random.default_rng(11)
    running, batches = None, []
    for n in (7, 12, 3, 9, 12):
        a, z = rng.standard_normal((4, n)), rng.standard_normal((2, n))
        A1 = np.vstack([a, np.ones((1, n))])
        batches.append((np.hstack([A1 @ A1.T, A1 @ z.T]), n))
        running = smooth_statistics(running, local_normal_equations(a, z), n, memory)
        t = len(batches)
        expected = sum((1 - memory) * memory ** (t - 1 - j) * S / n_j for j, (S, n_j) in enumerate(batches))
        np.testing.assert_allclose(running, expected, rtol=1e-13, atol=1e-14)
    # the weights sum to 1 - memory^t: the count entry (bottom-left of the Gram) is that sum
    assert running[-1, 4] == pytest.approx(1 - memory ** 5, rel=1e-14)


def test_smoothed_displacements_solve_the_weighted_problem_of_targets_around_the_current_weights():
    """Batches ``j`` with inputs ``a_j`` and displacements ``d_j``, smoothed with memory ``m``: the step
    from :func:`cross_terms_around` is the lstsq solution of ``Σ_j w_j / n_j ||[W0 b0] A_j + d_j - [W b] A_j||²
    + w (ridge ||[W b]||² + q ||[W b] - [W0 b0]||²)``, ``w_j = (1 - m) m^(t-j)``, ``w = Σ_j w_j``."""
    from admm_mpi.ops.linalg import cross_terms_around, local_normal_equations, smooth_statistics, \
        weights_from_statistics

    rng = np.random.default_rng(2)
    memory, ridge, q, k, m = 0.6, 0.05, 0.4, 6, 3
    anchor = rng.standard_normal((m, k - 1)), rng.standard_normal(m)
    Wb0 = np.column_stack(anchor)
    running, blocks, targets = None, [], []
    sizes = (9, 4, 13)
    for j, n in enumerate(sizes):
        a, d = rng.standard_normal((k - 1, n)), rng.standard_normal((m, n))
        running = smooth_statistics(running, local_normal_equations(a, d), n, memory)
        w = (1 - memory) * memory ** (len(sizes) - 1 - j)
        A1 = np.vstack([a, np.ones((1, n))])
        blocks.append(np.sqrt(w / n) * A1.T)
        targets.append(np.sqrt(w / n) * (Wb0 @ A1 + d).T)
    total = 1 - memory ** len(sizes)
    W, b = weights_from_statistics(Grid.serial(), cross_terms_around(running, anchor), ridge * total, anchor,
                                   q * total)
    lhs = np.vstack([*blocks, np.sqrt(ridge * total) * np.eye(k), np.sqrt(q * total) * np.eye(k)])
    rhs = np.vstack([*targets, np.zeros((k, m)), np.sqrt(q * total) * Wb0.T])
    expected = np.linalg.lstsq(lhs, rhs, rcond=None)[0].T
    np.testing.assert_allclose(np.column_stack([W, b]), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
@pytest.mark.parametrize("n", [101, 23])  # uneven over 2, 3 and 4 ranks
def test_distributed_cg_and_smoothed_solves_equal_serial(comm, n):
    """Exact and CG solves from summed and smoothed statistics, and matrix-free CG: each rank's
    shard gives the serial answer to 1e-10 (float64), the same bytes on every rank."""
    from admm_mpi.ops.linalg import (cg_weights, matrix_free_cg_weights, smooth_statistics,
                                     summed_normal_equations, weights_from_statistics)

    grid, serial = Grid(comm), Grid.serial()
    start, stop = grid.block_range(n)
    results = {}
    for name, solve in {
        "cg-formed": lambda g, a, z, A, r, q: weights_from_statistics(g, summed_normal_equations(g, a, z).copy(),
                                                                       r, A, q, cg_iters=4),
        "cg-matrix-free": lambda g, a, z, A, r, q: matrix_free_cg_weights(g, a, z, r, A, q, 4),
        "cg-chosen": lambda g, a, z, A, r, q: cg_weights(g, a, z, r, A, q, iters=2, n_columns=n),
        "exact-smoothed": lambda g, a, z, A, r, q: weights_from_statistics(
            g, smooth_statistics(smooth_statistics(None, summed_normal_equations(g, a, z), n, 0.7),
                                 summed_normal_equations(g, 2 * a, z), n, 0.7), r, A, q),
        "cg-smoothed": lambda g, a, z, A, r, q: weights_from_statistics(
            g, smooth_statistics(None, summed_normal_equations(g, a, z), n, 0.5), r, A, q, cg_iters=3),
    }.items():
        a, z, anchor, ridge, weight = _proximal_problem(n, k=12, m=5, n=n)
        W, b = solve(grid, a[:, start:stop], z[:, start:stop], anchor, ridge, weight)
        W_ref, b_ref = solve(serial, a, z, anchor, ridge, weight)
        scale = np.abs(W_ref).max()
        np.testing.assert_allclose(W, W_ref, rtol=0, atol=1e-10 * scale, err_msg=name)
        np.testing.assert_allclose(b, b_ref, rtol=0, atol=1e-10 * scale, err_msg=name)
        results[name] = np.column_stack([W, b])
    for name, Wb in results.items():  # bit-identical on every rank
        assert np.array_equal(Wb, comm.bcast(Wb, root=0)), name
    grid.close()
