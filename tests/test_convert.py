"""Converters: round trips, LIBSVM against scikit-learn's writer, chunked == in-memory."""

import gzip
import json
import struct

import h5py
import numpy as np
import pytest

from admm_mpi.convert import convert, info
from admm_mpi.errors import InputError

from tests.helpers import run_admm


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in f}, dict(f.attrs)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(53, 7)).round(3)
    y = rng.choice([3, 5, 9], size=53)
    return X, y


def test_npz_round_trip(tmp_path, arrays):
    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    convert(str(tmp_path / "d.npz"), str(tmp_path / "d.h5"), dtype=np.float64)
    data, attrs = _read(tmp_path / "d.h5")
    np.testing.assert_array_equal(data["X"], X)
    classes = np.unique(y)
    np.testing.assert_array_equal(classes[data["y"]], y)      # labels mapped to 0..k-1 in order
    assert attrs["n_classes"] == 3 and list(attrs["classes"]) == ["3", "5", "9"]


def test_libsvm_matches_scikit_learn_writer(tmp_path, arrays):
    from sklearn.datasets import dump_svmlight_file

    X, y = arrays
    X = np.where(np.abs(X) < 0.5, 0.0, X)  # sparse-ish, as LIBSVM files are
    dump_svmlight_file(X, y, str(tmp_path / "d.svm"))
    convert(str(tmp_path / "d.svm"), str(tmp_path / "d.h5"), dtype=np.float64, n_features=X.shape[1])
    data, _ = _read(tmp_path / "d.h5")
    np.testing.assert_allclose(data["X"], X, rtol=1e-12)
    np.testing.assert_array_equal(np.unique(y)[data["y"]], y)


@pytest.mark.parametrize("fmt", ["npz", "csv", "libsvm"])
def test_chunked_conversion_equals_in_memory(tmp_path, arrays, fmt):
    X, y = arrays
    path = tmp_path / f"d.{fmt}"
    if fmt == "npz":
        np.savez(path, X=X, y=y)
    elif fmt == "csv":
        np.savetxt(path, np.column_stack([y, X]), delimiter=",")
    else:
        from sklearn.datasets import dump_svmlight_file

        dump_svmlight_file(X, y, str(path))
    kw = {"delimiter": ","} if fmt == "csv" else {}
    convert(str(path), str(tmp_path / "small.h5"), chunk=5, test_fraction=0.25, standardize=True, **kw)
    convert(str(path), str(tmp_path / "whole.h5"), chunk=10_000, test_fraction=0.25, standardize=True, **kw)
    small, _ = _read(tmp_path / "small.h5")
    whole, _ = _read(tmp_path / "whole.h5")
    for key in ("X", "y", "X_test", "y_test"):
        np.testing.assert_allclose(small[key], whole[key], rtol=1e-6, atol=1e-6)


