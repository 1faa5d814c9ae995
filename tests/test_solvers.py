"""Solver-specific properties: mDLAM's box and momentum, sigmoid-ADMM's stability."""

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.data import write_dataset
from admm_mpi.grid import Grid
from admm_mpi.solvers.mdlam import _momentum
from admm_mpi.train import train

from tests.helpers import NO_VALIDATION, blobs


@pytest.fixture(scope="module")
def blob_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "blobs.h5"
    X, y = blobs(240, 8, 3, seed=7, spread=1.5)
    Xt, yt = blobs(60, 8, 3, seed=8, spread=1.5)
    write_dataset(str(path), X, y, Xt, yt, name="blobs", n_classes=3)
    return str(path)


def test_mdlam_momentum_really_extrapolates():
    t, omega = _momentum(1.0)
    assert omega == 0.0                       # first step from a restart: no extrapolation
    t, omega = _momentum(t)
    assert omega > 0.2                        # then it extrapolates, more and more
    t2, omega2 = _momentum(t)
    assert omega2 > omega


@pytest.mark.parametrize("activation", ["relu", "hard_tanh", "sigmoid"])
def test_mdlam_keeps_a_in_the_box_and_advances_momentum(blob_file, activation):
    config = TrainConfig.from_settings(data=blob_file, solver="mdlam", activation=activation, hidden=(16, 16), iters=12,
                         progress=False, eps=1.0, eps_min=1e-3, **NO_VALIDATION)
    out = train(config, Grid.serial(), out=False)
    state, h = out.state, out.spec.h.apply
    for l in range(1, len(state.a)):
        gap = np.abs(state.a[l] - h(state.z[l - 1]))
        # the box of the last a-step was twice the final eps (eps halves after the sweep)
        assert gap.max() <= 2 * state.eps + 1e-12
    assert max(state.t_a[1:]) > 1.0 and max(state.t_W) > 1.0   # momentum in use
    assert out.summary["train_accuracy"] > 0.8


@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_sigmoid_admm_is_stable_across_penalties_and_initialisations(blob_file, beta, seed):
    """Zeng et al.'s claim: stable with respect to the penalty and the initialisation."""
    config = TrainConfig.from_settings(data=blob_file, solver="sigmoid_admm", hidden=(20, 20), iters=30, progress=False,
                         beta=beta, seed=seed, **NO_VALIDATION)
    out = train(config, Grid.serial(), out=False)
    assert np.isfinite(out.summary["objective"])
    assert out.summary["train_accuracy"] >= 0.9, (beta, seed, out.summary["train_accuracy"])


def test_sigmoid_admm_anchored_output_solve_is_the_minimiser():
    """With ``rho`` the output block minimises (1/2)||T - W a - b||² + (mu/2beta)||W, b||²
    + (rho n/2)||[W b] - [W b]_old||² (T = V_L - Λ_L/beta): zero gradient, checked by hand."""
    from admm_mpi.model import ModelSpec
    from admm_mpi.solvers.sigmoid_admm import SigmoidADMM

    rng = np.random.default_rng(3)
    spec = ModelSpec(widths=(5, 6, 3), activation="tanh", loss="cross_entropy", n_classes=3)
    X = rng.normal(size=(5, 40))
    Y = spec.loss_fn.targets(rng.integers(0, 3, 40), 3, np.float64)
    solver = SigmoidADMM(spec, Grid.serial(), 40, beta=2.0, mu=1e-3, omega=1.0, rho=0.5)
    state = solver.init_state(X, Y, rng)
    state.lam[-1] = rng.normal(size=state.lam[-1].shape)
    W_old, b_old = state.weights[-1].copy(), state.biases[-1].copy()
    solver._update_output(state, Y)
    W, b, a = state.weights[-1], state.biases[-1], state.a[-1]
    T = state.z[-1] - state.lam[-1] / 2.0
    r = T - W @ a - b[:, None]
    anchor = 0.5 * 40
    grad_W = -r @ a.T + (1e-3 / 2.0) * W + anchor * (W - W_old)
    grad_b = -r.sum(axis=1) + (1e-3 / 2.0) * b + anchor * (b - b_old)
    np.testing.assert_allclose(grad_W, 0, atol=1e-10)
    np.testing.assert_allclose(grad_b, 0, atol=1e-10)
    assert np.abs(W - W_old).max() > 1e-3  # it did move


