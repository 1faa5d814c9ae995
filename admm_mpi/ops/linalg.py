"""Weight solves by transpose reduction, and small SPD solves."""

import functools

import numpy as np
import scipy.linalg

from admm_mpi.backend import is_numpy, namespace
from admm_mpi.timing import NO_TIMER, timed


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
    return _cholesky(np.array(A, dtype=np.float64, order="C"))  # a copy: A is not overwritten


def _cholesky(work):
    """(numpy) Cholesky factor ``(c, True)`` of the symmetric ``work``, overwriting ``work``.

    ``work`` is a square ``dtype`` array, C-ordered: since it is symmetric, its Fortran view
    ``work.T`` is the same matrix, and LAPACK factors that in place (no copy, no ``eye``). The
    factor fills the lower triangle of ``work.T``; its upper triangle keeps the input, so a
    failed attempt is undone from it, and the jitter is added to the diagonal in place.
    """
    potrf = scipy.linalg.lapack.get_lapack_funcs("potrf", (work,))
    diagonal = work.reshape(-1)[::work.shape[0] + 1]  # a view: writes reach work
    original_diagonal = diagonal.copy()
    for jitter in _jitters(work, np):
        if jitter:  # undo the failed attempt: lower triangle from the upper one, diagonal shifted
            fill_lower_from_upper(work.T)
            diagonal[...] = original_diagonal + jitter
        c, info = potrf(work.T, lower=1, clean=0, overwrite_a=1)
        if info == 0:
            return c, True
        if info < 0:
            raise ValueError(f"potrf: illegal argument {-info}")
    raise _not_spd(jitter)


def fill_lower_from_upper(M, block=256):
    """Copy the strict upper triangle of the square view ``M`` into its lower one, in place.

    Block by block, so no n x n temporary is made (``np.triu`` would make two).
    """
    n = M.shape[0]
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        M[r1:, r0:r1] = M[r0:r1, r1:].T
        square = M[r0:r1, r0:r1]
        np.copyto(square, square.T.copy(), where=_strictly_lower(r1 - r0))


@functools.lru_cache(maxsize=8)
def _strictly_lower(n):
    """Mask of the strict lower triangle of n x n (kept: small batches fill many small Grams, and
    making the indices anew each time cost as much as the copy)."""
    return np.tri(n, k=-1, dtype=bool)


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
    return _inverse_from_factor(_cholesky64(A), dtype)


def _inverse_from_factor(factor, dtype, keep_factor=False):
    """(numpy) ``A⁻¹`` as ``dtype`` from :func:`_cholesky`'s factor of ``A`` (overwritten unless ``keep_factor``)."""
    c, _ = factor
    potri = scipy.linalg.lapack.get_lapack_funcs("potri", (c,))
    inverse, info = potri(c, lower=1, overwrite_c=not keep_factor)  # a third of cho_solve's flops on I
    if info != 0:
        raise np.linalg.LinAlgError(f"potri: info {info}")
    fill_lower_from_upper(inverse.T)  # potri fills the lower triangle (of the Fortran view)
    return inverse.T.astype(dtype, order="C", copy=dtype != np.float64)


def _shifted_gram64(M, shift, grid=None):
    """``M Mᵀ + shift I`` in float64, by syrk, the shift added on the diagonal in place (numpy).

    With a distributed ``grid`` the ranks share the product (each an equal part of its upper
    triangle, then an allgather): the same bytes on every rank, for 1/P of the flops each.
    """
    M64 = np.ascontiguousarray(M, dtype=np.float64)
    if grid is not None and grid.size > 1:
        G = np.array(_kernel_matrix(grid, M64))  # a copy: the product lives in a reused buffer
    else:
        G = gram(M64)
    G[np.diag_indices_from(G)] += shift  # (G may be Fortran-ordered: no flat view)
    return G


# Columns per rank, as a fraction of the factored system's size, up to which two float64
# triangular solves with the Cholesky factor beat forming the inverse (potri, then a GEMM with
# W): bench/activation_solve.py (at 256-1000 wide systems the factor-solve is 10-45 % faster at a
# quarter to a half, and slower from about 0.75).
FACTOR_SOLVE_FRACTION = 0.5


