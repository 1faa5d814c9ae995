"""Pieces every solver's state shares: initial weights and the forward pass that fills a and z."""

import numpy as np

from admm_mpi.backend import dtype_name, from_host, is_numpy, namespace, sum_all
from admm_mpi.timing import timed


def init_weights(widths, rng, like):
    """He-normal weights and zero biases, drawn from ``rng`` (numpy) and placed like ``like``.

    Every rank draws from the same seed, so the weights start identical without communication.
    """
    xp = namespace(like)
    weights, biases = [], []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        W = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(dtype_name(like.dtype))
        weights.append(from_host(xp, W, like=like))
        biases.append(xp.zeros(n_out, dtype=like.dtype, device=getattr(like, "device", None)))
    return weights, biases


def forward_states(weights, biases, X, h):
    """Pre-activations ``z_l`` and activations ``a_l`` of every layer (``a[0] = X``)."""
    a, z = [X], []
    for layer, (W, b) in enumerate(zip(weights, biases)):
        z.append(W @ a[-1] + b[:, None])
        if layer < len(weights) - 1:
            a.append(h(z[-1]))
    return a, z


def weight_step(grid, a_prev, T, W, b, c, mu, tau, *, bias_first, center=False, steps=1):
    """Backtracked gradient step on ``W`` and exact ``b`` for ``(c/2)||T - W a - b||² + (mu/2)||W||²``.

    Data-parallel by transpose reduction, each rank stepping its block of the rows of ``W`` and
    ``b`` (:func:`step_by_rows`). ``bias_first`` chooses the order (dlADMM's backward sweep
    updates b before W, its forward sweep W before b); with ``center`` the W step is taken with
    b minimised out and b is set exactly after it; ``steps`` repeats the W step on the same
    statistics. Returns ``(W, b, tau)``, ``tau`` the same on every rank.
    """
    from admm_mpi.ops.steps import exact_bias, weight_gradient_rows

    step_size = [tau]

    def step_rows(stats, rows, **collectives):
        W_rows, b_rows = W[rows[0]:rows[1], :], b[rows[0]:rows[1]]
        bias = exact_bias(stats, W_rows, rows) if bias_first else b_rows
        W_new, step_size[0], _, _ = weight_gradient_rows(stats, W_rows, bias, c, mu, tau, rows,
                                                         bias_eliminated=center, steps=steps, **collectives)
        if not bias_first or center:
            bias = exact_bias(stats, W_new, rows)
        return namespace(W).concat([W_new, bias[:, None]], axis=1)

    W, b = step_by_rows(grid, a_prev, T, step_rows)
    return W, b, step_size[0]


@timed("weight solve")
def step_by_rows(grid, a_prev, T, step_rows):
    """``[W | b]`` of a layer whose step is row-separable but for a few sums over the rows.

    The transpose-reduced statistics ``[A Aᵀ | A Tᵀ]`` (``A = [a; 1]``) are summed over the
    ranks, the same bytes on every rank; ``step_rows(stats, rows, sum_scalars=, shared_value=)``
    returns the rows ``rows = (start, stop)`` of ``[W | b]``, this rank's block; its
    ``sum_scalars(values)`` sums an array of this block's sums over the ranks and
    ``shared_value(f)`` hands the root's ``f()`` to every rank (both the same bytes on every rank,
    so every rank takes the same decisions). An allgather of the rows gives every rank the same
    ``[W | b]``: no rank waits through another's step. Device arrays (and
    ``grid.implementation.spread_weight_step`` off): the root steps every row and broadcasts. Returns ``(W, b)``.
    """
    from admm_mpi.ops.linalg import reduce_solve_broadcast, summed_normal_equations

    m = T.shape[0]
    if not is_numpy(T) or not grid.implementation.spread_weight_step:
        return reduce_solve_broadcast(grid, a_prev, T, lambda stats: step_rows(
            stats, (0, m), sum_scalars=lambda values: values, shared_value=lambda f: f()))
    stats = summed_normal_equations(grid, a_prev, T)
    start, stop = grid.block_range(m)
    Wb = np.empty((m, a_prev.shape[0] + 1), dtype=a_prev.dtype)
    Wb[start:stop] = step_rows(stats, (start, stop), sum_scalars=grid.allsum,
                               shared_value=lambda f: grid.bcast_decision(f() if grid.is_root else None))
    Wb = grid.allgather_rows(Wb)
    return np.array(Wb[:, :-1]), np.array(Wb[:, -1])


def activation_step(grid, a, T, W, b, c, target, nu, tau):
    """Backtracked gradient step on the local columns ``a`` of

        φ(a) = (c/2)||T - W a - b||² + (nu/2)||a - target||²     (summed over all ranks' columns)

    ``τ`` is global: ``||g||²`` and the curvature ``c||W g||² + nu||g||²`` are summed over ranks
    (bit-identically), so every rank takes the same step size and the serial run is reproduced.
    Returns ``(a_new, tau)``.
    """
    from admm_mpi.ops.steps import backtracking, parabola_trial, power_iteration, start_tau

    residual = T - W @ a - b[:, None]
    g = -c * (W.T @ residual) + nu * (a - target)
    Wg = W @ g
    grad_sq, curvature = grid.allsum(np.array([sum_all(g * g), c * sum_all(Wg * Wg) + nu * sum_all(g * g)]))
    if grad_sq == 0.0:
        return a, tau
    tau0 = start_tau(tau, lambda: c * power_iteration(lambda v: W.T @ (W @ v), W) + nu)
    _, tau, _ = backtracking(0.0, tau0, parabola_trial(0.0, grad_sq, curvature))
    return a - g / tau, tau
