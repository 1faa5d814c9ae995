"""Graph augmentation (pdADMM-G) against a dense computation, and its command line."""

import subprocess
import sys

import h5py
import numpy as np
import scipy.sparse as sp

from admm_mpi.data import write_dataset
from admm_mpi.graph import normalized_adjacency, propagate

from tests.helpers import blobs, child_env


def _random_graph(n, seed=0, density=0.05):
    A = sp.random(n, n, density=density, random_state=seed, format="csr")
    A.data[:] = 1.0
    return ((A + A.T) > 0).astype(np.float64)  # symmetric, no weights


def test_normalized_adjacency_matches_dense_formula():
    A = _random_graph(40, seed=1)
    dense = A.toarray() + np.eye(40)
    d = dense.sum(axis=1)
    expected = dense / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    assert np.allclose(normalized_adjacency(A).toarray(), expected, rtol=1e-14, atol=0)
    # isolated nodes keep their own features (degree 1 from the self loop)
    assert np.allclose(normalized_adjacency(sp.csr_matrix((3, 3))).toarray(), np.eye(3))


def test_propagate_stacks_powers_widest_first():
    rng = np.random.default_rng(2)
    A = _random_graph(30, seed=3)
    X = rng.standard_normal((30, 4))
    H = propagate(normalized_adjacency(A), X, hops=3)
    A_hat = normalized_adjacency(A).toarray()
    expected = np.hstack([np.linalg.matrix_power(A_hat, k) @ X for k in (3, 2, 1, 0)])
    assert H.shape == (30, 16)
    assert np.allclose(H, expected, rtol=1e-12, atol=1e-14)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "admm_mpi", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=child_env(ADMM_MPI_NO_MPI="1"))


def test_data_augment_command_writes_a_trainable_data_set(tmp_path):
    X, y = blobs(50, 6, 3, seed=4)
    Xt, yt = blobs(10, 6, 3, seed=5)
    write_dataset(str(tmp_path / "nodes.h5"), X, y, Xt, yt, name="nodes", n_classes=3)
    A = _random_graph(60, seed=6)
    sp.save_npz(tmp_path / "A.npz", A)
    done = _cli("data", "augment", tmp_path / "nodes.h5", "--adjacency", tmp_path / "A.npz", "--hops", 2,
                "--out", tmp_path / "aug.h5")
    assert done.returncode == 0, done.stderr
    H = propagate(normalized_adjacency(A), np.vstack([X, Xt]), 2)
    with h5py.File(tmp_path / "aug.h5", "r") as f:
        assert np.allclose(f["X"][...], H[:50]) and np.allclose(f["X_test"][...], H[50:])
        assert np.array_equal(f["y"][...], y) and int(f.attrs["n_classes"]) == 3
        assert "graph-augmented" in f.attrs["preprocessing"]
    trained = _cli("train", "--data", tmp_path / "aug.h5", "--solver", "pdadmm", "--hidden", "8,8",
                   "--iters", 3, "--no-progress", "--out", tmp_path / "run")
    assert trained.returncode == 0, trained.stderr

    # a graph of the wrong size: one clear message, exit 2, no output file
    sp.save_npz(tmp_path / "small.npz", _random_graph(59, seed=7))
    bad = _cli("data", "augment", tmp_path / "nodes.h5", "--adjacency", tmp_path / "small.npz",
               "--out", tmp_path / "bad.h5")
    assert bad.returncode == 2 and "59 nodes" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.h5").exists()