def test_mdlam_float32_codes_that_fit_exactly_do_not_freeze_the_a_step():
    """Fresh codes fit ``z = W a + b`` to float32 rounding; a search on that rounding used to drive
    the a-step's τ up by 2**60 and freeze the first hidden layer for the rest of the run."""
    from admm_mpi.model import ModelSpec
    from admm_mpi.solvers.mdlam import MDLAM

    rng = np.random.default_rng(4)
    spec = ModelSpec(widths=(30, 40, 40, 4), activation="relu", loss="cross_entropy", n_classes=4)
    X = rng.random((30, 200)).astype(np.float32)
    Y = spec.loss_fn.targets(rng.integers(0, 4, 200), 4, np.float32)
    solver = MDLAM(spec, Grid.serial(), 200, rho=1e-3, mu=1e-6, eps=1.0, eps_min=1e-3, w_steps=1)
    state = solver.init_state(X, Y, rng)
    W0 = state.weights[0].copy()
    for k in range(8):
        solver.step(state, Y, k + 1)
    assert all(t is None or t < 1e6 for t in state.tau_a), state.tau_a
    assert np.linalg.norm(state.weights[0] - W0) > 1e-3 * np.linalg.norm(W0)  # the first layer trains


@pytest.mark.parametrize("layer", [0, 1])
def test_sigmoid_admm_weight_step_is_the_prox_linear_step_it_accepts(layer):
    """The hidden W step from the closed-form search equals, by brute force on the data, the
    step ``W - (mu W + G)/(ω+mu)``, ``b - g_b/ω`` with the gradient G of the layer's terms
    (central differences), at the first ω of the doubling search whose step passes the
    sufficient-decrease test evaluated on the data."""
    from admm_mpi.model import ModelSpec
    from admm_mpi.solvers.sigmoid_admm import SigmoidADMM

    rng = np.random.default_rng(11 + layer)
    spec = ModelSpec(widths=(4, 5, 5, 3), activation="tanh", loss="cross_entropy", n_classes=3)
    X = rng.normal(size=(4, 30))
    Y = spec.loss_fn.targets(rng.integers(0, 3, 30), 3, np.float64)
    # a small first ω (omega * beta * n = 0.45): the search rejects trials before it accepts one
    solver = SigmoidADMM(spec, Grid.serial(), 30, beta=1.5, mu=2.0, omega=0.01, rho=0.0)
    state = solver.init_state(X, Y, rng)
    for l in range(3):  # multipliers and targets away from the forward pass: a non-trivial step
        state.lam[l] = rng.normal(size=state.lam[l].shape)
    for l in (1, 2):
        state.a[l] = state.a[l] + 0.1 * rng.normal(size=state.a[l].shape)
    W, b, mu = state.weights[layer].copy(), state.biases[layer].copy(), 2.0

    def terms(Wx, bx):
        g, _ = solver._g(state, layer, W=Wx, b=bx)
        return solver._layer_terms(state, layer, g)[0]

    def phi(Wx, bx):
        return terms(Wx, bx) + 0.5 * mu * np.sum(Wx * Wx)

    h = 1e-6
    G, g_b = np.zeros_like(W), np.zeros_like(b)
    for idx in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[idx] = h
        G[idx] = (terms(W + E, b) - terms(W - E, b)) / (2 * h)
    for i in range(b.size):
        e = np.zeros_like(b)
        e[i] = h
        g_b[i] = (terms(W, b + e) - terms(W, b - e)) / (2 * h)
    def step(omega):
        return (omega * W - G) / (omega + mu), b - g_b / omega

    def accepted(omega):  # the sufficient-decrease test, by brute force
        W_t, b_t = step(omega)
        dW, db = W_t - W, b_t - b
        bound = phi(W, b) + np.sum(G * dW) + np.sum(g_b * db) + 0.5 * mu * (np.sum(W_t**2) - np.sum(W**2)) \
            + 0.5 * omega * (np.sum(dW**2) + np.sum(db**2))
        return phi(W_t, b_t) <= bound + 1e-9 * abs(phi(W, b))

    first = 0.01 * 1.5 * 30
    trials = [first * 2.0**k for k in range(40)]
    expected = next(t for t in trials if accepted(t))
    assert expected > first  # the search had to reject at least one trial
    solver._update_W(state, layer)
    omega = state.tau_W[layer]
    assert omega == pytest.approx(expected, rel=1e-12)
    W_new, b_new = step(omega)
    np.testing.assert_allclose(state.weights[layer], W_new, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(state.biases[layer], b_new, rtol=1e-6, atol=1e-8)
    assert not np.allclose(state.weights[layer], W)  # it moved
    np.testing.assert_allclose(state.z[layer], W_new @ state.a[layer] + b_new[:, None], rtol=1e-6, atol=1e-8)