def activation_solver(W, beta, gamma, grid=None, n_columns=None, factor_solve_fraction=FACTOR_SOLVE_FRACTION):
    """Column-wise ``a = argmin beta ||T - W a||² + gamma ||a - H||²`` (Taylor's a-update), as ``solve(T, H)``.

    The normal equations are ``(beta WᵀW + gamma I) a = beta WᵀT + gamma H``; their solution is
    applied as a correction of ``H`` by the residual ``T - W H``:

        a = H + P (T - W H),   P = (beta WᵀW + gamma I)⁻¹ beta Wᵀ = Wᵀ ((gamma/beta) I + W Wᵀ)⁻¹

    The system is factored once, in float64, through the smaller of the two matrices (the second
    form, Woodbury's push-through identity, when ``W`` is wide, e.g. the layer before a 10-class
    output). For few columns per call (a mini-batch on each rank: at most
    ``factor_solve_fraction`` of the system's size) each call solves with the factor. For more,
    ``P`` (n_in x n_out), the same for every column, is formed once from the inverse in the
    working dtype and applied as a GEMM. (``factor_solve_fraction``: that threshold; ``inf``
    always solves with the factor, 0 never: bench/activation_solve.py times both.)

    ``grid``: the ranks that all need this operator (a data-parallel grid); they share forming
    the Gram ``W Wᵀ`` or ``WᵀW``, which is otherwise the same work on every rank.
    ``n_columns``: the global number of columns of each call, if known (a mini-batch's); the
    choice between the two ways is then made from ``n_columns / grid.size``, the same on every
    rank whatever its share. Else from each call's own columns.

    The correction form keeps exact answers exact. When ``T = W H`` (the first iteration, from
    the forward pass) it returns ``H`` itself, and a unit that is inactive on every sample
    (``h(z) = 0``) gets ``a = 0`` exactly, its column of the next ``W`` then solves to exactly 0,
    and it stays 0. Solving the normal equations directly would return that 0 as a
    cancellation of O(1) terms, i.e. rounding noise that depends on how BLAS splits the columns
    (the tail columns of a GEMM round differently); Taylor's iteration amplifies such a unit
    some 20x per iteration, so the noise grew into O(1) weights and a distributed run no
    longer matched the serial one. (A zero column of ``W`` keeps its row and column of the factor
    exactly zero off the diagonal, so both ways give that 0.)
    """
    xp = namespace(W)
    n_out, n_in = W.shape
    wide = n_out < n_in
    n_system = n_out if wide else n_in
    per_rank = None if n_columns is None else n_columns / (grid.size if grid is not None else 1)
    factor, inverse, P = None, None, None
    with (grid.timer if grid is not None else NO_TIMER).phase("activation solves"):
        if is_numpy(W):  # the same maths without eye temporaries; P's product in the working dtype
            factor = _cholesky_in_place(_shifted_gram64(W if wide else W.T, gamma / beta, grid))  # beta cancels
            if per_rank is not None and per_rank > factor_solve_fraction * n_system:  # the inverse's way, now:
                inverse = _inverse_from_factor(factor, W.dtype)  # not in concurrent calls (Taylor's blocks)
                P = None if wide else inverse @ W.T
        else:
            P = _activation_operator(xp, W, beta, gamma)

    def solve(T, H, WH=None):
        """``WH``: ``W @ H`` if the caller has it (e.g. from the forward pass), else computed."""
        nonlocal P, inverse
        residual = T - (W @ H if WH is None else WH)
        columns = H.shape[1] if per_rank is None else per_rank
        if P is None and columns <= factor_solve_fraction * n_system:  # two triangular solves
            a = W.T @ _cho_solve(factor, residual) if wide else _cho_solve(factor, W.T @ residual)
        else:
            if P is None and inverse is None:
                inverse = _inverse_from_factor(factor, W.dtype, keep_factor=True)  # a block may still solve with it
            if P is None and wide and H.shape[1] < n_in:  # fewer columns than P's rows: not worth forming P
                a = W.T @ (inverse @ residual)
            else:
                if P is None:
                    P = W.T @ inverse if wide else inverse @ W.T
                a = P @ residual
        a += H
        return a
    return solve


def _cholesky_in_place(G):
    """(numpy) :func:`_cholesky` of the symmetric float64 ``G``, a new array the caller gives up."""
    if G.flags.c_contiguous:
        return _cholesky(G)
    if G.T.flags.c_contiguous:  # symmetric: its transpose is the same matrix
        return _cholesky(G.T)
    return _cholesky64(G)


def _cho_solve(factor, B):
    """(numpy) ``A⁻¹ B`` from the Cholesky factor of ``A``, in float64, returned in ``B``'s dtype."""
    x = scipy.linalg.cho_solve(factor, np.asarray(B, dtype=np.float64), check_finite=False,
                               overwrite_b=B.dtype != np.float64)
    return x.astype(B.dtype, copy=False)


