"""Weight solves by transpose reduction, and small SPD solves."""

import numpy as np
import scipy.linalg

from admm_mpi.backend import is_numpy, namespace


def _eye(xp, n, like):
    return xp.eye(n, dtype=like.dtype, device=getattr(like, "device", None))


def _jitters(A64, xp):
    """0, then ``1e-12 * trace/n`` growing tenfold: the shifts tried on a singular matrix."""
    scale = max(float(namespace(A64).linalg.trace(A64)) / A64.shape[0], 1e-300)
    yield 0.0
    jitter = 1e-12 * scale
    for _ in range(11):
        yield jitter
        jitter *= 10


def _not_spd(jitter):
    return np.linalg.LinAlgError("matrix is not positive semi-definite even with a jitter of "
                                 f"{jitter:.3g} (NaN or Inf in the iterates?)")


def _cholesky64(A):
    """(numpy) Lower Cholesky factor of ``A`` in float64, with a growing jitter if it is singular."""
    A64 = np.asarray(A, dtype=np.float64)
    for jitter in _jitters(A64, np):
        try:
            return scipy.linalg.cho_factor(A64 + jitter * np.eye(A64.shape[0]), lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            pass
    raise _not_spd(jitter)


def _spd_inverse64(A, xp):
    """(any array API) ``A⁻¹`` in float64 through ``xp.linalg`` (cupy: cuSOLVER), with the jitter."""
    A64 = xp.astype(A, xp.float64)
    n = A64.shape[0]
    eye = xp.eye(n, dtype=xp.float64, device=getattr(A, "device", None))
    for jitter in _jitters(A64, xp):
        try:
            L = xp.linalg.cholesky(A64 + jitter * eye)
        except Exception:  # numpy-like libraries raise, cupy returns NaN instead
            continue
        if not bool(xp.all(xp.isfinite(L))):
            continue
        L_inv = xp.linalg.solve(L, eye)  # the standard has no triangular solve
        return L_inv.T @ L_inv
    raise _not_spd(jitter)


def spd_solve(A, B):
    """Solve ``A X = B`` for symmetric positive (semi-)definite ``A`` by Cholesky.

    The factorisation runs in float64 whatever the working dtype: ``A`` is small (a layer's
    width squared) but, as a sum over many samples, badly conditioned, and a float32 Cholesky of
    a 1000-wide Gram over 60 000 samples fails. If ``A`` is still numerically singular (no
    ridge), a jitter of ``1e-12 * trace/n``, growing tenfold, is added until it factors.
    """
    if not is_numpy(A):
        xp = namespace(A, B)
        return xp.astype(_spd_inverse64(A, xp) @ xp.astype(B, xp.float64), B.dtype)
    factor = _cholesky64(A)
    B64 = np.asarray(B, dtype=np.float64)
    return scipy.linalg.cho_solve(factor, B64, check_finite=False).astype(np.result_type(A, B), copy=False)


def spd_inverse(A, dtype):
    """``A⁻¹`` of a small SPD matrix, factored in float64 (see :func:`spd_solve`), as ``dtype``.

    For many right-hand sides (every sample column) one GEMM with the inverse in the working
    dtype is faster than two float64 triangular solves, and as accurate as that dtype allows.
    """
    if not is_numpy(A):
        xp = namespace(A)
        return xp.astype(_spd_inverse64(A, xp), dtype)
    factor = _cholesky64(A)
    return scipy.linalg.cho_solve(factor, np.eye(A.shape[0]), check_finite=False).astype(dtype)


def activation_solver(W, beta, gamma):
    """Column-wise ``a = argmin beta ||T - W a||² + gamma ||a - H||²`` (Taylor's a-update), as ``solve(T, H)``.

    The normal equations are ``(beta WᵀW + gamma I) a = beta WᵀT + gamma H``; their solution is
    applied as a correction of ``H`` by the residual ``T - W H``:

        a = H + P (T - W H),   P = (beta WᵀW + gamma I)⁻¹ beta Wᵀ = Wᵀ ((gamma/beta) I + W Wᵀ)⁻¹

    ``P`` (n_in x n_out) is the same for every column: it is formed once in float64 through the
    smaller of the two inverses (the second form, Woodbury's push-through identity, when ``W``
    is wide, e.g. the layer before a 10-class output), cast to the working dtype and applied as
    two thin GEMMs to any block of columns.

    The correction form keeps exact answers exact. When ``T = W H`` (the first iteration, from
    the forward pass) it returns ``H`` itself, and a unit that is inactive on every sample
    (``h(z) = 0``) gets ``a = 0`` exactly, its column of the next ``W`` then solves to exactly 0,
    and it stays 0. Solving the normal equations directly would return that 0 as a
    cancellation of O(1) terms, i.e. rounding noise that depends on how BLAS splits the columns
    (the tail columns of a GEMM round differently); Taylor's iteration amplifies such a unit
    some 20x per iteration, so the noise grew into O(1) weights and a distributed run no
    longer matched the serial one.
    """
    xp = namespace(W)
    n_out, n_in = W.shape
    W64 = xp.astype(W, xp.float64)
    if n_out < n_in:
        S = spd_inverse((gamma / beta) * _eye(xp, n_out, W64) + W64 @ W64.T, xp.float64)
        P = xp.astype(W64.T @ S, W.dtype)
    else:
        K = spd_inverse(beta * (W64.T @ W64) + gamma * _eye(xp, n_in, W64), xp.float64)
        P = xp.astype(K @ (beta * W64.T), W.dtype)

    def solve(T, H):
        a = P @ (T - W @ H)
        a += H
        return a
    return solve


def activation_solve(W, T, H, beta, gamma):
    """:func:`activation_solver` applied once."""
    return activation_solver(W, beta, gamma)(T, H)


def gram(a):
    """``a aᵀ`` by a symmetric rank-k update (BLAS syrk): half the flops of the GEMM."""
    if not is_numpy(a):
        return a @ a.T
    syrk = {np.dtype(np.float32): scipy.linalg.blas.ssyrk,
            np.dtype(np.float64): scipy.linalg.blas.dsyrk}.get(a.dtype)
    if syrk is None or not a.flags.c_contiguous or a.shape[1] == 0:  # (an empty mini-batch shard)
        return a @ a.T
    upper = syrk(1.0, a.T, trans=1)  # a.T is Fortran-ordered: no copy; the upper triangle is filled
    return np.triu(upper) + np.triu(upper, 1).T


def with_ones_row(a):
    """``[a; 1]``: the bias becomes the last column of the weight matrix."""
    xp = namespace(a)
    return xp.concat([a, xp.ones((1, a.shape[1]), dtype=a.dtype, device=getattr(a, "device", None))], axis=0)


def local_normal_equations(a, z):
    """This shard's ``[A Aᵀ | A zᵀ]`` with ``A = [a; 1]``: the only per-layer data that crosses ranks.

    Packed in one buffer so the transpose reduction is a single ``Reduce`` per layer. Built
    without forming ``[a; 1]`` (no copy of the samples): the ones row contributes the sums
    ``a 1`` and ``z 1`` and the count.
    """
    xp = namespace(a, z)
    k = a.shape[0] + 1
    stats = xp.empty((k, k + z.shape[0]), dtype=a.dtype, device=getattr(a, "device", None))
    stats[:-1, :k - 1] = gram(a)
    row_sums = xp.sum(a, axis=1)
    stats[:-1, k - 1] = row_sums
    stats[-1, :k - 1] = row_sums
    stats[-1, k - 1] = a.shape[1]
    stats[:-1, k:] = a @ z.T
    stats[-1, k:] = xp.sum(z, axis=1)
    return stats


def solve_normal_equations(stats, ridge, anchor=None, anchor_weight=0.0):
    """Weights ``[W | b]`` minimising ``||z - W a - b||² + ridge ||[W b]||²`` from reduced stats.

    With ``anchor`` (a ``[W | b]``), ``+ anchor_weight ||[W b] - anchor||²`` as well: a proximal
    term that keeps a mini-batch solve near the current weights.
    """
    k = stats.shape[0]
    gram_ = stats[:, :k] + (ridge + anchor_weight) * _eye(namespace(stats), k, stats)
    rhs = stats[:, k:]
    if anchor is not None and anchor_weight:
        rhs = rhs + anchor_weight * anchor.T
    return spd_solve(gram_, rhs).T


def transpose_reduce_weights(grid, a, z, ridge, anchor=None, anchor_weight=0.0):
    """Least-squares layer weights over all ranks' samples (transpose reduction).

    Each rank forms ``[a;1][a;1]ᵀ`` and ``z [a;1]ᵀ`` on its columns; the sums are reduced to the
    root, solved there once, and the solution is broadcast, so the weights are bit-identical on
    every rank. Traffic is independent of the number of samples. ``anchor = (W, b)`` adds the
    proximal term of :func:`solve_normal_equations`.
    """
    xp = namespace(a, z)
    stats = grid.sum_to_root(local_normal_equations(a, z))
    Wb = xp.empty((z.shape[0], a.shape[0] + 1), dtype=a.dtype, device=getattr(a, "device", None))
    if grid.is_root:
        if anchor is not None:
            anchor = xp.concat([anchor[0], anchor[1][:, None]], axis=1)
        Wb[...] = solve_normal_equations(stats, ridge, anchor, anchor_weight)
    Wb = grid.bcast_from_root(Wb)
    return xp.asarray(Wb[:, :-1], copy=True), xp.asarray(Wb[:, -1], copy=True)
