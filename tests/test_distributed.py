"""Distributed == serial: the same Taylor run on 1, 2, 3, 4 ranks gives the same weights."""

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.data import write_dataset
from admm_mpi.grid import Grid
from admm_mpi.train import train

from tests.helpers import blobs


def _dataset(tmp_path, comm, n=203):
    path = tmp_path / "blobs.h5"
    if comm.rank == 0:
        X, y = blobs(n, 10, 3, seed=5)
        Xt, yt = blobs(31, 10, 3, seed=6)
        write_dataset(str(path), X, y, Xt, yt, name="blobs", n_classes=3)
    comm.Barrier()
    return str(path)


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=120)
@pytest.mark.parametrize("loss", ["least_squares", "ova_hinge"])
def test_taylor_distributed_equals_serial(comm, shared_tmp, loss):
    config = TrainConfig(data=_dataset(shared_tmp, comm), hidden=(12, 8), loss=loss, iters=20,
                         dtype="float64", warm_start=3, progress=False)
    grid = Grid(comm)
    distributed = train(config, grid, out=False)
    serial = train(config, Grid.serial(), out=False)  # every rank runs the whole serial job
    assert distributed["ranks"] == comm.size
    for W, W_ref in zip(distributed["state"].weights + distributed["state"].biases,
                        serial["state"].weights + serial["state"].biases):
        rel = np.linalg.norm(W - W_ref) / np.linalg.norm(W_ref)
        assert rel < 1e-10, rel
    assert distributed["objective"] == pytest.approx(serial["objective"], rel=1e-10)
    assert distributed["train_accuracy"] == serial["train_accuracy"]
    # the weights are bit-identical on every rank
    W0 = distributed["state"].weights[0]
    assert np.array_equal(W0, comm.bcast(W0, root=0))
    grid.close()