def _activation_operator(xp, W, beta, gamma):
    """(any array API) ``P`` of :func:`activation_solver`, formed in float64."""
    n_out, n_in = W.shape
    W64 = xp.astype(W, xp.float64)
    if n_out < n_in:
        S = spd_inverse((gamma / beta) * _eye(xp, n_out, W64) + W64 @ W64.T, xp.float64)
        P = xp.astype(W64.T @ S, W.dtype)
    else:
        K = spd_inverse(beta * (W64.T @ W64) + gamma * _eye(xp, n_in, W64), xp.float64)
        P = xp.astype(K @ (beta * W64.T), W.dtype)
    return P


def activation_solve(W, T, H, beta, gamma):
    """:func:`activation_solver` applied once."""
    return activation_solver(W, beta, gamma)(T, H)


def gram(a, out=None):
    """``a aᵀ`` by a symmetric rank-k update (BLAS syrk): half the flops of the GEMM.

    Written into ``out`` (a square view of ``a``'s dtype) when given, else into a new array.
    """
    if not is_numpy(a):
        if out is None:
            return a @ a.T
        out[...] = a @ a.T
        return out
    syrk = {np.dtype(np.float32): scipy.linalg.blas.ssyrk,
            np.dtype(np.float64): scipy.linalg.blas.dsyrk}.get(a.dtype)
    if syrk is None or not a.flags.c_contiguous or a.shape[1] == 0:  # (an empty mini-batch shard)
        if out is None:
            return a @ a.T
        np.matmul(a, a.T, out=out)
        return out
    upper = syrk(1.0, a.T, trans=1)  # a.T is Fortran-ordered: no copy; the upper triangle is filled
    if out is None:
        out = upper
    else:
        out[...] = upper
    fill_lower_from_upper(out)
    return out


def with_ones_row(a):
    """``[a; 1]``: the bias becomes the last column of the weight matrix."""
    xp = namespace(a)
    return xp.concat([a, xp.ones((1, a.shape[1]), dtype=a.dtype, device=getattr(a, "device", None))], axis=0)


def local_normal_equations(a, z, out=None):
    """This shard's ``[A Aᵀ | A zᵀ]`` with ``A = [a; 1]``: the only per-layer data that crosses ranks.

    Packed in one buffer so the transpose reduction is a single ``Reduce`` per layer. Built
    without forming ``[a; 1]`` (no copy of the samples): the ones row contributes the sums
    ``a 1`` and ``z 1`` and the count. ``out``: a ``k x (k + n_out)`` array to fill instead of a
    new one.
    """
    xp = namespace(a, z)
    k = a.shape[0] + 1
    stats = out if out is not None else xp.empty((k, k + z.shape[0]), dtype=a.dtype,
                                                 device=getattr(a, "device", None))
    gram(a, out=stats[:-1, :k - 1])
    row_sums = xp.sum(a, axis=1)
    stats[:-1, k - 1] = row_sums
    stats[-1, :k - 1] = row_sums
    stats[-1, k - 1] = a.shape[1]
    if is_numpy(a):
        np.matmul(a, z.T, out=stats[:-1, k:])
    else:
        stats[:-1, k:] = a @ z.T
    stats[-1, k:] = xp.sum(z, axis=1)
    return stats


def solve_normal_equations(stats, ridge, anchor=None, anchor_weight=0.0):
    """Weights ``[W | b]`` minimising ``||z - W a - b||² + ridge ||[W b]||²`` from reduced stats.

    With ``anchor`` (a ``[W | b]``), ``+ anchor_weight ||[W b] - anchor||²`` as well: a proximal
    term that keeps a mini-batch solve near the current weights.
    """
    k = stats.shape[0]
    if not is_numpy(stats):
        xp = namespace(stats)
        gram_ = stats[:, :k] + (ridge + anchor_weight) * _eye(xp, k, stats)
        rhs = stats[:, k:]
        if anchor is not None and anchor_weight:
            rhs = rhs + anchor_weight * anchor.T
        return spd_solve(gram_, rhs).T
    m = stats.shape[1] - k
    Wb = np.empty((m, k), dtype=stats.dtype)
    anchor = None if anchor is None else (anchor[:, :-1], anchor[:, -1])
    factor = factor_normal_equations(stats, ridge + anchor_weight, np.float64)
    Wb[...] = solve_normal_equation_rows(stats, factor, (0, m), anchor, anchor_weight)
    return Wb


