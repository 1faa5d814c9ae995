"""Mini-batch alternating minimisation: its weight step against brute force, its batches, its fixed point."""

import numpy as np
import pytest

from admm_mpi.grid import Grid
from admm_mpi.model import ModelSpec
from admm_mpi.ops.activations import relu_z_update
from admm_mpi.ops.linalg import local_normal_equations, solve_normal_equations
from admm_mpi.solvers.minibatch_am import MiniBatchAM


def _spec(widths, loss="least_squares"):
    return ModelSpec(widths=widths, activation="relu", loss=loss, n_classes=widths[-1])


class _Ranks:
    """Stand-in for rank ``rank`` of ``size``: only the block layout is used by ``batches``."""

    def __init__(self, size, rank):
        self.size, self.rank = size, rank

    def block_range(self, n):
        from admm_mpi.partition import block_range

        return block_range(n, self.size, self.rank)


@pytest.mark.parametrize("seed", range(5))
def test_anchored_weight_solve_is_the_least_squares_minimiser(seed):
    """``||z - W a - b||² + r ||[W b]||² + q ||[W b] - anchor||²`` against lstsq of the stacked system."""
    rng = np.random.default_rng(seed)
    n_in, n_out, n = rng.integers(2, 9), rng.integers(1, 6), rng.integers(3, 40)
    a, z = rng.standard_normal((n_in, n)), rng.standard_normal((n_out, n))
    anchor = rng.standard_normal((n_out, n_in + 1))
    ridge, weight = rng.uniform(0, 2), rng.uniform(0, 5)
    got = solve_normal_equations(local_normal_equations(a, z), ridge, anchor, weight)
    k = n_in + 1
    A1 = np.vstack([a, np.ones((1, n))])
    lhs = np.vstack([A1.T, np.sqrt(ridge) * np.eye(k), np.sqrt(weight) * np.eye(k)])
    rhs = np.vstack([z.T, np.zeros((k, n_out)), np.sqrt(weight) * anchor.T])
    expected = np.linalg.lstsq(lhs, rhs, rcond=None)[0].T
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("n, batch", [(203, 29), (10, 3), (7, 100)])
def test_each_epoch_visits_every_global_column_once_on_any_rank_count(size, n, batch):
    spec = _spec((3, 4, 2))
    solvers = [MiniBatchAM(spec, _Ranks(size, r), n, beta=1.0, gamma=1.0, rho=1.0, ridge=0.0, average=1.0,
                           batch_size=batch)
               for r in range(size)]
    state = solvers[0].init_state(np.zeros((3, 1)), None, np.random.default_rng(0))
    orders = []
    for epoch in (1, 2):
        per_rank = [list(s.batches(state, epoch)) for s in solvers]
        sizes = [[n_batch for _, n_batch in batches] for batches in per_rank]
        assert all(s == sizes[0] for s in sizes) and sum(sizes[0]) == n
        assert max(sizes[0]) == min(batch, n)
        seen = []
        for k in range(len(sizes[0])):  # batch k: the ranks' columns, as global indices
            cols = [s.start + local for s, batches in zip(solvers, per_rank) for local in batches[k][0]]
            assert len(cols) == sizes[0][k]
            seen += cols
        assert sorted(seen) == list(range(n))
        orders.append(seen)
    if n > batch:
        assert orders[0] != orders[1]  # a fresh permutation every epoch


