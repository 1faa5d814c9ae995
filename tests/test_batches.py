"""Mini-batch mode of the full-batch solvers: what one epoch is, what it stores, how it is chosen."""

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.grid import Grid
from admm_mpi.model import ModelSpec
from admm_mpi.solvers import make_solver
from admm_mpi.solvers.batches import MiniBatchMode, epoch_batches
from admm_mpi.solvers.common import forward_states

SOLVERS = {  # solver: its settings (full-batch defaults) and loss
    "dladmm": ({**dict(nu=0.0, rho=0.1, rho_max=0.1, rho_growth=10.0, rho_patience=3, mu=0.0, w_steps=3)},
               "cross_entropy", "relu"),
    "mdlam": (dict(rho=1e-2, mu=1e-4, eps=1.0, eps_min=1e-3, w_steps=1), "cross_entropy", "relu"),
    "sigmoid_admm": (dict(beta=1.0, mu=1e-4, omega=1.0, rho=0.05), "least_squares", "sigmoid"),
    "pdadmm": (dict(nu=0.5, rho=1.0, mu=0.0, w_steps=2, quantize=0), "cross_entropy", "relu"),
}


def _problem(seed=0, widths=(6, 9, 7, 3), n=50):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((widths[0], n))
    labels = rng.integers(0, widths[-1], n)
    Y = np.eye(widths[-1])[:, labels]
    return X, Y


def _pair(name, n, batch_size, sweeps, widths=(6, 9, 7, 3)):
    params, loss, activation = SOLVERS[name]
    spec = ModelSpec(widths=widths, activation=activation, loss=loss, n_classes=widths[-1])
    full = make_solver(name, spec, Grid.serial(), n, {**params, "batch_size": "full", "batch_sweeps": 1})
    batched = make_solver(name, spec, Grid.serial(), n, {**params, "batch_size": batch_size, "batch_sweeps": sweeps})
    return full, batched


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("sweeps", [1, 3])
def test_one_batch_of_every_column_is_sweeps_full_batch_iterations(name, sweeps):
    """batch_size >= N: one epoch = ``sweeps`` iterations of the full-batch solver from the same start
    (both start from the forward pass of the same weights with zero duals)."""
    X, Y = _problem()
    full, batched = _pair(name, X.shape[1], 64, sweeps)
    assert isinstance(batched, MiniBatchMode) and not isinstance(full, MiniBatchMode)
    state_full = full.init_state(X, Y, np.random.default_rng(4))
    state_batched = batched.init_state(X, Y, np.random.default_rng(4))
    for k in range(1, sweeps + 1):
        full.step(state_full, Y, k)
    batched.step(state_batched, Y, 1)
    for got, expected in zip(state_batched.weights + state_batched.biases, state_full.weights + state_full.biases):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    if sweeps > 1:  # (pdADMM's Jacobi sweep moves no weight in its first sweep from consistent codes)
        start = batched.inner.init_state(X, Y, np.random.default_rng(4))
        assert not np.allclose(state_full.weights[-1], start.weights[-1])


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_each_batch_starts_from_the_forward_pass_of_the_current_weights(name):
    """Two batches: the second one's codes are the forward pass of the weights the first one left."""
    X, Y = _problem(1)
    n = X.shape[1]
    _, batched = _pair(name, n, 30, 2)
    state = batched.init_state(X, Y, np.random.default_rng(0))
    seen = []
    original = batched.inner.step

    def spy(state_, Yb, iteration):
        seen.append((None, [w.copy() for w in state_.weights], [b.copy() for b in state_.biases],
                     [z.copy() for z in state_.z], (state_.p if name == "pdadmm" else state_.a)[0].copy()))
        return original(state_, Yb, iteration)

    batched.inner.step = spy
    batched.step(state, Y, 1)
    assert len(seen) == 4  # 2 batches x 2 sweeps
    for _, weights, biases, z, Xb in (seen[0], seen[2]):  # the first sweep of each batch
        a_ref, z_ref = forward_states(weights, biases, Xb, batched.spec.h.apply)
        for got, expected in zip(z, z_ref):
            np.testing.assert_array_equal(got, expected)
    # the second batch started from the weights the first one produced, on the other columns
    assert not np.array_equal(seen[2][1][0], seen[0][1][0])
    cols = [sorted(local) for local, _ in epoch_batches(state.shuffle_seed, 1, n, 30, 0, n)]
    np.testing.assert_array_equal(seen[0][4], X[:, cols[0]])
    np.testing.assert_array_equal(seen[2][4], X[:, cols[1]])
    # nothing per-sample is kept after the epoch
    assert all(getattr(state.inner, f) is None for f in type(state.inner).sample_fields) and state.sample_fields == ()