# A float32 factor is kept while LAPACK's estimate of cond(Gram + shift I) * eps32 (a worst-case
# bound of the solve's relative error) stays below this; else the matrix is factored in float64.
# The bound is loose: on MNIST batches the estimate reaches 1.2e6 while the float32 solution
# differs from the float64 one by about 1e-4 (relative; bench/factor_precision.py measures it).
FLOAT32_MAX_ERROR = 0.1
_WORKSPACE = {}


def _workspace(name, shape, dtype):
    """A scratch array kept between calls: the solves of a layer repeat with the same shapes every
    batch, and a fresh n x n array per call costs its page faults again (the kernel time of
    issue 18). At most a few dozen shapes live at once (one set per layer)."""
    key = (name, tuple(shape), np.dtype(dtype))
    buf = _WORKSPACE.get(key)
    if buf is None:
        if len(_WORKSPACE) >= 32:
            _WORKSPACE.clear()
        buf = _WORKSPACE[key] = np.empty(shape, dtype=dtype)
    return buf


def factor_normal_equations(stats, shift, dtype):
    """Cholesky factor ``(c, lower)`` of ``Gram + shift I`` (the first ``k`` columns of ``stats``).

    Factored in a reused buffer: the shift goes onto the diagonal in place, with the jitter of
    :func:`spd_solve` if the matrix is still singular. The factor lives until the next call with
    the same shape. ``dtype`` float32 is tried first and kept only if it factors and LAPACK's
    condition estimate keeps the solve's relative error below about ``FLOAT32_MAX_ERROR``
    (``cond * eps``); otherwise the matrix is factored again in float64.
    """
    k = stats.shape[0]
    if np.dtype(dtype) == np.float32:
        work = _workspace("gram", (k, k), np.float32)
        work[...] = stats[:, :k]
        work.reshape(-1)[::k + 1] += shift
        norm = float(np.abs(work).sum(axis=0).max())  # the 1-norm, for the condition estimate
        c, info = scipy.linalg.lapack.spotrf(work.T, lower=1, clean=0, overwrite_a=1)
        if info == 0:
            rcond, info = scipy.linalg.lapack.spocon(c, norm, uplo="L")
            if info == 0 and rcond * FLOAT32_MAX_ERROR >= np.finfo(np.float32).eps:
                return c, True
    work = _workspace("gram", (k, k), np.float64)
    work[...] = stats[:, :k]
    work.reshape(-1)[::k + 1] += shift
    return _cholesky(work)


def solve_normal_equation_rows(stats, factor, rows, anchor=None, anchor_weight=0.0):
    """Rows ``rows = (start, stop)`` of ``[W | b]`` from the factor of :func:`factor_normal_equations`.

    Their right-hand sides are the columns ``k + start .. k + stop`` of ``stats`` (``[A zᵀ]``),
    plus ``anchor_weight`` times the rows of ``anchor = (W, b)``. Each row is solved
    independently of the others (two triangular solves), so any split of the rows over ranks
    gives the rows of the whole solve. Returns a ``(stop - start) x k`` array in the factor's
    dtype (a reused buffer: copy it before the next call).
    """
    k = stats.shape[0]
    start, stop = rows
    c, lower = factor
    rhs = _workspace("rhs", (stop - start, k), c.dtype)  # C-ordered rows: rhs.T is Fortran, as LAPACK wants
    rhs[...] = stats[:, k + start:k + stop].T
    if anchor is not None and anchor_weight:
        rhs[:, :-1] += anchor_weight * anchor[0][start:stop]
        rhs[:, -1] += anchor_weight * anchor[1][start:stop]
    if stop > start:
        potrs = scipy.linalg.lapack.get_lapack_funcs("potrs", (c,))
        _, info = potrs(c, rhs.T, lower=lower, overwrite_b=1)
        if info != 0:
            raise ValueError(f"potrs: illegal argument {-info}")
    return rhs