def test_stratified_split_and_standardisation(tmp_path, arrays):
    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    convert(str(tmp_path / "d.npz"), str(tmp_path / "d.h5"), test_fraction=0.3, standardize=True,
            dtype=np.float64)
    data, attrs = _read(tmp_path / "d.h5")
    for c in range(3):  # every class split in the same proportion
        total = np.sum(y == np.unique(y)[c])
        assert np.sum(data["y_test"] == c) == round(0.3 * total)
    assert data["X"].shape[0] + data["X_test"].shape[0] == 53
    np.testing.assert_allclose(data["X"].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(data["X"].std(0), 1, atol=1e-12)
    # the test rows got the training rows' transform
    raw_test = (data["X_test"] * attrs["standardize_std"]) + attrs["standardize_mean"]
    assert all(any(np.allclose(r, x) for x in X) for r in raw_test)


def test_validation_split_is_the_rows_train_would_hold_out(tmp_path, arrays):
    """``--validation-fraction F --seed S`` writes as X_val the training rows that
    ``train --validation-fraction F --seed S`` holds out of the file converted without it."""
    from admm_mpi.data import load_shard
    from admm_mpi.grid import Grid

    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    common = {"test_fraction": 0.2, "seed": 3, "dtype": np.float64}
    convert(str(tmp_path / "d.npz"), str(tmp_path / "plain.h5"), **common)
    summary = convert(str(tmp_path / "d.npz"), str(tmp_path / "val.h5"), validation_fraction=0.25, **common)
    plain, _ = _read(tmp_path / "plain.h5")
    split, attrs = _read(tmp_path / "val.h5")
    np.testing.assert_array_equal(split["X_test"], plain["X_test"])  # the test split does not move
    shard = load_shard(str(tmp_path / "plain.h5"), Grid(), np.float64, validation_fraction=0.25, seed=3)
    np.testing.assert_array_equal(split["X_val"], shard.X_val.T)
    np.testing.assert_array_equal(split["y_val"], shard.y_val)
    np.testing.assert_array_equal(split["X"], shard.X.T)
    assert summary["n_validation"] == split["X_val"].shape[0] > 0 and "validation split 0.25" in attrs["preprocessing"]
    assert info(str(tmp_path / "val.h5"))["validation"]["samples"] == summary["n_validation"]


def test_standardisation_uses_the_training_rows_only(tmp_path, arrays):
    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    convert(str(tmp_path / "d.npz"), str(tmp_path / "d.h5"), test_fraction=0.2, validation_fraction=0.3,
            standardize=True, dtype=np.float64)
    data, attrs = _read(tmp_path / "d.h5")
    np.testing.assert_allclose(data["X"].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(data["X"].std(0), 1, atol=1e-12)
    raw = data["X_val"] * attrs["standardize_std"] + attrs["standardize_mean"]  # the same transform
    assert all(any(np.allclose(r, x) for x in X) for r in raw)


@pytest.mark.parametrize("fractions", [{"test_fraction": 0.99}, {"test_fraction": 0.6},
                                       {"test_fraction": 0.6, "validation_fraction": 0.9}])
def test_every_class_keeps_a_training_row(tmp_path, fractions):
    y = np.array([0] * 4 + [1] * 1 + [2] * 10)
    np.savez(tmp_path / "d.npz", X=np.arange(2.0 * y.size).reshape(-1, 2), y=y)
    convert(str(tmp_path / "d.npz"), str(tmp_path / "d.h5"), **fractions)
    data, _ = _read(tmp_path / "d.h5")
    assert np.all(np.bincount(data["y"], minlength=3) >= 1)
    held = np.concatenate([data[k] for k in ("y_test", "y_val") if k in data])
    assert data["y"].size + held.size == y.size


@pytest.mark.parametrize("fractions, message", [
    ({"validation_fraction": 1.0}, "validation fraction must lie in"),
    ({"validation_fraction": float("nan")}, "validation fraction must lie in"),
    ({"test_fraction": -0.1}, "test fraction must lie in"),
    ({"validation_fraction": 0.01}, "holds out no row")])
def test_bad_split_fractions_are_refused(tmp_path, arrays, fractions, message):
    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(InputError, match=message):
        convert(str(tmp_path / "d.npz"), str(tmp_path / "d.h5"), **fractions)
    assert not (tmp_path / "d.h5").exists()


def _write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, codes[array.dtype], array.ndim]))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.tobytes())


