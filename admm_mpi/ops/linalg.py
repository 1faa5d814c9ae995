"""Weight solves by transpose reduction, and small SPD solves."""

import numpy as np
import scipy.linalg


def spd_solve(A, B):
    """Solve ``A X = B`` for symmetric positive definite ``A`` by Cholesky."""
    factor = scipy.linalg.cho_factor(A, lower=True, check_finite=False)
    return scipy.linalg.cho_solve(factor, B, check_finite=False)


def with_ones_row(a):
    """``[a; 1]``: the bias becomes the last column of the weight matrix."""
    out = np.empty((a.shape[0] + 1, a.shape[1]), dtype=a.dtype)
    out[:-1] = a
    out[-1] = 1
    return out


def local_normal_equations(a, z):
    """This shard's ``[A Aᵀ | A zᵀ]`` with ``A = [a; 1]``: the only per-layer data that crosses ranks.

    Packed in one buffer so the transpose reduction is a single ``Reduce`` per layer.
    """
    A = with_ones_row(a)
    k = A.shape[0]
    stats = np.empty((k, k + z.shape[0]), dtype=a.dtype)
    np.matmul(A, A.T, out=stats[:, :k])
    np.matmul(A, z.T, out=stats[:, k:])
    return stats


def solve_normal_equations(stats, ridge):
    """Weights ``[W | b]`` minimising ``||z - W a - b||² + ridge ||[W b]||²`` from reduced stats."""
    k = stats.shape[0]
    gram = stats[:, :k] + ridge * np.eye(k, dtype=stats.dtype)
    return np.ascontiguousarray(spd_solve(gram, stats[:, k:]).T)


def transpose_reduce_weights(grid, a, z, ridge):
    """Least-squares layer weights over all ranks' samples (transpose reduction).

    Each rank forms ``[a;1][a;1]ᵀ`` and ``z [a;1]ᵀ`` on its columns; the sums are reduced to the
    root, solved there once, and the solution is broadcast, so the weights are bit-identical on
    every rank. Traffic is independent of the number of samples.
    """
    stats = grid.sum_to_root(local_normal_equations(a, z))
    Wb = np.empty((z.shape[0], a.shape[0] + 1), dtype=a.dtype)
    if grid.is_root:
        Wb[...] = solve_normal_equations(stats, ridge)
    grid.bcast_from_root(Wb)
    return Wb[:, :-1].copy(), Wb[:, -1].copy()
