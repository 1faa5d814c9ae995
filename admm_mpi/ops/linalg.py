"""Weight solves by transpose reduction, and small SPD solves."""

import numpy as np
import scipy.linalg


def spd_solve(A, B):
    """Solve ``A X = B`` for symmetric positive (semi-)definite ``A`` by Cholesky.

    The factorisation runs in float64 whatever the working dtype: ``A`` is small (a layer's
    width squared) but, as a sum over many samples, badly conditioned, and a float32 Cholesky of
    a 1000-wide Gram over 60 000 samples fails. If ``A`` is still numerically singular (no
    ridge), a jitter of ``1e-12 * trace/n``, growing tenfold, is added until it factors.
    """
    A64 = np.asarray(A, dtype=np.float64)
    B64 = np.asarray(B, dtype=np.float64)
    jitter = 0.0
    scale = max(float(np.trace(A64)) / A64.shape[0], np.finfo(np.float64).tiny)
    for _ in range(12):
        try:
            factor = scipy.linalg.cho_factor(A64 + jitter * np.eye(A64.shape[0]), lower=True, check_finite=False)
            return scipy.linalg.cho_solve(factor, B64, check_finite=False).astype(np.result_type(A, B), copy=False)
        except np.linalg.LinAlgError:
            jitter = 1e-12 * scale if jitter == 0.0 else jitter * 10
    raise np.linalg.LinAlgError("matrix is not positive semi-definite even with a jitter of "
                                f"{jitter:.3g} (NaN or Inf in the iterates?)")


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
