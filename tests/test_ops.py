"""Every element-wise z-update and loss prox against a brute-force minimum."""

import numpy as np
import pytest

from admm_mpi.ops.activations import relu, relu_z_update
from admm_mpi.ops.losses import LOSSES, hinge_prox, least_squares_prox

from tests.helpers import brute_force_min

N = 10_000


def _check_against_brute_force(objective, z_ours, lo, hi):
    """Our minimiser is never worse than brute force and lands on the same point."""
    z_brute = brute_force_min(lambda z, idx: objective(z, idx), lo, hi)
    idx = np.arange(z_ours.size)
    f_ours = objective(z_ours[:, None], idx)[:, 0]
    f_brute = objective(z_brute[:, None], idx)[:, 0]
    scale = 1 + np.abs(f_brute)
    assert np.all(f_ours <= f_brute + 1e-9 * scale), np.max(f_ours - f_brute)
    # Where the minimiser is unique (no near tie between branches) the points agree too.
    assert np.quantile(np.abs(z_ours - z_brute), 0.999) < 1e-5


def test_relu_z_update_matches_brute_force_on_both_branches():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 2, N)
    m = rng.normal(0, 2, N)
    gamma = rng.uniform(0.05, 5, N)
    beta = rng.uniform(0.05, 5, N)
    z = relu_z_update(a, m, gamma, beta)

    def objective(zz, idx):
        return gamma[idx, None] * (a[idx, None] - relu(zz)) ** 2 + beta[idx, None] * (zz - m[idx, None]) ** 2

    bound = np.abs(a) + np.abs(m) + 1
    _check_against_brute_force(objective, z, -bound, bound)
    assert np.sum(z > 0) > 1000 and np.sum(z <= 0) > 1000  # both branches exercised


def test_relu_z_update_edge_cases():
    # a = 0, m = 0: the minimum is z = 0 on both branches.
    assert relu_z_update(np.array([0.0]), np.array([0.0]), 1.0, 1.0)[0] == 0
    # m far positive: the positive branch; closed form (gamma a + beta m)/(gamma + beta).
    assert relu_z_update(np.array([1.0]), np.array([5.0]), 1.0, 3.0)[0] == pytest.approx(4.0)
    # m negative and a = 0: stay at m, relu(m) = 0 matches a exactly.
    assert relu_z_update(np.array([0.0]), np.array([-2.0]), 1.0, 1.0)[0] == -2.0


@pytest.mark.parametrize("binary", [True, False])
def test_hinge_prox_matches_brute_force(binary):
    rng = np.random.default_rng(2)
    Y = rng.integers(0, 2, N).astype(float)
    m = rng.normal(0.5, 1.5, N)
    lam = rng.normal(0, 1, N) * (0 if binary else 1)  # with and without a multiplier
    beta = rng.uniform(0.05, 5, N)
    z = hinge_prox(m, Y, lam, beta)

    def objective(zz, idx):
        y = Y[idx, None]
        loss = y * np.maximum(1 - zz, 0) + (1 - y) * np.maximum(zz, 0)
        return loss + lam[idx, None] * zz + beta[idx, None] * (zz - m[idx, None]) ** 2

    bound = np.abs(m) + (np.abs(lam) + 1) / beta + 2
    _check_against_brute_force(objective, z, -bound, bound)
    # all three pieces hit: left of the kink, at the kink, right of it
    at_kink = np.isclose(z, Y)
    assert at_kink.sum() > 500 and (z < Y).sum() > 500 and (z > Y).sum() > 500


def test_least_squares_prox_matches_brute_force():
    rng = np.random.default_rng(3)
    Y = rng.integers(0, 2, N).astype(float)
    m, lam = rng.normal(0, 2, N), rng.normal(0, 1, N)
    beta = rng.uniform(0.05, 5, N)
    z = least_squares_prox(m, Y, lam, beta)

    def objective(zz, idx):
        return 0.5 * (zz - Y[idx, None]) ** 2 + lam[idx, None] * zz + beta[idx, None] * (zz - m[idx, None]) ** 2

    bound = np.abs(m) + np.abs(lam) + 3
    _check_against_brute_force(objective, z, -bound, bound)


def test_loss_targets_and_predictions():
    y = np.array([0, 2, 1, 2])
    ova = LOSSES["ova_hinge"]
    Y = ova.targets(y, 3, np.float64)
    assert Y.shape == (3, 4) and np.array_equal(np.argmax(Y, axis=0), y) and Y.sum() == 4
    assert np.array_equal(ova.predict(Y), y)
    binary = LOSSES["binary_hinge"]
    yb = np.array([1, 0, 1])
    Yb = binary.targets(yb, 2, np.float64)
    assert Yb.shape == (1, 3) and np.array_equal(binary.predict(Yb), yb)
    assert binary.check_classes(3) is not None and binary.check_classes(2) is None


def test_hinge_value():
    z = np.array([[2.0, 0.5, -1.0]])
    Y = np.array([[1.0, 1.0, 0.0]])
    assert LOSSES["ova_hinge"].value(z, Y) == pytest.approx(0 + 0.5 + 0)


# ---- the other activations -----------------------------------------------------------------
from admm_mpi.ops.activations import ACTIVATIONS  # noqa: E402


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "hard_tanh", "sigmoid", "tanh"])
def test_every_activation_z_update_matches_brute_force(name):
    act = ACTIVATIONS[name]
    rng = np.random.default_rng(11)
    a = rng.normal(0, 1.5, N)
    m = rng.normal(0, 3, N)
    gamma = rng.uniform(0.05, 5, N)
    beta = rng.uniform(0.05, 5, N)
    z = act.z_update(a, m, gamma, beta)

    def objective(zz, idx):
        return gamma[idx, None] * (a[idx, None] - act.apply(zz)) ** 2 + beta[idx, None] * (zz - m[idx, None]) ** 2

    bound = np.abs(m) + np.sqrt(gamma / beta) * (np.abs(a) + 1) + 1
    _check_against_brute_force(objective, z, m - bound, m + bound)


