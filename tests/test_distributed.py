"""Distributed == serial: every solver on 1, 2, 3, 4 ranks gives the serial run's weights."""

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.data import write_dataset
from admm_mpi.grid import Grid
from admm_mpi.train import train

from tests.helpers import NO_VALIDATION, blobs


def _dataset(tmp_path, comm, n=203):
    path = tmp_path / "blobs.h5"
    if comm.rank == 0:
        X, y = blobs(n, 10, 3, seed=5)
        Xt, yt = blobs(31, 10, 3, seed=6)
        write_dataset(str(path), X, y, Xt, yt, name="blobs", n_classes=3)
    comm.Barrier()
    return str(path)


CASES = {
    "taylor-least_squares": dict(solver="taylor", loss="least_squares", warm_start=3),
    "taylor-ova_hinge": dict(solver="taylor", loss="ova_hinge", warm_start=3),
    "dladmm-cross_entropy": dict(solver="dladmm", rho=0.1, rho_max=1.0, rho_patience=0, rho_growth=1.2),
    "mdlam-cross_entropy": dict(solver="mdlam"),
    "mdlam-leaky_relu": dict(solver="mdlam", activation="leaky_relu", loss="least_squares"),
    "sigmoid_admm-least_squares": dict(solver="sigmoid_admm"),
    "sigmoid_admm-tanh-ce": dict(solver="sigmoid_admm", activation="tanh", loss="cross_entropy"),
    # batches of 29 of 203 columns (the last one 0 long); batches of 3 leave some ranks without
    # a column of a batch at 4 ranks
    "minibatch_am-cross_entropy": dict(solver="minibatch_am", batch_size=29),
    "minibatch_am-least_squares-3": dict(solver="minibatch_am", loss="least_squares", batch_size=3, iters=3),
    # batches narrower than the 61-wide hidden layer: its weights go through the kernel form
    "minibatch_am-kernel-form": dict(solver="minibatch_am", hidden=(60, 8), batch_size=29, iters=5),
    "minibatch_am-step-decay": dict(solver="minibatch_am", batch_size=29, iters=5, step_decay=0.7),
    # the mini-batch mode of the full-batch solvers, on the same uneven batches
    "dladmm-batches-29": dict(solver="dladmm", batch_size=29, batch_sweeps=2, iters=4),
    "mdlam-batches-3": dict(solver="mdlam", batch_size=3, batch_sweeps=3, eps=1.0, iters=2, w_steps=2),
    "sigmoid_admm-batches-29": dict(solver="sigmoid_admm", loss="cross_entropy", batch_size=29, iters=4),
    "sigmoid_admm-batches-anchored": dict(solver="sigmoid_admm", activation="tanh", loss="cross_entropy",
                                          batch_size=29, iters=3, rho=0.05),
    # batches narrower than the 61-wide last hidden layer: the output solve takes the kernel form
    "sigmoid_admm-batches-kernel-form": dict(solver="sigmoid_admm", activation="tanh", loss="cross_entropy",
                                             hidden=(12, 60), batch_size=29, iters=3, rho=0.05),
}


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=180)
@pytest.mark.parametrize("case", sorted(CASES))
def test_distributed_equals_serial(comm, shared_tmp, case):
    config = TrainConfig.from_settings(**{**dict(data=_dataset(shared_tmp, comm), hidden=(12, 8), iters=20,
                                                 dtype="float64", progress=False, **NO_VALIDATION), **CASES[case]})
    grid = Grid(comm)
    distributed = train(config, grid, out=False)
    serial = train(config, Grid.serial(), out=False)  # every rank runs the whole serial job
    assert distributed.summary["ranks"] == comm.size
    for W, W_ref in zip(distributed.state.weights + distributed.state.biases,
                        serial.state.weights + serial.state.biases):
        rel = np.linalg.norm(W - W_ref) / np.linalg.norm(W_ref)
        assert rel < 1e-10, rel
    assert distributed.summary["objective"] == pytest.approx(serial.summary["objective"], rel=1e-10)
    assert distributed.summary["train_accuracy"] == serial.summary["train_accuracy"]
    # the weights are bit-identical on every rank
    W0 = distributed.state.weights[0]
    assert np.array_equal(W0, comm.bcast(W0, root=0))
    grid.close()
