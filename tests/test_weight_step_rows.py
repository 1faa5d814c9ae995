"""The weight step split by rows of W over the ranks: the serial step's numbers, the same bytes everywhere."""

import hashlib
import threading

import numpy as np
import pytest

from admm_mpi.grid import Grid
from admm_mpi.ops.linalg import local_normal_equations
from admm_mpi.ops.steps import exact_bias, weight_gradient_rows, weight_gradient_step
from admm_mpi.partition import block_range


def _problem(n_in, m, n, seed):
    """Non-negative inputs (as activations are: the Gram has one large eigenvalue), targets, W, b."""
    rng = np.random.default_rng(seed)
    a = np.abs(rng.standard_normal((n_in, n)))
    return a, rng.standard_normal((m, n)), rng.standard_normal((m, n_in)), rng.standard_normal(m)


def _in_blocks(parts, m, step_block):
    """Run ``step_block(rows, sum_scalars)`` for ``parts`` row blocks at once (one thread each), as
    ranks would: ``sum_scalars`` adds every block's values in block order."""
    barrier, partial, results = threading.Barrier(parts), [None] * parts, [None] * parts

    def run(r):
        def sum_scalars(values):
            partial[r] = np.array(values)
            barrier.wait()
            total = sum(partial[1:], partial[0].copy())
            barrier.wait()  # every block has read the others' values before they are overwritten
            return total

        results[r] = step_block(block_range(m, parts, r), sum_scalars)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("m, parts", [(7, 1), (7, 2), (7, 3), (10, 4), (3, 4), (1, 3)])
@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("tau_prev, steps", [(None, 1), (None, 5), (0.3, 5)])
def test_row_blocks_give_the_whole_step(m, parts, centred, tau_prev, steps):
    """Blocks of rows stepped apart (the search's sums added over blocks) give the whole step's rows,
    step size and trials; blocks without rows take part in the sums and return no rows."""
    a, T, W, b = _problem(12, m, 50, seed=m * 10 + parts)
    stats = local_normal_equations(a, T)
    c, mu = 0.7, 0.05
    W_ref, tau_ref, trials_ref, grad_sq_ref = weight_gradient_step(stats, W, b, c, mu, tau_prev,
                                                                   bias_eliminated=centred, steps=steps)

    def step_block(rows, sum_scalars):
        start, stop = rows
        return weight_gradient_rows(stats, W[start:stop], b[start:stop], c, mu, tau_prev, rows,
                                    bias_eliminated=centred, steps=steps, sum_scalars=sum_scalars)

    results = _in_blocks(parts, m, step_block)
    W_rows = np.vstack([r[0] for r in results])
    np.testing.assert_allclose(W_rows, W_ref, rtol=1e-12, atol=1e-12 * np.abs(W_ref).max())
    for r, (W_block, tau, trials, grad_sq) in enumerate(results):
        start, stop = block_range(m, parts, r)
        assert W_block.shape == (stop - start, W.shape[1])
        assert tau == tau_ref and trials == trials_ref
        assert grad_sq == pytest.approx(grad_sq_ref, rel=1e-12)
    assert trials_ref >= steps  # a real search: every step tried at least one step size
    assert not np.allclose(W_ref, W)  # and moved


@pytest.mark.parametrize("seed", range(5))
def test_centred_step_is_the_gradient_step_on_the_centred_data(seed):
    """With b minimised out, the step (from the statistics, the centred Gram never formed) is the
    gradient step of ``(c/2)||T_c - W a_c||² + (mu/2)||W||²`` on the centred samples, its step size
    the first of ``τ_prev/2, τ_prev, ...`` to decrease enough, the first one bounded by the top
    eigenvalue of the centred Gram (not the uncentred one, larger along the mean)."""
    a, T, W, b = _problem(9, 4, 70, seed)
    c, mu = 0.9, 0.02
    a_c, T_c = a - a.mean(axis=1, keepdims=True), T - T.mean(axis=1, keepdims=True)
    grad = c * (W @ a_c - T_c) @ a_c.T + mu * W
    grad_sq, curvature = np.sum(grad * grad), c * np.sum((grad @ a_c) ** 2) + mu * np.sum(grad * grad)
    top = c * np.linalg.eigvalsh(a_c @ a_c.T)[-1] + mu
    stats = local_normal_equations(a, T)
    for tau_prev in (None, 1e-3 * top):
        W_new, tau, trials, _ = weight_gradient_step(stats, W, b, c, mu, tau_prev, bias_eliminated=True)
        if tau_prev is None:  # a power-iteration estimate of the top eigenvalue, doubled if it fell short
            assert 0.5 * top <= tau <= 2.1 * top
            assert tau < 0.5 * (c * np.linalg.eigvalsh(a @ a.T)[-1] + mu)  # far below the uncentred bound
        else:
            assert tau == pytest.approx(0.5 * tau_prev * 2.0 ** (trials - 1), rel=1e-12)
            assert trials == 1 or curvature > 0.5 * tau * grad_sq  # the previous trial did not decrease enough
        assert curvature <= tau * grad_sq * (1 + 1e-9)  # sufficient decrease of the parabola
        np.testing.assert_allclose(W_new, W - grad / tau, rtol=1e-10, atol=1e-12 * np.abs(W).max())