@timed("weight solve")
def transpose_reduce_weights(grid, a, z, ridge, anchor=None, anchor_weight=0.0, *, n_columns=None,
                             anchor_output=None):
    """Least-squares layer weights over all ranks' samples (transpose reduction).

    Each rank forms ``[a;1][a;1]ᵀ`` and ``z [a;1]ᵀ`` on its columns; the sums are reduced and
    broadcast (bit-identical on every rank). Every rank factors the Gram and solves only its
    block of the rows of ``[W | b]`` (``grid.block_range``); an allgather of the rows then
    gives every rank the same bytes. No rank waits through another's solve, and traffic is
    independent of the number of samples. ``anchor = (W, b)`` adds the proximal term of
    :func:`solve_normal_equations`.

    A mini-batch solve passes ``n_columns``, the batch's columns over all ranks: when that is
    narrower than the layer's input the same weights are cheaper through the batch's kernel
    matrix (:func:`kernel_form_weights`), which also uses ``anchor_output``, the anchor's
    ``W a + b`` on this rank's columns if the caller has it (the forward pass).
    """
    plan = grid.implementation
    if not is_numpy(a) or not plan.spread_solve:
        return _transpose_reduce_on_root(grid, a, z, ridge, anchor, anchor_weight)
    shift = ridge + anchor_weight
    if n_columns is not None and plan.kernel_form and shift > 0 and kernel_form_cheaper(a.shape[0] + 1, n_columns,
                                                                                   z.shape[0]):
        return kernel_form_weights(grid, a, z, shift, anchor, anchor_weight, anchor_output)
    k, m = a.shape[0] + 1, z.shape[0]
    stats = summed_normal_equations(grid, a, z)
    start, stop = grid.block_range(m)
    Wb = np.empty((m, k), dtype=a.dtype)
    if stop > start:  # (a rank without rows, e.g. 10 rows over 16 ranks, factors nothing)
        factor = factor_normal_equations(stats, ridge + anchor_weight, plan.factor_dtype_for(a.dtype))
        Wb[start:stop] = solve_normal_equation_rows(stats, factor, (start, stop), anchor, anchor_weight)
    Wb = grid.allgather_rows(Wb)
    return np.array(Wb[:, :-1]), np.array(Wb[:, -1])


def summed_normal_equations(grid, a, z):
    """(numpy) :func:`local_normal_equations` summed over the ranks, the same bytes on every rank.

    In a buffer reused between calls (valid until the next call with the same shapes).
    """
    k, m = a.shape[0] + 1, z.shape[0]
    with grid.timer.phase("local Grams"):
        local = local_normal_equations(a, z, out=_workspace("stats", (k, k + m), a.dtype))
    return grid.allsum_in_place(local)


# ---- the same solve through the batch's kernel matrix (grid.implementation.kernel_form) -------


def kernel_form_cheaper(k, n, m):
    """Whether ``m`` rows of weights over a ``k``-wide input are fewer flops to fit on ``n`` columns
    through the n x n kernel matrix (syrk, Cholesky, solves) than through the k x k Gram.

    Decided from global sizes only, so every rank count takes the same path.
    """
    gram_form = k * k * n / 2 + k ** 3 / 6 + k * k * m
    kernel_form = n * n * k / 2 + n ** 3 / 6 + n * n * m
    return kernel_form < gram_form


