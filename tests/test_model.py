"""Model files: a checksum written at save time and verified at load; older files without one."""

import h5py
import numpy as np
import pytest

from admm_mpi.errors import InputError
from admm_mpi.model import MODEL_FORMAT_VERSION, ModelSpec, load_model, model_checksum, save_model


def _arrays(dtype=np.float64):
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal((5, 4)).astype(dtype), rng.standard_normal((3, 5)).astype(dtype)]
    biases = [rng.standard_normal(5).astype(dtype), rng.standard_normal(3).astype(dtype)]
    return ModelSpec((4, 5, 3), "tanh", "cross_entropy", 3), weights, biases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_stores_and_verifies_the_checksum(tmp_path, dtype):
    spec, weights, biases = _arrays(dtype)
    save_model(str(tmp_path / "m.h5"), spec, weights, biases)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert f.attrs["format_version"] == MODEL_FORMAT_VERSION == 2
        assert f.attrs["sha256"] == model_checksum(spec, weights, biases)
    loaded, W, b = load_model(str(tmp_path / "m.h5"))
    assert loaded == spec
    for got, want in zip(W + b, weights + biases):
        assert got.dtype == dtype and np.array_equal(got, want)


def test_the_checksum_covers_the_spec_and_every_array():
    spec, weights, biases = _arrays()
    reference = model_checksum(spec, weights, biases)
    changed_b = [biases[0], biases[1].copy()]
    changed_b[1][2] = np.nextafter(changed_b[1][2], np.inf)  # one ulp in the last bias
    assert model_checksum(spec, weights, changed_b) != reference
    assert model_checksum(ModelSpec((4, 5, 3), "relu", "cross_entropy", 3), weights, biases) != reference
    assert model_checksum(spec, [w.astype(np.float32) for w in weights], biases) != reference


def test_a_file_written_before_checksums_still_loads_with_every_other_check(tmp_path):
    """Format version 1 (no checksum): accepted, since its shapes, values and classes are checked."""
    spec, weights, biases = _arrays()
    path = tmp_path / "old.h5"
    save_model(str(path), spec, weights, biases)
    with h5py.File(path, "r+") as f:
        del f.attrs["sha256"]
        f.attrs["format_version"] = 1
    loaded, W, _ = load_model(str(path))
    assert loaded == spec and np.array_equal(W[1], weights[1])
    with h5py.File(path, "r+") as f:
        f["layers/1/b"][0] = np.inf
    with pytest.raises(InputError, match="layer 1 b contains NaN or Inf"):
        load_model(str(path))


def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path):
    spec, weights, biases = _arrays()
    path = tmp_path / "m.h5"
    save_model(str(path), spec, weights, biases)
    before = path.read_bytes()
    (tmp_path / "m.h5.tmp").mkdir()  # the temporary file cannot be created
    with pytest.raises(InputError, match=f"cannot write {path}: "):
        save_model(str(path), spec, [w + 1 for w in weights], biases)
    assert path.read_bytes() == before
