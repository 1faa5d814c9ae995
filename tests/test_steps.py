"""Backtracking steps: sufficient decrease holds (checked on the data), the search is bounded."""

import numpy as np
import pytest

from admm_mpi.ops.linalg import local_normal_equations
from admm_mpi.ops.steps import (MAX_TRIALS, backtracking, exact_bias, power_iteration,
                                weight_gradient_step)


def _phi(T, W, b, a, c, mu):
    return 0.5 * c * np.sum((T - W @ a - b[:, None]) ** 2) + 0.5 * mu * np.sum(W * W)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("tau_prev", [None, 1e-6, 1e6])
def test_weight_step_satisfies_sufficient_decrease_on_the_data(seed, tau_prev):
    rng = np.random.default_rng(seed)
    n_in, n_out, n = rng.integers(2, 9), rng.integers(1, 6), rng.integers(5, 40)
    a, T = rng.normal(size=(n_in, n)), rng.normal(size=(n_out, n))
    W, b = rng.normal(size=(n_out, n_in)), rng.normal(size=n_out)
    c, mu = rng.uniform(0.1, 3), rng.uniform(0, 0.5)
    W_new, tau, trials, grad_sq = weight_gradient_step(local_normal_equations(a, T), W, b, c, mu, tau_prev)
    grad = -c * (T - W @ a - b[:, None]) @ a.T + mu * W      # the gradient, computed from the data
    step = W_new - W
    lhs = _phi(T, W_new, b, a, c, mu)
    rhs = _phi(T, W, b, a, c, mu) + np.sum(grad * step) + 0.5 * tau * np.sum(step * step)
    assert lhs <= rhs + 1e-10 * abs(rhs)
    assert np.isclose(grad_sq, np.sum(grad * grad))
    assert 1 <= trials <= MAX_TRIALS
    assert lhs < _phi(T, W, b, a, c, mu)                      # a real decrease


def test_exact_bias_is_the_minimiser():
    rng = np.random.default_rng(0)
    a, T, W = rng.normal(size=(4, 30)), rng.normal(size=(3, 30)), rng.normal(size=(3, 4))
    b = exact_bias(local_normal_equations(a, T), W)
    np.testing.assert_allclose(b, np.mean(T - W @ a, axis=1), rtol=1e-12)


def test_backtracking_never_loops_unbounded():
    calls = []

    def never_good(tau):
        calls.append(tau)
        return "x", 1.0, 0.0, 0.0   # φ(x⁺) = 1 > φ(x) = 0 for every τ

    candidate, tau, trials = backtracking(0.0, 1.0, never_good)
    assert candidate is None and trials == MAX_TRIALS and len(calls) == MAX_TRIALS
    # a failed search hands back where it started: 2**60 would freeze the block in every later search
    assert tau == 1.0 and calls[-1] == 2.0 ** (MAX_TRIALS - 1)


def test_power_iteration_bounds_the_top_eigenvalue():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(20, 50))
    G = A @ A.T
    top = np.linalg.eigvalsh(G)[-1]
    est = power_iteration(lambda v: G @ v, G)
    assert top * 0.999 <= est <= top * 1.05