def test_idx_pair_streams_like_mnist(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(37, 4, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, size=37).astype(np.uint8)
    _write_idx(tmp_path / "img-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "lab-idx1-ubyte.gz", labels)
    convert(f"{tmp_path / 'img-idx3-ubyte.gz'},{tmp_path / 'lab-idx1-ubyte.gz'}", str(tmp_path / "d.h5"),
            chunk=8, scale=255.0)
    data, _ = _read(tmp_path / "d.h5")
    np.testing.assert_allclose(data["X"], images.reshape(37, 20) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.unique(labels)[data["y"]], labels)
    assert info(str(tmp_path / "d.h5"))["train"]["samples"] == 37


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        convert(str(tmp_path / "none.npz"), str(tmp_path / "o.h5"))
    (tmp_path / "nan.csv").write_text("1,2,nan\n0,1,2\n")
    with pytest.raises(InputError, match="NaN"):
        convert(str(tmp_path / "nan.csv"), str(tmp_path / "o.h5"), delimiter=",")
    assert not (tmp_path / "o.h5").exists()
    assert not (tmp_path / "o.h5.tmp").exists()  # the partial output is removed too


@pytest.mark.parametrize(
    "text, options, message",
    [
        ("1 1:0.5\n0 2:1 abc\n", {"fmt": "libsvm"}, "line 2: 'abc' is not an index:value pair"),
        ("1 1:0.5\n0 2:1e\n", {"fmt": "libsvm"}, "line 2: '2:1e' needs an integer index and a numeric value"),
        ("1 1:0.5\n0 1.5:1\n", {"fmt": "libsvm"}, "line 2: '1.5:1' needs an integer index"),
        ("1 1:0.5\n0 -5:1\n", {"fmt": "libsvm"}, "line 2: feature index -5 is negative"),
        ("x 1:0.5\n", {"fmt": "libsvm"}, "line 1: label 'x' is not a number"),
        ("1 7:0.5\n", {"fmt": "libsvm", "n_features": 3}, "feature index 7 is beyond the 3 features given"),
        ("1,2,3\n0,1,2\n", {"fmt": "csv", "delimiter": ",", "label": 3}, "--label 3 is out of range"),
        ("1,2,3\n0,1,2\n", {"fmt": "csv", "delimiter": ",", "label": -4}, "--label -4 is out of range"),
        ("1,2,3\n0,1,2\n1,2\n", {"fmt": "csv", "delimiter": ",", "chunk": 1}, "rows of different widths"),
        ("1,2,3\n0,1,2\n1,inf,2\n", {"fmt": "csv", "delimiter": ",", "chunk": 1}, "NaN or Inf near row 2"),
    ],
)
def test_bad_text_input_is_one_line_and_leaves_no_output(tmp_path, text, options, message):
    (tmp_path / "in.txt").write_text(text)
    with pytest.raises(InputError, match=message):
        convert(str(tmp_path / "in.txt"), str(tmp_path / "o.h5"), **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_idx_type_code_and_truncated_files(tmp_path):
    (tmp_path / "t7-idx").write_bytes(bytes([0, 0, 7, 1]) + struct.pack(">I", 2) + b"ab")
    with pytest.raises(InputError, match="IDX type code 0x07 is not one of 0x08"):
        convert(f"{tmp_path / 't7-idx'},{tmp_path / 't7-idx'}", str(tmp_path / "o.h5"), fmt="idx")
    (tmp_path / "short-idx").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"ab")
    with pytest.raises(InputError, match="the files end before the 5 samples their headers give"):
        convert(f"{tmp_path / 'short-idx'},{tmp_path / 'short-idx'}", str(tmp_path / "o.h5"), fmt="idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short-idx", "t7-idx"]


def test_unwritable_output_is_refused_before_reading(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n0,1\n")
    with pytest.raises(InputError, match=f"cannot write {tmp_path}/d.csv/o.h5: Not a directory"):
        convert(str(tmp_path / "d.csv"), str(tmp_path / "d.csv" / "o.h5"), delimiter=",")
    with pytest.raises(InputError, match=f"cannot write {tmp_path}: it is a directory"):
        convert(str(tmp_path / "d.csv"), str(tmp_path), delimiter=",")


def test_cli_convert_then_train(tmp_path, arrays):
    X, y = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    proc = run_admm(1, "data", "convert", tmp_path / "d.npz", "--out", tmp_path / "d.h5", "--test-fraction", "0.2",
                    "--validation-fraction", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert (json.loads(proc.stdout)["n_test"], json.loads(proc.stdout)["n_validation"]) == (11, 9)
    proc = run_admm(2, "train", "--data", tmp_path / "d.h5", "--hidden", "8", "--iters", "3", "--no-progress",
                    "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    proc = run_admm(1, "data", "convert", tmp_path / "missing.npz", "--out", tmp_path / "x.h5")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