def test_smooth_z_update_keeps_float32():
    act = ACTIVATIONS["sigmoid"]
    a, m = np.zeros(5, np.float32), np.linspace(-1, 1, 5, dtype=np.float32)
    assert act.z_update(a, m, np.float32(1), np.float32(1)).dtype == np.float32


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "hard_tanh", "sigmoid", "tanh"])
def test_inverse_box_is_the_preimage_of_the_box(name):
    act = ACTIVATIONS[name]
    rng = np.random.default_rng(4)
    centre = act.apply(rng.normal(0, 2, 2000))  # boxes around attainable values, so never empty
    eps = rng.uniform(0.01, 0.5, 2000)
    lo, hi = act.inverse_box(centre - eps, centre + eps)
    z = np.linspace(-8, 8, 4001)[:, None]
    inside = (act.apply(z) >= centre - eps - 1e-12) & (act.apply(z) <= centre + eps + 1e-12)
    claimed = (z >= lo) & (z <= hi)
    # away from the box edges (grid rounding) the two sets agree
    edge = (np.abs(z - lo) < 1e-2) | (np.abs(z - hi) < 1e-2)
    assert np.array_equal(inside[~edge], claimed[~edge])


# ---- softmax cross-entropy ----------------------------------------------------------------
def test_cross_entropy_prox_matches_scipy_to_1e8():
    import scipy.optimize

    from admm_mpi.ops.losses import cross_entropy_prox, log_sum_exp, softmax

    rng = np.random.default_rng(5)
    K, n = 10, 300
    m = rng.normal(0, 4, (K, n))
    y = rng.integers(0, K, n)
    Y = np.zeros((K, n))
    Y[y, np.arange(n)] = 1
    lam = rng.normal(0, 1, (K, n))
    beta = rng.uniform(0.05, 5, n)
    z = cross_entropy_prox(m, Y, lam, beta)
    for j in range(n):
        def f(v):
            return log_sum_exp(v[:, None])[0] - Y[:, j] @ v + lam[:, j] @ v + beta[j] * np.sum((v - m[:, j]) ** 2)

        def grad(v):
            return softmax(v[:, None])[:, 0] - Y[:, j] + lam[:, j] + 2 * beta[j] * (v - m[:, j])

        def hess(v):
            p = softmax(v[:, None])[:, 0]
            return np.diag(p) - np.outer(p, p) + 2 * beta[j] * np.eye(K)

        # strictly convex: the minimiser is the root of the gradient, which scipy's hybrid
        # Powell solver finds to full precision (its minimisers stop at |grad| ~ 1e-8)
        ref = scipy.optimize.root(grad, m[:, j], jac=hess, method="hybr", tol=1e-13)
        assert np.max(np.abs(grad(ref.x))) < 1e-12 and f(ref.x) <= f(m[:, j])
        np.testing.assert_allclose(z[:, j], ref.x, atol=1e-8, rtol=0)
        assert f(z[:, j]) <= f(ref.x) + 1e-12


def test_cross_entropy_is_stable_for_huge_inputs():
    from admm_mpi.ops.losses import cross_entropy_prox, cross_entropy_value

    m = np.array([[1e4, -1e4], [0.0, 3e3], [-5e3, 0.0]])
    Y = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert np.isfinite(cross_entropy_value(m, Y))
    assert np.all(np.isfinite(cross_entropy_prox(m, Y, np.zeros_like(m), 0.5)))


def test_closed_form_relu_z_update_equals_the_piecewise_one():
    from admm_mpi.ops.activations import RELU_PIECES, piecewise_linear_z_update

    rng = np.random.default_rng(11)
    a, m = rng.normal(0, 2, N), rng.normal(0, 2, N)
    a[:100] = 0.0
    m[100:200] = 0.0
    gamma, beta = rng.uniform(0.05, 5, N), rng.uniform(0.05, 5, N)
    ours = relu_z_update(a, m, gamma, beta)
    reference = piecewise_linear_z_update(a, m, gamma, beta, RELU_PIECES)

    def f(z):
        return gamma * (a - relu(z)) ** 2 + beta * (z - m) ** 2

    assert np.all(np.abs(f(ours) - f(reference)) <= 1e-12 * (1 + f(reference)))
    assert np.quantile(np.abs(ours - reference), 0.999) < 1e-12
    assert relu_z_update(a.astype(np.float32), m.astype(np.float32), 1.0, 1.0).dtype == np.float32


def test_cross_entropy_prox_in_float32_stops_at_float32_precision(monkeypatch):
    """The stopping test scales with the dtype: in float32 the Newton iteration stops after a few
    steps (a fixed 1e-13 never stopped it before max_iter) at the float64 answer to float32 precision."""
    from admm_mpi.ops import losses

    rng = np.random.default_rng(0)
    m = 3 * rng.standard_normal((10, 1350))
    Y = np.eye(10)[:, rng.integers(0, 10, 1350)]
    exact = losses.cross_entropy_prox(m, Y, np.zeros_like(m), 0.1)
    steps = []
    softmax = losses.softmax
    monkeypatch.setattr(losses, "softmax", lambda z: steps.append(1) or softmax(z))
    z32 = losses.cross_entropy_prox(m.astype(np.float32), Y.astype(np.float32), np.zeros((10, 1350), np.float32), 0.1)
    assert z32.dtype == np.float32
    assert len(steps) <= 15, len(steps)
    assert np.abs(z32 - exact).max() <= 1e-4 * np.abs(exact).max()
