"""Gradient steps with backtracking, Lipschitz estimates, and layer steps from reduced statistics.

dlADMM, mDLAM and pdADMM replace exact block minimisation by one step of a quadratic
approximation, ``x⁺ = x - ∇φ(x)/τ`` (or its projection), with ``τ`` found by backtracking until

    φ(x⁺) <= φ(x) + <∇φ(x), x⁺ - x> + (τ/2) ||x⁺ - x||²          (sufficient decrease)

Better than the published codes: ``τ`` is kept per layer between iterations (the next search
starts at ``τ/2`` and doubles), ``φ(x)`` and ``∇φ(x)`` are computed once per search, the number of
trials is capped, and the first ``τ`` comes from a power-iteration Lipschitz bound.

For the quadratic blocks (W, b, and unconstrained a) ``φ`` along the step is a parabola:
``φ(x - g/τ) = φ(x) - ||g||²/τ + gᵀHg/(2τ²)``, so each trial costs O(1) once ``||g||²`` and the
curvature ``gᵀHg`` are known — and on a data-parallel grid these are two reduced scalars.
"""

import math

import numpy as np

from admm_mpi.backend import namespace, sum_all
from admm_mpi.errors import TrainingError

MAX_TRIALS = 60


def power_iteration(apply, like, iters=30):
    """Largest eigenvalue of a symmetric positive semi-definite operator ``apply`` on R^n.

    Deterministic start vector, so every rank computing it from the same operator agrees.
    A few iterations suffice: the result only seeds the backtracking search.
    """
    xp = namespace(like)
    n = like.shape[1]
    v = xp.ones(n, dtype=like.dtype, device=getattr(like, "device", None)) / n**0.5
    lam = 0.0
    for _ in range(iters):
        w = apply(v)
        norm = sum_all(w * w) ** 0.5
        if not math.isfinite(norm):  # the operator overflows: no finite step size exists
            return math.inf
        if norm == 0.0:
            return 0.0
        lam, v = sum_all(v * w), w / norm
    return max(lam, 0.0) * 1.01 + 1e-12  # a little above: the bound should not undershoot


def backtracking(phi_x, tau, trial, *, grow=2.0, max_trials=MAX_TRIALS):
    """Find ``τ`` (from ``tau`` upwards) whose step satisfies sufficient decrease.

    ``trial(τ)`` returns ``(candidate, φ(candidate), <∇φ(x), candidate - x>, ||candidate - x||²)``.
    Returns ``(candidate, τ, trials)``; if no trial passes within ``max_trials``, returns
    ``(None, tau, trials)`` with the ``tau`` it started from, and the caller keeps ``x`` (a null
    step never increases φ). A failed search only says ``x`` is stationary to rounding; the
    ``τ·grow^max_trials`` it reached would freeze the block in every later search.
    """
    tau_start = tau
    for trials in range(1, max_trials + 1):
        candidate, phi_new, inner, dist_sq = trial(tau)
        # a relative slack of a few ulps keeps rounding from rejecting an exact step
        if phi_new <= phi_x + inner + 0.5 * tau * dist_sq + 1e-12 * abs(phi_x):
            return candidate, tau, trials
        tau *= grow
    return None, tau_start, max_trials


def parabola_trial(phi_x, grad_sq, curvature, make_candidate=lambda tau: None):
    """``trial`` for a quadratic ``φ`` stepping along ``-g/τ``: exact values from two scalars."""

    def trial(tau):
        return (make_candidate(tau), phi_x - grad_sq / tau + curvature / (2 * tau * tau),
                -grad_sq / tau, grad_sq / (tau * tau))

    return trial


def start_tau(tau_prev, lipschitz):
    """Where a search starts: half the last accepted step, or the Lipschitz bound the first time.

    A bound that overflows (inputs far too large for the working dtype) leaves no step to take:
    TrainingError, the same on every rank (the bound is), instead of a layer frozen in place.
    """
    tau = 0.5 * tau_prev if tau_prev is not None else lipschitz()
    if not math.isfinite(tau):
        raise TrainingError("training diverged: a weight step's curvature bound overflowed (features far "
                            "from standardised: admm-mpi data convert --standardize, or --dtype float64)")
    return tau


# ---- layer weights from reduced statistics -------------------------------------------------
def split_stats(stats):
    """``[A Aᵀ | A Tᵀ]`` with ``A = [a; 1]`` → Gram ``G`` (a aᵀ), ``s_a`` (a 1), ``N``, ``C`` (T aᵀ), ``s_T`` (T 1)."""
    k = stats.shape[0]
    n_in = k - 1
    G = stats[:n_in, :n_in]
    s_a = stats[:n_in, n_in]
    N = stats[n_in, n_in]
    C = stats[:n_in, k:].T
    s_T = stats[n_in, k:]
    return G, s_a, N, C, s_T


