"""HDF5 data: each rank reads exactly its slab; bad files are refused with a clear message."""

import h5py
import numpy as np
import pytest

from admm_mpi.data import load_shard, resolve_path, write_dataset
from admm_mpi.errors import InputError
from admm_mpi.grid import Grid

from tests.helpers import blobs


def _write(path, n=23, d=4, classes=3, test=7, **kw):
    X, y = blobs(n, d, classes, seed=1)
    Xt, yt = blobs(test, d, classes, seed=2) if test else (None, None)
    write_dataset(str(path), X, y, Xt, yt, name="t", n_classes=classes, **kw)
    return X, y, Xt, yt


def test_bundled_digits():
    shard = load_shard("digits", Grid.serial())
    assert (shard.n_total, shard.n_test_total, shard.n_features, shard.n_classes) == (1500, 297, 64, 10)
    assert shard.X.shape == (64, 1500) and 0 <= shard.X.min() and shard.X.max() <= 1
    assert np.bincount(shard.y_test).min() >= 29  # stratified: every digit is in the test split
    assert resolve_path("digits").endswith("digits.h5")


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
def test_each_rank_reads_its_own_slab(comm, shared_tmp):
    path = shared_tmp / "d.h5"
    if comm.rank == 0:
        _write(path)
    comm.Barrier()
    with h5py.File(path, "r") as f:
        X, y, Xt, yt = f["X"][...], f["y"][...], f["X_test"][...], f["y_test"][...]
    grid = Grid(comm)
    shard = load_shard(str(path), grid)
    start, stop = grid.block_range(23)
    np.testing.assert_array_equal(shard.X, X[start:stop].T)
    np.testing.assert_array_equal(shard.y, y[start:stop])
    t0, t1 = grid.block_range(7)
    np.testing.assert_array_equal(shard.X_test, Xt[t0:t1].T)
    assert shard.start == start and shard.n_total == 23
    sizes = comm.allgather(shard.X.shape[1])
    assert sum(sizes) == 23 and max(sizes) - min(sizes) <= 1
    grid.close()


def _corrupt(path, key, fn):
    with h5py.File(path, "r+") as f:
        data = f[key][...]
        del f[key]
        f[key] = fn(data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _corrupt(p, "X", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 9, np.nan, x)), "NaN"),
        (lambda p: _corrupt(p, "y", lambda y: y + 5), "outside 0..2"),
        (lambda p: _corrupt(p, "y", lambda y: y - 5), "outside 0..2"),
        (lambda p: _corrupt(p, "y", lambda y: y[:-1]), "labels"),
        (lambda p: _corrupt(p, "X_test", lambda x: x[:, :-1]), "features"),
        (lambda p: _corrupt(p, "y", lambda y: y + 0.5), "non-integer"),
        (lambda p: p.write_bytes(b"not an hdf5 file"), "HDF5"),
        (lambda p: p.unlink(), "does not exist"),
    ],
)
def test_bad_files_are_refused(tmp_path, damage, message):
    path = tmp_path / "bad.h5"
    _write(path)
    damage(path)
    with pytest.raises(InputError, match=message):
        load_shard(str(path), Grid.serial())


def test_wrong_dataset_names(tmp_path):
    path = tmp_path / "names.h5"
    with h5py.File(path, "w") as f:
        f["features"] = np.zeros((3, 2))
        f["labels"] = np.zeros(3)
    with pytest.raises(InputError, match="no dataset 'X'"):
        load_shard(str(path), Grid.serial())


def test_missing_class_count_is_inferred(tmp_path):
    path = tmp_path / "noattr.h5"
    with h5py.File(path, "w") as f:
        f["X"] = np.zeros((5, 2))
        f["y"] = np.array([0, 1, 3, 1, 0])
    assert load_shard(str(path), Grid.serial()).n_classes == 4