def test_one_epoch_matches_the_sub_problems_solved_by_hand():
    """A single full batch: forward codes, loss prox, Taylor's a- and z-updates, anchored solves,
    each written out densely (the a-update without Woodbury, the W step by lstsq)."""
    rng = np.random.default_rng(3)
    widths, n = (5, 7, 6, 3), 40
    X, Y = rng.standard_normal((5, n)), rng.standard_normal((3, n))
    beta, gamma, rho, ridge = 0.7, 1.3, 0.05, 0.01
    solver = MiniBatchAM(_spec(widths), Grid.serial(), n, beta=beta, gamma=gamma, rho=rho, ridge=ridge,
                         average=1.0, batch_size=n)
    state = solver.init_state(X, Y, np.random.default_rng(0))
    W0, b0 = [w.copy() for w in state.weights], [b.copy() for b in state.biases]
    solver.step(state, Y, 1)

    relu = lambda v: np.maximum(v, 0)
    a = [X, relu(W0[0] @ X + b0[0][:, None])]
    a.append(relu(W0[1] @ a[1] + b0[1][:, None]))
    z = [W0[l] @ a[l] + b0[l][:, None] for l in range(3)]
    targets = [None, None, (Y + 2 * beta * z[2]) / (1 + 2 * beta)]  # 0.5||z - Y||² + beta||z - z_L||²
    for l in (2, 1):
        M = beta * W0[l].T @ W0[l] + gamma * np.eye(W0[l].shape[1])
        a_t = np.linalg.solve(M, beta * W0[l].T @ (targets[l] - b0[l][:, None]) + gamma * a[l])
        targets[l - 1] = relu_z_update(a_t, z[l - 1], gamma, beta)  # brute-force tested in test_ops
    for l in range(3):
        k = a[l].shape[0] + 1
        A1 = np.vstack([a[l], np.ones((1, n))])
        anchor = np.column_stack([W0[l], b0[l]])
        lhs = np.vstack([A1.T, np.sqrt(ridge * n) * np.eye(k), np.sqrt(rho * n) * np.eye(k)])
        rhs = np.vstack([targets[l].T, np.zeros((k, widths[l + 1])), np.sqrt(rho * n) * anchor.T])
        Wb = np.linalg.lstsq(lhs, rhs, rcond=None)[0].T
        np.testing.assert_allclose(state.weights[l], Wb[:, :-1], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(state.biases[l], Wb[:, -1], rtol=1e-9, atol=1e-12)


def test_weights_stay_put_when_the_forward_pass_already_fits():
    """No relaxation gap: targets equal to the forward pass leave the weights where they are."""
    rng = np.random.default_rng(1)
    widths, n = (4, 6, 5, 2), 30
    X = rng.standard_normal((4, n))
    solver = MiniBatchAM(_spec(widths), Grid.serial(), n, beta=0.5, gamma=2.0, rho=0.1, ridge=0.0, average=1.0,
                         batch_size=7)
    state = solver.init_state(X, None, np.random.default_rng(0))
    W0 = [w.copy() for w in state.weights + state.biases]
    a = X
    for l, (W, b) in enumerate(zip(state.weights, state.biases)):
        out = W @ a + b[:, None]
        a = np.maximum(out, 0)
    Y = out  # least-squares targets the network already produces
    solver.step(state, Y, 1)
    for got, before in zip(state.weights + state.biases, W0):
        np.testing.assert_allclose(got, before, rtol=1e-9, atol=1e-12)
    assert state.epoch_displacement == pytest.approx(0.0, abs=1e-20)


def test_step_decay_grows_rho_batch_by_batch_and_a_resumed_epoch_continues_it(monkeypatch):
    """Batch ``k`` of ``K`` in epoch ``e`` solves with ``rho (1 + step_decay (e - 1 + k / K))``, also when
    the epoch resumes after ``k`` batches (a checkpoint inside it); 0 keeps ``rho`` constant."""
    from admm_mpi.solvers import minibatch_am

    seen, solve = [], minibatch_am.transpose_reduce_weights

    def recording(grid, a, z, ridge, anchor=None, anchor_weight=0.0, **kw):
        seen.append(anchor_weight / kw["n_columns"])
        return solve(grid, a, z, ridge, anchor=anchor, anchor_weight=anchor_weight, **kw)

    monkeypatch.setattr(minibatch_am, "transpose_reduce_weights", recording)
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((4, 30)), rng.standard_normal((3, 30))
    for decay in (0.0, 0.5):
        solver = MiniBatchAM(_spec((4, 6, 3)), Grid.serial(), 30, beta=0.5, gamma=1.0, rho=0.1, ridge=0.01,
                             average=1.0, batch_size=6, step_decay=decay)  # 5 batches per epoch, 2 layers
        state = solver.init_state(X, Y, np.random.default_rng(0))
        seen.clear()
        solver.step(state, Y, 1)
        state.batches_done = 3  # epoch 2 resumed after 3 of its 5 batches
        solver.step(state, Y, 2)
        expected = [0.1 * (1 + decay * t) for t in (0, 0.2, 0.4, 0.6, 0.8, 1.6, 1.8)]
        np.testing.assert_allclose(seen, np.repeat(expected, 2), rtol=1e-15)


def _averaging_solver(average, n=30, batch=6, seed=2):
    rng = np.random.default_rng(seed)
    widths = (4, 6, 3)
    X, Y = rng.standard_normal((4, n)), rng.standard_normal((3, n))
    solver = MiniBatchAM(_spec(widths), Grid.serial(), n, beta=0.5, gamma=1.0, rho=0.1, ridge=0.01,
                         average=average, batch_size=batch)
    return solver, solver.init_state(X, Y, np.random.default_rng(0)), Y


@pytest.mark.parametrize("average", [0.4, 1.0, 2.5])
def test_the_evaluated_network_is_the_mean_then_the_moving_average_of_the_batch_iterates(average):
    """Against the closed form: for ``H = max(1, average * batches per epoch)`` batches, the mean of
    the first ``H`` iterates, then ``(1 - 1/H)^(t-H) mean_H + sum_j (1/H) (1 - 1/H)^(t-j) x_j``."""
    solver, state, Y = _averaging_solver(average)
    iterates = []  # every batch's weights, recorded by wrapping the fold

    def record(state, horizon, fold=solver.fold_into_average):
        iterates.append([x.copy() for x in state.weights + state.biases])
        fold(state, horizon)

    solver.fold_into_average = record
    for epoch in (1, 2, 3):
        solver.step(state, Y, epoch)
    t, horizon = len(iterates), max(1.0, average * 5)  # 5 batches of 6 columns per epoch
    assert t == 15 and state.averaged_batches == 15
    h = int(horizon) if horizon == int(horizon) else None
    for k in range(len(iterates[0])):
        xs = np.array([it[k] for it in iterates])
        if h is None:  # a fractional horizon: the recursion with weight 1/min(t, H), unrolled
            expected = xs[0]
            for j in range(1, t):
                w = 1 / min(j + 1, horizon)
                expected = (1 - w) * expected + w * xs[j]
        else:
            d = 1 - 1 / h
            expected = d ** (t - h) * xs[:h].mean(axis=0) + sum((1 / h) * d ** (t - 1 - j) * xs[j]
                                                                   for j in range(h, t))
        got = (solver.evaluated(state).weights + solver.evaluated(state).biases)[k]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
        assert not np.allclose(got, xs[-1])  # the average is not the last iterate


def test_average_0_evaluates_the_last_iterate_and_averaging_leaves_the_iterates_alone():
    plain, state0, Y = _averaging_solver(0.0)
    averaged, state1, _ = _averaging_solver(1.0)
    for epoch in (1, 2):
        plain.step(state0, Y, epoch)
        averaged.step(state1, Y, epoch)
    assert plain.evaluated(state0) is state0 and state0.average_weights is None
    for x, y in zip(state0.weights + state0.biases, state1.weights + state1.biases):
        np.testing.assert_array_equal(x, y)  # the same iterates: the average is only looked at


def test_the_loop_scores_selects_and_saves_the_average(tmp_path):
    """Through ``train``: the kept last epoch's model is the solver's average, not the last iterate."""
    from admm_mpi.config import TrainConfig
    from admm_mpi.data import write_dataset
    from admm_mpi.train import train
    from tests.helpers import blobs

    X, y = blobs(300, 5, 3, seed=4)
    path = str(tmp_path / "blobs.h5")
    write_dataset(path, X, y, None, None, name="blobs", n_classes=3)
    config = TrainConfig.from_settings(data=path, hidden=(8,), iters=3, batch_size=50, keep="last",
                                       early_stopping=False, dtype="float64", progress=False)
    result = train(config, Grid.serial(), out=False)
    state = result.state
    for got, average, last in zip(result.model[0], state.average_weights, state.weights):
        np.testing.assert_array_equal(got, average)
        assert not np.array_equal(got, last)
    assert result.summary["iterations"] == result.summary["kept_iteration"] == 3


# ---- the inexact (CG) and memory-smoothed weight steps ----------------------------------------

STEPS = {"exact": {}, "cg": dict(weight_solver="cg", cg_iters=3), "memory": dict(memory=0.7),
         "memory-displacements": dict(memory=0.7, memory_form="displacements"),
         "cg-memory": dict(weight_solver="cg", cg_iters=2, memory=0.5)}


def _stepping_solver(grid, n, step, widths=(6, 40, 3), batch=20, **extra):
    spec = _spec(widths, loss="cross_entropy")
    return MiniBatchAM(spec, grid, n, beta=0.5, gamma=1.0, rho=0.05, ridge=1e-3, average=0.0, batch_size=batch,
                       **STEPS.get(step, {}), **extra)


def _problem(n, widths=(6, 40, 3), seed=8):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((widths[0], n))
    Y = np.eye(widths[-1])[:, rng.integers(0, widths[-1], n)]
    return X, Y


def test_cg_with_enough_iterations_is_the_exact_step_and_few_iterations_are_not():
    """Through whole epochs of the solver (targets, anchors, per-sample scalings): CG with more
    iterations than any layer's order gives the exact step's weights; 1 iteration does not."""
    n, widths = 60, (4, 6, 3)
    X, Y = _problem(n, widths)
    runs = {}
    for name, extra in {"exact": {}, "cg-15": dict(weight_solver="cg", cg_iters=15),
                        "cg-1": dict(weight_solver="cg", cg_iters=1)}.items():
        solver = _stepping_solver(Grid.serial(), n, None, widths, batch=20, **extra)
        state = solver.init_state(X, Y, np.random.default_rng(0))
        for epoch in (1, 2):
            solver.step(state, Y, epoch)
        runs[name] = state.weights + state.biases
    for got, exact, rough in zip(runs["cg-15"], runs["exact"], runs["cg-1"]):
        np.testing.assert_allclose(got, exact, rtol=1e-9, atol=1e-11)
    assert max(np.abs(r - e).max() for r, e in zip(runs["cg-1"], runs["exact"])) > 1e-3


@pytest.mark.parametrize("form", ["targets", "displacements"])
def test_memory_smooths_the_batches_statistics_and_its_first_step_is_the_plain_one(monkeypatch, form):
    """The solver's running statistics after t batches are ``Σ_j (1 - m) m^(t-j) S_j / n_j`` of the
    batches' summed statistics ``S_j`` (recorded as they are reduced), and the first batch, divided
    by its total weight ``1 - m``, takes the same step as ``memory = 0``."""
    from admm_mpi.solvers import minibatch_am

    recorded, summed = [], minibatch_am.summed_normal_equations

    def recording(grid, a, z):
        stats = summed(grid, a, z)
        recorded.append((stats.copy(), a.shape[1]))
        return stats

    monkeypatch.setattr(minibatch_am, "summed_normal_equations", recording)
    n, memory = 50, 0.6
    X, Y = _problem(n)
    solver = _stepping_solver(Grid.serial(), n, None, batch=15, memory=memory, memory_form=form)  # 4 batches
    state = solver.init_state(X, Y, np.random.default_rng(0))
    solver.step(state, Y, 1)
    assert state.memory_batches == 4 and len(recorded) == 4 * 2
    for l in range(2):
        layer = recorded[l::2]
        expected = sum((1 - memory) * memory ** (3 - j) * S / n_j for j, (S, n_j) in enumerate(layer))
        np.testing.assert_allclose(state.memory_statistics[l], expected, rtol=1e-12, atol=1e-15)
    first = []
    for extra in (dict(memory=memory, memory_form=form), {}):
        solver = _stepping_solver(Grid.serial(), n, None, batch=n, **extra)  # one batch: one step
        state = solver.init_state(X, Y, np.random.default_rng(0))
        solver.step(state, Y, 1)
        first.append(state.weights + state.biases)
    for got, plain in zip(*first):
        np.testing.assert_allclose(got, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=120)
@pytest.mark.parametrize("step", list(STEPS))
def test_each_weight_step_distributed_equals_serial_on_uneven_shards(comm, step):
    """Two epochs of 103 columns in batches of 20 (an uneven split over 2, 3, 4 ranks; the output
    layer's CG matrix-free, the hidden one's on the Gram): every rank's weights equal the serial
    run's to 1e-10 (float64) and are the same bytes on every rank."""
    from admm_mpi.ops.linalg import cg_matrix_free_cheaper

    assert cg_matrix_free_cheaper(41, 20, 3, 3) and not cg_matrix_free_cheaper(7, 20, 40, 3)
    grid, n = Grid(comm), 103
    X, Y = _problem(n)
    start, stop = grid.block_range(n)
    solver, serial = _stepping_solver(grid, n, step), _stepping_solver(Grid.serial(), n, step)
    state = solver.init_state(X[:, start:stop], Y[:, start:stop], np.random.default_rng(0))
    reference = serial.init_state(X, Y, np.random.default_rng(0))
    for epoch in (1, 2):
        solver.step(state, Y[:, start:stop], epoch)
        serial.step(reference, Y, epoch)
    for got, expected in zip(state.weights + state.biases, reference.weights + reference.biases):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
        assert np.array_equal(got, comm.bcast(got, root=0))
    if "memory" in step:
        for got, expected in zip(state.memory_statistics, reference.memory_statistics):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    grid.close()


def test_a_resumed_run_with_memory_and_cg_equals_the_uninterrupted_one(tmp_path):
    """The smoothed statistics are checkpointed (global state, written once): 2 ranks, 6 epochs in one
    go against 3 epochs, a checkpoint, and 3 more epochs resumed; the saved models are the same bytes."""
    import h5py
    import json

    from tests.helpers import NO_VALIDATION_FLAGS, run_admm

    args = ["train", "--solver", "minibatch_am", *NO_VALIDATION_FLAGS, "--hidden", "32,32", "--no-progress",
            "--dtype", "float64", "--batch-size", "300", "--memory", "0.8", "--weight-solver", "cg", "--cg-iters", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    for out, extra in ((full, ["--iters", "6"]), (part, ["--iters", "3", "--checkpoint-every", "3"]),
                       (part, ["--iters", "6", "--resume", "auto"])):
        proc = run_admm(2, *args, "--out", out, *extra, timeout=300)
        assert proc.returncode == 0, proc.stderr
    manifest = json.loads((part / "checkpoints" / "ckpt-000003" / "manifest.json").read_text())
    assert manifest["fields"]["memory_statistics"]["length"] == 3
    assert json.loads((part / "summary.json").read_text())["first_iteration"] == 4

    def weights(run):
        with h5py.File(run / "model.h5", "r") as f:
            return [f[f"layers/{l}/{k}"][...] for l in range(3) for k in "Wb"]

    for got, expected in zip(weights(part), weights(full)):
        assert np.array_equal(got, expected)


def test_bad_weight_step_settings_are_refused_in_one_line():
    from admm_mpi.errors import InputError
    from admm_mpi.solvers.minibatch_am import MiniBatchAMParams

    for bad, word in ((dict(weight_solver="lsqr"), "weight_solver"), (dict(cg_iters=0), "cg_iters"),
                      (dict(memory=1.0), "memory"), (dict(memory=-0.1), "memory"),
                      (dict(memory_form="weights"), "memory_form")):
        with pytest.raises(InputError, match=word):
            MiniBatchAMParams(**bad).validate()