def weight_gradient_step(stats, W, b, c, mu, tau_prev, *, bias_eliminated=False, steps=1):
    """Backtracked gradient steps on ``W`` for ``φ(W) = (c/2)||T - W a - b||² + (mu/2)||W||²``.

    Everything comes from the reduced statistics of ``[a;1]`` and the target ``T`` (no pass over
    the samples): ``∇φ = c (W G + b s_aᵀ - C) + mu W`` and the curvature along ``D`` is
    ``c <D G, D> + mu ||D||²``. Returns ``(W_new, τ, trials, grad_sq)`` (trials summed, the
    first step's ``||∇φ||²``).

    With ``bias_eliminated`` the step is taken on ``ψ(W) = min_b φ(W, b)`` instead (the caller
    then sets ``b`` exactly): its Hessian is the *centred* Gram ``G - s_a s_aᵀ/N``. Activations
    and pixels are non-negative, so the uncentred Gram has one huge eigenvalue along the mean
    that dictates a tiny step for every other direction; centring removes it.

    ``steps > 1`` repeats the step on the same statistics: no communication and no pass over
    the samples, and one GEMM each, because ``W⁺G = WG - (∇G)/τ`` reuses the curvature product.
    This is :func:`weight_gradient_rows` with every row in one block.
    """
    return weight_gradient_rows(stats, W, b, c, mu, tau_prev, (0, W.shape[0]), bias_eliminated=bias_eliminated,
                                steps=steps)


def _serial_sum(values):
    return values


def _computed_here(top_eigenvalue):
    return top_eigenvalue()


def weight_gradient_rows(stats, W, b, c, mu, tau_prev, rows, *, bias_eliminated=False, steps=1,
                         sum_scalars=_serial_sum, shared_value=_computed_here):
    """:func:`weight_gradient_step` on the block ``rows = (start, stop)`` of the rows of ``W``.

    ``W`` and ``b`` are that block's rows. Row ``i`` of the gradient, of ``∇φ G`` and of ``W G``
    depends on row ``i`` of ``W`` alone; only the search couples the rows, through two sums over
    all of them, ``||∇φ||²`` and ``<∇φ G, ∇φ>``. ``sum_scalars(values)`` (a float64 array of
    this block's sums) returns the sums over all blocks, the same on every caller, so every
    block takes the same ``τ``. ``shared_value(f)`` returns ``f()``'s value, the same on every caller
    (the power-iteration bound on the Gram, needed the first time only). Serially both are the
    identity. Returns ``(W_new rows, τ, trials, grad_sq)``, ``grad_sq`` over all rows.
    """
    G, s_a, N, C, s_T = split_stats(stats)
    start, stop = rows
    C = C[start:stop, :]
    if bias_eliminated:
        offset = C - s_T[start:stop, None] * s_a[None, :] / N
    else:
        offset = C - b[:, None] * s_a[None, :]
    times_gram = _gram_product(G, s_a, N, centred=bias_eliminated)
    WG = times_gram(W)
    W = namespace(W).asarray(W, copy=True)
    tau, total_trials, first_grad_sq = tau_prev, 0, None
    for _ in range(steps):
        grad = c * (WG - offset) + mu * W
        grad_G = times_gram(grad)
        grad_sq, grad_G_grad = (float(x) for x in sum_scalars(np.array([sum_all(grad * grad),
                                                                          sum_all(grad_G * grad)])))
        if first_grad_sq is None:
            first_grad_sq = grad_sq
        if grad_sq == 0.0:
            break
        curvature = c * grad_G_grad + mu * grad_sq
        tau0 = start_tau(tau, lambda: shared_value(lambda: c * power_iteration(times_gram, G) + mu))
        _, tau, trials = backtracking(0.0, tau0, parabola_trial(0.0, grad_sq, curvature))
        total_trials += trials
        W -= grad / tau
        WG -= grad_G / tau
    return W, tau, total_trials, first_grad_sq


def _gram_product(G, s_a, N, centred):
    """``X ↦ X G`` for the rows of ``X`` (or a vector), or with ``centred`` ``X ↦ X (G - s_a s_aᵀ/N)``
    as a rank-one correction of ``X G``: the centred Gram is never formed (it would be a k x k
    array made again on every rank for every step, the one part of the step not split by rows)."""
    if not centred:
        return lambda X: X @ G
    s_mean = s_a / N

    def times(X):
        XG = X @ G
        XG -= (X @ s_a)[..., None] * s_mean
        return XG
    return times


def exact_bias(stats, W, rows=None):
    """Minimiser over ``b`` of ``||T - W a - b||²``: the mean over samples of ``T - W a``.

    With ``rows = (start, stop)``, ``W`` holds those rows only and their entries of ``b`` are returned.
    """
    _, s_a, N, _, s_T = split_stats(stats)
    if rows is not None:
        s_T = s_T[rows[0]:rows[1]]
    return (s_T - W @ s_a) / N