def test_mdlam_centred_objective_from_statistics_and_by_rows():
    """mDLAM's restart test: ``min_b φ`` (up to ``(c/2)||T_c||²``) from the statistics, the rows' shares adding up."""
    from admm_mpi.solvers.mdlam import centred_weight_objective

    a, T, W, _ = _problem(7, 5, 50, seed=4)
    c, mu = 0.7, 0.1
    a_c, T_c = a - a.mean(axis=1, keepdims=True), T - T.mean(axis=1, keepdims=True)
    brute = 0.5 * c * np.sum((T_c - W @ a_c) ** 2) + 0.5 * mu * np.sum(W * W) - 0.5 * c * np.sum(T_c ** 2)
    stats = local_normal_equations(a, T)
    assert centred_weight_objective(stats, W, c, mu) == pytest.approx(brute, rel=1e-12)
    shares = [centred_weight_objective(stats, W[s:e], c, mu, (s, e)) for s, e in [(0, 2), (2, 2), (2, 5)]]
    assert sum(shares) == pytest.approx(brute, rel=1e-12)


def test_exact_bias_of_rows_is_those_rows_of_the_bias():
    a, T, W, _ = _problem(6, 5, 40, seed=3)
    stats = local_normal_equations(a, T)
    whole = exact_bias(stats, W)
    np.testing.assert_array_equal(np.concatenate([exact_bias(stats, W[s:e], (s, e)) for s, e in
                                                  [(0, 2), (2, 2), (2, 5)]]), whole)
    np.testing.assert_allclose(whole, np.mean(T - W @ a, axis=1), rtol=1e-12)


def _same_bytes_everywhere(comm, *arrays):
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in arrays)).hexdigest()
    return len(set(comm.allgather(digest))) == 1


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
@pytest.mark.parametrize("m", [3, 10, 13])  # 3 rows at 4 ranks leave a rank without rows
@pytest.mark.parametrize("bias_first, center", [(True, False), (False, False), (False, True)])
def test_weight_step_rows_over_ranks_equal_the_serial_step(comm, m, bias_first, center):
    """Each rank steps its own rows; W, b and the step size equal the serial step's and are the
    same bytes on every rank (the step size too: every rank carries it to the next search)."""
    from admm_mpi.ops import steps
    from admm_mpi.solvers.common import weight_step

    grid = Grid(comm)
    a, T, W, b = _problem(15, m, 61, seed=m)
    start, stop = grid.block_range(61)
    stepped_rows = []
    original = steps.weight_gradient_rows

    def recording(stats, W_rows, b_rows, c, mu, tau, rows, **kwargs):
        stepped_rows.append((tuple(rows), W_rows.shape[0]))
        return original(stats, W_rows, b_rows, c, mu, tau, rows, **kwargs)

    steps.weight_gradient_rows = recording
    try:
        results = []
        tau = None
        for _ in range(2):  # the second call starts from the first one's step size
            W_d, b_d, tau = weight_step(grid, a[:, start:stop], T[:, start:stop], W, b, 0.8, 0.01, tau,
                                        bias_first=bias_first, center=center, steps=4)
            results.append((W_d, b_d, tau))
    finally:
        steps.weight_gradient_rows = original
    same_everywhere = [_same_bytes_everywhere(comm, W_d, b_d, np.array([tau_d])) for W_d, b_d, tau_d in results]
    grid.close()  # (every collective is done: a failed assertion on one rank cannot leave the others waiting)
    own = grid.block_range(m)
    assert stepped_rows == [(own, own[1] - own[0])] * 2  # this rank's rows only
    assert same_everywhere == [True, True]  # W, b and the step size: the same bytes on every rank

    serial, tau_s = Grid.serial(), None
    for W_d, b_d, tau_d in results:
        W_s, b_s, tau_s = weight_step(serial, a, T, W, b, 0.8, 0.01, tau_s, bias_first=bias_first, center=center,
                                      steps=4)
        np.testing.assert_allclose(W_d, W_s, rtol=1e-12, atol=1e-12 * np.abs(W_s).max())
        np.testing.assert_allclose(b_d, b_s, rtol=1e-12, atol=1e-12 * np.abs(b_s).max())
        assert tau_d == pytest.approx(tau_s, rel=1e-12)  # (the Grams summed in another order round apart)


RUNS = {  # mini-batch modes of the solvers whose weight steps are split by rows; 3 classes: a 3-row output layer
    "dladmm-batches": dict(solver="dladmm", batch_size=29, batch_sweeps=2, iters=3, w_steps=3, rho=0.1),
    "mdlam-batches": dict(solver="mdlam", batch_size=29, batch_sweeps=2, iters=3, w_steps=3),
}


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=180)
@pytest.mark.parametrize("case", sorted(RUNS))
def test_minibatch_run_equals_serial_with_the_same_bytes_on_every_rank(comm, shared_tmp, case):
    from admm_mpi.config import TrainConfig
    from admm_mpi.train import train

    from tests.helpers import NO_VALIDATION
    from tests.test_distributed import _dataset

    config = TrainConfig.from_settings(data=_dataset(shared_tmp, comm), hidden=(12, 8), dtype="float64",
                                       progress=False, **NO_VALIDATION, **RUNS[case])
    grid = Grid(comm)
    distributed = train(config, grid, out=False)
    layers = distributed.state.weights + distributed.state.biases
    same_everywhere = _same_bytes_everywhere(comm, *layers)
    step_sizes_everywhere = comm.allgather(tuple(distributed.state.tau_W))
    grid.close()  # (every collective is done: a failed assertion on one rank cannot leave the others waiting)
    serial = train(config, Grid.serial(), out=False)
    assert [x.shape[0] for x in distributed.state.weights] == [12, 8, 3]
    for x, ref in zip(layers, serial.state.weights + serial.state.biases):
        assert np.linalg.norm(x - ref) <= 1e-10 * np.linalg.norm(ref)
    assert same_everywhere
    assert distributed.state.tau_W == pytest.approx(serial.state.tau_W, rel=1e-10)
    assert len(set(step_sizes_everywhere)) == 1  # every rank carries the same step sizes into the next search
