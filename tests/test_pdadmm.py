"""pdADMM's own sub-problems against brute force: the proximal z-update and the quantiser."""

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.grid import Grid
from admm_mpi.ops import quantize as quant
from admm_mpi.ops.activations import ACTIVATIONS, proximal_z_update, relu
from admm_mpi.train import train

from tests.helpers import NO_VALIDATION, brute_force_min

N = 10_000


def _pdadmm_z_objective(h, a, m, z_old, w):
    def objective(zz, idx):
        return 0.5 * w[idx, None] * ((zz - m[idx, None]) ** 2 + (a[idx, None] - h(zz)) ** 2
                                     + (zz - z_old[idx, None]) ** 2)
    return objective


def _random_inputs(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, N), rng.normal(0, 2, N), rng.normal(0, 2, N), rng.uniform(0.05, 5, N)


def test_relu_proximal_z_update_picks_the_branch_of_the_full_objective():
    a, m, z_old, w = _random_inputs(3)
    z = proximal_z_update(ACTIVATIONS["relu"], a, m, z_old, w)
    objective = _pdadmm_z_objective(relu, a, m, z_old, w)
    bound = np.abs(a) + np.abs(m) + np.abs(z_old) + 1
    z_brute = brute_force_min(objective, -bound, bound)
    idx = np.arange(N)
    f_ours, f_brute = objective(z[:, None], idx)[:, 0], objective(z_brute[:, None], idx)[:, 0]
    assert np.all(f_ours <= f_brute + 1e-9 * (1 + np.abs(f_brute)))
    assert np.quantile(np.abs(z - z_brute), 0.999) < 1e-5
    assert np.sum(z > 0) > 1000 and np.sum(z <= 0) > 1000  # both branches exercised

    # The published rule compares the branches without the proximal term: it is measurably
    # worse on the objective it is meant to minimise, so this test can tell the two apart.
    z_minus = np.minimum(0.5 * (m + z_old), 0)
    z_plus = np.maximum((m + z_old + a) / 3, 0)
    without_prox = lambda zz: (zz - m) ** 2 + (a - relu(zz)) ** 2  # noqa: E731
    published = np.where(without_prox(z_plus) <= without_prox(z_minus), z_plus, z_minus)
    f_published = objective(published[:, None], idx)[:, 0]
    wrong = np.mean(f_published > f_ours + 1e-9 * (1 + np.abs(f_ours)))
    assert wrong > 0.02, wrong


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_proximal_z_update_matches_brute_force(name):
    h = ACTIVATIONS[name]
    a, m, z_old, w = _random_inputs(4)
    a = np.clip(a, -0.99, 1.5) if name in ("sigmoid", "tanh") else a
    z = proximal_z_update(h, a, m, z_old, w)
    objective = _pdadmm_z_objective(h.apply, a, m, z_old, w)
    bound = np.abs(a) + np.abs(m) + np.abs(z_old) + 2
    z_brute = brute_force_min(objective, -bound, bound)
    idx = np.arange(N)
    f_ours, f_brute = objective(z[:, None], idx)[:, 0], objective(z_brute[:, None], idx)[:, 0]
    assert np.all(f_ours <= f_brute + 1e-8 * (1 + np.abs(f_brute)))


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_quantiser_rounds_to_the_nearest_level(bits):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((40, 250)) * 3 + 1
    levels = quant.uniform_levels(x.min(), x.max(), bits, x.dtype)
    codes = quant.encode(x, levels, bits)
    assert codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert codes.min() == 0 and codes.max() == 2**bits - 1  # the grid spans the range exactly
    x_hat = quant.decode(codes, levels, x.dtype)
    # brute force: distance to every level (in chunks for 16 bits)
    all_levels = levels[0] + np.arange(2**bits) * levels[1]
    nearest = np.empty(x.size)
    for s in range(0, x.size, 500):
        chunk = x.ravel()[s:s + 500]
        nearest[s:s + 500] = np.min(np.abs(chunk[:, None] - all_levels[None, :]), axis=1)
    error = np.abs(x_hat - x).ravel()
    assert np.all(error <= nearest + 1e-12 * (1 + np.abs(x).ravel()))
    assert np.max(error) <= 0.5 * levels[1] * (1 + 1e-9)


def test_quantiser_edge_cases():
    x = np.full((3, 4), 2.5, dtype=np.float32)  # a constant tensor decodes exactly
    levels = quant.uniform_levels(x.min(), x.max(), 8, x.dtype)
    assert np.array_equal(quant.decode(quant.encode(x, levels, 8), levels, x.dtype), x)
    levels = quant.uniform_levels(0.0, 1.0, 8, np.dtype(np.float64))  # outside the range: clipped
    codes = quant.encode(np.array([-5.0, 0.0, 1.0, 7.0]), levels, 8)
    assert codes.tolist() == [0, 0, 255, 255]
    assert quant.decode(codes, levels, np.float32).dtype == np.float32
    with pytest.raises(ValueError):
        quant.code_dtype(17)


def _digits_config(**kw):
    base = dict(solver="pdadmm", hidden=(40, 40, 40), iters=6, dtype="float64", progress=False, **NO_VALIDATION)
    base.update(kw)
    return TrainConfig.from_settings(**base)


def test_pdadmm_serial_updates_keep_their_invariants():
    """q then u, in that order, leave ``u_l = nu (q_l - h(z_l))`` after every iteration.

    (Substitute ``u⁺ = u + rho (p - q⁺)`` into ``(rho + nu) q⁺ = rho p + u + nu h(z)``.) A q-update
    that used the old p, the new u, or skipped the dual would break it.
    """
    for nu, rho in ((1.0, 1.0), (0.5, 3.0)):
        summary = train(_digits_config(nu=nu, rho=rho), Grid.serial(), out=False)
        state, spec = summary.state, summary.spec
        hist = summary.objective_history
        assert hist[-1] < hist[0]
        for l in range(spec.n_layers - 1):
            expected = nu * (state.q[l] - relu(state.z[l]))
            assert np.allclose(state.u[l], expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
        assert summary.model[0][0].shape == (40, 64)


def test_quantised_boundaries_lie_on_their_grid():
    summary = train(_digits_config(quantize=4), Grid.serial(), out=False)
    state = summary.state
    for x in state.p[1:] + state.q:
        levels = np.unique(x)
        assert levels.size <= 2**4
        steps = np.diff(levels) / np.min(np.diff(levels))
        assert np.allclose(steps, np.round(steps), atol=1e-6)
