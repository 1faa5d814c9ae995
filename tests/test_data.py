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


def _set_attr(path, name, value):
    with h5py.File(path, "r+") as f:
        f.attrs[name] = value


@pytest.mark.parametrize(
    "value, message",
    [
        ("ten", "n_classes attribute must be a whole number, got 'ten'"),
        (2.5, "n_classes attribute must be a whole number"),
        (-3, "n_classes attribute is -3, outside 1..30"),
        (0, "n_classes attribute is 0, outside 1..30"),
        (10**9, "n_classes attribute is 1000000000, outside 1..30 (at most one class per sample"),
    ],
)
def test_n_classes_attribute_is_validated(tmp_path, value, message):
    path = tmp_path / "d.h5"
    _write(path)  # 23 training + 7 test samples
    _set_attr(path, "n_classes", value)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_shard(str(path), Grid.serial())


def test_inferred_class_count_is_bounded_too(tmp_path):
    path = tmp_path / "noattr.h5"
    with h5py.File(path, "w") as f:
        f["X"] = np.zeros((5, 2))
        f["y"] = np.array([0, 1, 10**9, 1, 0])
    with pytest.raises(InputError, match="labels go up to 1000000000, more classes than the file's 5 samples"):
        load_shard(str(path), Grid.serial())


def test_a_whole_float_n_classes_and_classes_missing_from_the_labels_are_fine(tmp_path):
    path = tmp_path / "d.h5"
    _write(path)
    _set_attr(path, "n_classes", 5.0)  # labels 0..2 present: a subset of a 5-class problem
    assert load_shard(str(path), Grid.serial()).n_classes == 5


def test_a_value_that_overflows_float32_is_named_without_warnings(tmp_path, recwarn):
    path = tmp_path / "d.h5"
    X, y, Xt, yt = _write(path, n=20000)  # more rows than one read block
    X[12345, 2] = 1e39
    write_dataset(str(path), X, y, Xt, yt, name="t", n_classes=3)
    with pytest.raises(InputError, match=r"X value 1e\+39 at row 12345, column 2 overflows float32"):
        load_shard(str(path), Grid.serial(), np.float32)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]
    assert load_shard(str(path), Grid.serial(), np.float64).X[2, 12345] == 1e39  # float64 holds it


def test_inf_stays_reported_as_inf_in_float32(tmp_path):
    path = tmp_path / "d.h5"
    X, y, Xt, yt = _write(path)
    Xt[4, 1] = -np.inf
    write_dataset(str(path), X, y, Xt, yt, name="t", n_classes=3)
    with pytest.raises(InputError, match=r"X_test contains NaN or Inf \(first at row 4\)"):
        load_shard(str(path), Grid.serial(), np.float32)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "it is a directory, not an HDF5 file"),
        (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
        (lambda p: p.write_bytes(bytes(range(256)) * 8), "not an HDF5 file (no HDF5 signature)"),
        (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64), "damaged HDF5 file"),
    ],
)
def test_unreadable_files_give_one_line_without_hdf5_internals(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(InputError) as caught:
        load_shard(str(path), Grid.serial())
    text = str(caught.value)
    assert text.startswith(f"cannot read {path}: ") and message in text, text
    assert "\n" not in text and "time =" not in text and "file descriptor" not in text, text
