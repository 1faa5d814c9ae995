"""Solver-specific properties: mDLAM's box and momentum, sigmoid-ADMM's stability."""

import numpy as np
import pytest

from admm_mpi.config import TrainConfig
from admm_mpi.data import write_dataset
from admm_mpi.grid import Grid
from admm_mpi.solvers.mdlam import _momentum
from admm_mpi.train import train

from tests.helpers import blobs


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
    config = TrainConfig(data=blob_file, solver="mdlam", activation=activation, hidden=(16, 16), iters=12,
                         progress=False, eps=1.0, eps_min=1e-3)
    out = train(config, Grid.serial(), out=False)
    state, h = out["state"], out["spec"].h.apply
    for l in range(1, len(state.a)):
        gap = np.abs(state.a[l] - h(state.z[l - 1]))
        # the box of the last a-step was twice the final eps (eps halves after the sweep)
        assert gap.max() <= 2 * state.eps + 1e-12
    assert max(state.t_a[1:]) > 1.0 and max(state.t_W) > 1.0   # momentum in use
    assert out["train_accuracy"] > 0.8


@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_sigmoid_admm_is_stable_across_penalties_and_initialisations(blob_file, beta, seed):
    """Zeng et al.'s claim: stable with respect to the penalty and the initialisation."""
    config = TrainConfig(data=blob_file, solver="sigmoid_admm", hidden=(20, 20), iters=30, progress=False,
                         beta=beta, seed=seed)
    out = train(config, Grid.serial(), out=False)
    assert np.isfinite(out["objective"])
    assert out["train_accuracy"] >= 0.9, (beta, seed, out["train_accuracy"])