def test_the_mode_composes_the_inner_state_and_checkpoints_its_global_fields_only():
    """The inner solver's state object is held, not modified: its per-sample fields stay per-sample
    in its own class, and the checkpoint's entries are its global fields plus the epoch's."""
    from admm_mpi.checkpoint import field_owners

    X, Y = _problem(1)
    _, batched = _pair("dladmm", X.shape[1], 30, 1)
    state = batched.init_state(X, Y, np.random.default_rng(0))
    batched.step(state, Y, 1)
    inner = state.inner
    assert type(inner).sample_fields and inner.sample_fields == type(inner).sample_fields
    assert not hasattr(inner, "shuffle_seed") and not hasattr(inner, "transient_fields")
    global_entries, sample_entries = field_owners(state)
    names = [name for name, _ in global_entries]
    assert sample_entries == [] and not set(names) & set(inner.sample_fields)
    assert {"weights", "biases", "shuffle_seed", "batches_done", "epoch_loss"} <= set(names)
    assert [owner for name, owner in global_entries if name == "weights"] == [inner]
    assert state.weights is inner.weights  # reads pass through to the inner state


def test_epoch_metrics_are_the_batch_losses_at_the_forward_pass():
    X, Y = _problem(2)
    n = X.shape[1]
    _, batched = _pair("dladmm", n, 20, 1)
    state = batched.init_state(X, Y, np.random.default_rng(0))
    batched.step(state, Y, 1)
    first = batched.local_metrics(state, Y)
    loss = batched.spec.loss_fn.value
    # recompute: each batch's loss at the forward pass of the weights it started from
    check = batched.inner.init_state(X, Y, np.random.default_rng(0))
    total = 0.0
    for local, _ in epoch_batches(state.shuffle_seed, 1, n, 20, 0, n):
        Xb, Yb = X[:, local], Y[:, local]
        batched.inner.fresh_codes(check, Xb)
        total += loss(check.z[-1], Yb)
        batched.inner.n_total = len(local)
        batched.inner.step(check, Yb, 1)
    assert first["objective"] == pytest.approx(total, rel=1e-12)
    assert first["residual_sq"] > 0


@pytest.mark.parametrize("solver", ["taylor"])
def test_solvers_without_a_mini_batch_mode_refuse_batch_settings(solver):
    from admm_mpi.config import validate
    from admm_mpi.errors import InputError

    with pytest.raises(InputError, match="has no setting batch_size"):
        validate(TrainConfig.from_settings(solver=solver, batch_size=100))


@pytest.mark.parametrize("cli, message", [({"solver": "dladmm", "batch_size": -1}, "batch_size must be a positive integer"),
                                          ({"solver": "minibatch_am", "batch_size": 0}, "batch_size must be a positive"),
                                          ({"solver": "mdlam", "batch_sweeps": 0}, "batch_sweeps must be at least 1")])
def test_bad_batch_settings_name_the_setting(cli, message):
    from admm_mpi.config import validate
    from admm_mpi.errors import InputError

    with pytest.raises(InputError, match=message):
        validate(TrainConfig.from_settings(**cli))


@pytest.mark.parametrize("name", ["mdlam", "pdadmm"])
def test_one_block_per_sweep_solvers_reach_the_first_layer_in_sweep_2L(name):
    """mDLAM (forward sweep) and pdADMM (Jacobi) move the output's target back one block per
    iteration: from forward-pass codes the first of 3 layers' weights stay put (to rounding) for
    5 sweeps and move in the 6th — why their recipes take more than 2L sweeps per batch."""
    X, Y = _problem(3)
    params, loss, activation = SOLVERS[name]
    spec = ModelSpec(widths=(6, 9, 7, 3), activation=activation, loss=loss, n_classes=3)
    moved = {}
    for sweeps in (5, 6):
        solver = make_solver(name, spec, Grid.serial(), X.shape[1],
                             {**params, "mu": 0.0, "batch_size": 64, "batch_sweeps": sweeps})
        state = solver.init_state(X, Y, np.random.default_rng(0))
        W0 = state.weights[0].copy()
        solver.step(state, Y, 1)
        moved[sweeps] = np.linalg.norm(state.weights[0] - W0) / np.linalg.norm(W0)
        assert np.linalg.norm(state.weights[-1] - solver.inner.init_state(X, Y, np.random.default_rng(0)).weights[-1]) > 0
    assert moved[5] < 1e-12 and moved[6] > 1e-4, moved


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_each_batch_is_solved_as_a_problem_of_its_own_columns_and_the_inner_solver_is_untouched(name, monkeypatch):
    """The per-sample scalings (rho * n, ...) follow the batch: the inner solver steps as a solver of
    n_batch columns, a copy; the inner solver itself keeps the data set's column count."""
    X, Y = _problem(n=50)
    _, batched = _pair(name, X.shape[1], 20, 1)
    seen = []
    original = type(batched.inner).step
    monkeypatch.setattr(type(batched.inner), "step",
                        lambda self, *args: seen.append((self is batched.inner, self.n_total)) or original(self, *args))
    state = batched.init_state(X, Y, np.random.default_rng(0))
    batched.step(state, Y, 1)
    assert seen == [(False, 20), (False, 20), (False, 10)]
    assert batched.inner.n_total == 50