def upper_triangle_rows(n, size):
    """Row ranges ``[(start, stop)]`` that split the upper triangle of an n x n matrix into
    ``size`` blocks of about equal area (the first rows are the longest)."""
    edges = [int(round(n * (1 - np.sqrt(1 - r / size)))) for r in range(size + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _batch_row_ranges(grid, n_local):
    """Rank ``r``'s rows ``(start, stop)`` when every rank's batch columns are stacked as rows in rank order."""
    offsets = np.cumsum([0, *grid.gather_to_all(n_local)])
    return [(int(offsets[r]), int(offsets[r + 1])) for r in range(len(offsets) - 1)]


def _stacked_rows(grid, ranges, width, fill, name, dtype):
    """An ``n x width`` array of every rank's rows (``ranges``), the same on every rank; each rank
    writes its own block with ``fill(block)``."""
    rows = _workspace(name, (ranges[-1][1], width), dtype)
    start, stop = ranges[grid.rank]
    fill(rows[start:stop])
    return grid.allgather_rows(rows, ranges)


def kernel_form_weights(grid, a, z, shift, anchor=None, anchor_weight=0.0, anchor_output=None):
    """``[W | b]`` of :func:`transpose_reduce_weights` through the batch's kernel matrix.

    With ``A = [a; 1]`` over the batch's ``n`` columns on every rank, ``c = shift`` (ridge plus
    anchor weight) and ``mu = anchor_weight``, the normal equations
    ``[W|b] (A Aᵀ + c I) = z Aᵀ + mu [W0|b0]`` are solved by (push-through identity)

        [W|b] = (mu/c) [W0|b0] + D Aᵀ,   D (Aᵀ A + c I) = z - (mu/c) [W0|b0] A,

    an n x n system instead of k x k: for a batch narrower than the layer's input (the MNIST
    recipe: 2000 samples into a 4001-wide Gram) the factorisation and the Gram shrink. The
    batch's columns of ``A`` and of the right-hand side are allgathered (n rows each, the
    samples rather than k x k statistics); each rank computes an equal share of the kernel
    matrix's upper triangle, factors the whole matrix, solves its own rows of ``D`` and of
    ``[W|b]``; allgathers give every rank the same bytes. A unit that is inactive on every
    sample keeps ``(mu/c) W0`` in its column, exactly, as the Gram form would.
    """
    dtype, k, m = a.dtype, a.shape[0] + 1, z.shape[0]
    mu_c = anchor_weight / shift if anchor is not None else 0.0

    def fill_inputs(block):
        block[:, :-1] = a.T
        block[:, -1] = 1

    def fill_targets(block):
        if mu_c:
            z0 = anchor_output if anchor_output is not None else anchor[0] @ a + anchor[1][:, None]
            block[...] = (z - mu_c * z0).T
        else:
            block[...] = z.T

    ranges = _batch_row_ranges(grid, a.shape[1])
    A_rows = _stacked_rows(grid, ranges, k, fill_inputs, "kernel_inputs", dtype)  # Aᵀ
    R_rows = _stacked_rows(grid, ranges, m, fill_targets, "kernel_targets", dtype)
    n = A_rows.shape[0]
    kernel = _kernel_matrix(grid, A_rows)
    Wb = np.empty((m, k), dtype=dtype)
    start, stop = grid.block_range(m)
    if stop > start:
        c, lower = factor_normal_equations(kernel, shift, grid.implementation.factor_dtype_for(dtype))
        D = _workspace("kernel_rhs", (stop - start, n), c.dtype)
        D[...] = R_rows[:, start:stop].T
        potrs = scipy.linalg.lapack.get_lapack_funcs("potrs", (c,))
        _, info = potrs(c, D.T, lower=lower, overwrite_b=1)
        if info != 0:
            raise ValueError(f"potrs: illegal argument {-info}")
        np.matmul(D.astype(dtype, copy=False), A_rows, out=Wb[start:stop])
        if mu_c:
            Wb[start:stop, :-1] += mu_c * anchor[0][start:stop]
            Wb[start:stop, -1] += mu_c * anchor[1][start:stop]
    Wb = grid.allgather_rows(Wb)
    return np.array(Wb[:, :-1]), np.array(Wb[:, -1])


def _kernel_matrix(grid, A_rows):
    """``A_rows A_rowsᵀ`` (n x n), each rank computing an equal share of its upper triangle."""
    n = A_rows.shape[0]
    kernel = _workspace("kernel", (n, n), A_rows.dtype)
    ranges = upper_triangle_rows(n, grid.size)
    start, stop = ranges[grid.rank]
    if stop > start:
        mine = A_rows[start:stop]
        gram(mine, out=kernel[start:stop, start:stop])
        np.matmul(mine, A_rows[stop:].T, out=kernel[start:stop, stop:])
    kernel = grid.allgather_rows(kernel, ranges)
    fill_lower_from_upper(kernel)
    return kernel


@timed("weight solve")
def reduce_solve_broadcast(grid, a, z, solve):
    """The root-solved weight step of every solver, as one plan: the transpose-reduced statistics
    ``[A Aᵀ | A zᵀ]`` (:func:`local_normal_equations`, ``A = [a; 1]``) summed to the root, where
    ``solve(stats)`` returns ``[W | b]``; the root's bytes are broadcast, so the weights are
    bit-identical on every rank; ``solve`` runs on the root only, the other ranks wait. Used for
    device arrays (numpy weights take the row-split plans: :func:`transpose_reduce_weights`, and
    ``solvers.common.step_by_rows`` for the gradient steps of dlADMM, mDLAM, pdADMM).
    Returns ``(W, b)`` on every rank.
    """
    xp = namespace(a, z)
    with grid.timer.phase("local Grams"):
        local = local_normal_equations(a, z)
    stats = grid.sum_to_root(local)
    Wb = xp.empty((z.shape[0], a.shape[0] + 1), dtype=a.dtype, device=getattr(a, "device", None))
    if grid.is_root:
        Wb[...] = solve(stats)
    Wb = grid.bcast_from_root(Wb)
    return xp.asarray(Wb[:, :-1], copy=True), xp.asarray(Wb[:, -1], copy=True)


def _transpose_reduce_on_root(grid, a, z, ridge, anchor, anchor_weight):
    """(device arrays) Reduce to the root, solve there once, broadcast ``[W | b]``; the other ranks wait."""
    if anchor is not None:
        anchor = namespace(a).concat([anchor[0], anchor[1][:, None]], axis=1)
    return reduce_solve_broadcast(grid, a, z, lambda stats: solve_normal_equations(stats, ridge, anchor, anchor_weight))


# ---- inexact and memory-smoothed weight steps (issue 32) ---------------------------------------

def conjugate_gradient_rows(product, X, residual, iters):
    """``iters`` conjugate-gradient iterations on ``X M = R`` for every row of ``X`` at once (numpy).

    Each row is its own CG, with its own step lengths, on the same symmetric positive definite
    ``M``, given only through ``product(P) = P M``; ``residual`` is ``R - X M`` at the start (a
    caller often has it for less than a product). ``X`` and ``residual`` are updated in place and
    ``X`` is returned. Started from the current weights this is ProxProp's inexact step (Frerix et
    al., ICLR 2018); in exact arithmetic ``M``'s order of iterations gives the solve. A row whose
    residual is already 0 stays where it is.
    """
    P = residual.copy()
    rs = np.einsum("ij,ij->i", residual, residual)
    for it in range(iters):
        Q = product(P)
        pq = np.einsum("ij,ij->i", P, Q)
        alpha = np.divide(rs, pq, out=np.zeros_like(rs), where=pq > 0)
        X += alpha[:, None] * P
        residual -= alpha[:, None] * Q
        if it + 1 == iters:
            break
        rs_next = np.einsum("ij,ij->i", residual, residual)
        beta = np.divide(rs_next, rs, out=np.zeros_like(rs), where=rs > 0)
        P *= beta[:, None]
        P += residual
        rs = rs_next
    return X


def _stacked_anchor(anchor, m, k, dtype):
    """``[W0 | b0]`` as one ``m x k`` array (zeros without an anchor): the warm start."""
    Wb = np.zeros((m, k), dtype=dtype)
    if anchor is not None:
        Wb[:, :-1] = anchor[0]
        Wb[:, -1] = anchor[1]
    return Wb


@timed("weight solve")
def weights_from_statistics(grid, stats, ridge, anchor=None, anchor_weight=0.0, *, cg_iters=0):
    """``(W, b)`` minimising ``||z - W a - b||² + ridge ||[W b]||² + anchor_weight ||[W b] - anchor||²``
    from statistics ``stats = [A Aᵀ | A zᵀ]`` that are the same on every rank (summed over ranks,
    or smoothed over batches: :func:`smooth_statistics`), as :func:`transpose_reduce_weights` does
    after its reduction: each rank solves its block of rows, an allgather gives every rank the
    same bytes.

    ``cg_iters = 0``: the exact solve by Cholesky. ``cg_iters = K``: K conjugate-gradient iterations
    per row of ``Gram + (ridge + anchor_weight) I`` (:func:`conjugate_gradient_rows`), warm-started
    from ``anchor`` (zeros without one), with products by the formed ``k x k`` Gram.
    """
    k, m = stats.shape[0], stats.shape[1] - stats.shape[0]
    Wb = np.empty((m, k), dtype=stats.dtype)
    start, stop = grid.block_range(m)
    if stop > start:
        if cg_iters:
            gram_ = stats[:, :k]
            X = _stacked_anchor(None if anchor is None else (anchor[0][start:stop], anchor[1][start:stop]),
                                stop - start, k, stats.dtype)
            # R - X M = (A zᵀ)ᵀ + mu X - X (Gram + (ridge + mu) I) = (A zᵀ)ᵀ - X Gram - ridge X
            residual = stats[:, k + start:k + stop].T - X @ gram_ - ridge * X
            shift = ridge + anchor_weight
            Wb[start:stop] = conjugate_gradient_rows(lambda P: P @ gram_ + shift * P, X, residual, cg_iters)
        else:
            factor = factor_normal_equations(stats, ridge + anchor_weight,
                                             grid.implementation.factor_dtype_for(stats.dtype))
            Wb[start:stop] = solve_normal_equation_rows(stats, factor, (start, stop), anchor, anchor_weight)
    Wb = grid.allgather_rows(Wb)
    return np.array(Wb[:, :-1]), np.array(Wb[:, -1])


def cg_matrix_free_cheaper(k, n, m, iters):
    """Whether ``iters`` CG iterations for ``m`` rows of weights over a ``k``-wide input and ``n``
    columns cost fewer multiply-adds with products ``(P A) Aᵀ`` through the samples (two GEMMs of
    ``m k n`` each) than through the formed Gram (``k² n / 2`` by syrk once, then ``m k²`` per
    product). The cross term ``z Aᵀ`` costs ``m k n`` either way. Matrix-free wins where the layer
    has few outputs against its input (e.g. the output layer: ``m`` = classes); it also sends
    ``iters`` sums of ``m x k`` instead of one of ``k x (k + m)``. Global sizes only, so every rank
    count takes the same path."""
    return 2 * iters * m * k * n < k * k * n / 2 + iters * m * k * k


@timed("weight solve")
def matrix_free_cg_weights(grid, a, z, ridge, anchor, anchor_weight, iters, anchor_output=None):
    """``(W, b)`` of :func:`weights_from_statistics` with ``cg_iters = iters``, never forming the Gram.

    ``M = A Aᵀ + (ridge + anchor_weight) I`` is applied as ``P M = Σ_ranks (P A_r) A_rᵀ + shift P``
    (``A_r = [a; 1]`` on rank ``r``'s columns): one sum of ``m x k`` over the ranks per
    iteration. The start is the anchor ``[W0 | b0]``, whose residual
    ``Σ_ranks (z - z0) A_rᵀ - ridge [W0 | b0]`` needs only ``z0 = W0 a + b0`` (``anchor_output``:
    the forward pass has it). Every rank runs every row on the same summed bytes; an allgather
    of each rank's block of rows then makes the weights the same bytes everywhere.
    """
    k, m, dtype = a.shape[0] + 1, z.shape[0], a.dtype
    shift = ridge + anchor_weight

    def summed_times_inputs(D):  # Σ_ranks D [a; 1]ᵀ, D an m x n_local array
        out = _workspace("cg_cross", (m, k), dtype)
        np.matmul(D, a.T, out=out[:, :-1])
        out[:, -1] = D.sum(axis=1)
        return grid.allsum_in_place(out)

    X = _stacked_anchor(anchor, m, k, dtype)
    if anchor is not None:
        z0 = anchor_output if anchor_output is not None else anchor[0] @ a + anchor[1][:, None]
        residual = summed_times_inputs(z - z0) - ridge * X
    else:
        residual = np.array(summed_times_inputs(z))

    def product(P):
        return summed_times_inputs(P[:, :-1] @ a + P[:, -1:]) + shift * P

    Wb = conjugate_gradient_rows(product, X, residual, iters)
    Wb = grid.allgather_rows(Wb)  # each row's bytes from one rank, as every weight step
    return np.array(Wb[:, :-1]), np.array(Wb[:, -1])


def cg_weights(grid, a, z, ridge, anchor=None, anchor_weight=0.0, *, iters, n_columns, anchor_output=None):
    """The weight step of :func:`transpose_reduce_weights` by ``iters`` warm-started CG iterations:
    matrix-free (:func:`matrix_free_cg_weights`) where :func:`cg_matrix_free_cheaper` says so, else
    on the summed Gram (:func:`weights_from_statistics`). ``n_columns``: the batch's columns over all
    ranks."""
    k, m = a.shape[0] + 1, z.shape[0]
    if cg_matrix_free_cheaper(k, n_columns, m, iters):
        return matrix_free_cg_weights(grid, a, z, ridge, anchor, anchor_weight, iters, anchor_output)
    return weights_from_statistics(grid, summed_normal_equations(grid, a, z), ridge, anchor, anchor_weight,
                                   cg_iters=iters)


def cross_terms_around(smoothed, anchor):
    """``[S_aa | S_aa [W0 b0]ᵀ + S_ad]`` from statistics ``[S_aa | S_ad]`` of the displacements
    ``d = z* - z`` of the targets from the forward pass: the cross term of targets ``[W0 b0] A + d``
    that the current weights (``anchor = (W0, b0)``) would have produced on the same inputs. In a
    buffer reused between calls with the same shapes."""
    k, m = smoothed.shape[0], smoothed.shape[1] - smoothed.shape[0]
    out = _workspace("around", smoothed.shape, smoothed.dtype)
    out[:, :k] = smoothed[:, :k]
    np.matmul(smoothed[:, :k], _stacked_anchor(anchor, m, k, smoothed.dtype).T, out=out[:, k:])
    out[:, k:] += smoothed[:, k:]
    return out


def smooth_statistics(running, stats, n_columns, memory):
    """``running <- memory running + (1 - memory) stats / n_columns``, in place (a copy when
    ``running`` is None): an exponential moving average of the per-sample statistics
    ``[A Aᵀ | A zᵀ] / n`` over batches, the memory of online alternating minimisation (Choromanska et
    al., ICML 2019). After ``t`` batches it holds ``Σ_j (1 - memory) memory^(t-j) S_j / n_j``, whose
    weights sum to ``1 - memory^t``: divide by that (or scale the penalties by it) for a weighted
    mean of the batches."""
    if running is None:
        running = np.zeros_like(stats)
    running *= memory
    running += ((1.0 - memory) / n_columns) * stats
    return running
