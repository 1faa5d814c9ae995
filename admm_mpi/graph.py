"""Graph-augmented inputs (pdADMM-G): features ``[Â^K X, …, Â X, X]``, a pre-processing step.

``Â = D^{-1/2} (A + I) D^{-1/2}`` with ``D`` the degrees of ``A + I`` (the GCN normalisation).
The graph's nodes are the data set's rows: the training rows first, then the test rows, so
``A`` is square of size ``N + N_test``. ``Â`` stays sparse (scipy.sparse); each hop is one
sparse-times-dense product.
"""

import os

import h5py
import numpy as np
import scipy.sparse as sp

from admm_mpi.data import resolve_path, write_dataset
from admm_mpi.errors import InputError


def normalized_adjacency(A):
    """``D^{-1/2}(A + I)D^{-1/2}`` as a CSR matrix."""
    A = sp.csr_matrix(A, dtype=np.float64)
    A_hat = A + sp.identity(A.shape[0], format="csr")
    degree = np.asarray(A_hat.sum(axis=1)).ravel()
    inv_sqrt = sp.diags(1.0 / np.sqrt(degree))
    return (inv_sqrt @ A_hat @ inv_sqrt).tocsr()


def propagate(A_hat, X, hops):
    """``[Â^K X, …, Â X, X]`` (rows = nodes), widest power first."""
    blocks = [X]
    for _ in range(hops):
        blocks.append(A_hat @ blocks[-1])
    return np.hstack(blocks[::-1])


def read_adjacency(path):
    """A scipy.sparse ``save_npz`` file, or an ``.npz`` holding one dense square array."""
    try:
        return sp.load_npz(path)
    except FileNotFoundError:
        raise InputError(f"adjacency file {path} does not exist") from None
    except (ValueError, OSError):
        pass
    try:
        with np.load(path) as f:
            if len(f.files) != 1:
                raise InputError(f"{path}: expected a scipy.sparse .npz or an .npz with one array, found {f.files}")
            return f[f.files[0]]
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read adjacency {path} ({exc})") from None


def augment(data, adjacency, out, hops=2):
    """Write the graph-augmented copy of data set ``data`` to ``out``; returns a summary."""
    if hops < 1:
        raise InputError(f"--hops must be at least 1, got {hops}")
    path = resolve_path(data)
    try:
        with h5py.File(path, "r") as f:
            X, y = f["X"][...], f["y"][...]
            X_test = f["X_test"][...] if "X_test" in f else np.empty((0, X.shape[1]), X.dtype)
            y_test = f["y_test"][...] if "y_test" in f else np.empty(0, y.dtype)
            if "X_val" in f:  # validation rows are not graph nodes: they cannot be augmented
                raise InputError(f"{path} has a validation split (X_val, y_val), whose rows are not nodes of the "
                                 "graph (nodes: training rows, then test rows); convert it without "
                                 "--validation-fraction, then use train --validation-fraction")
            attrs = dict(f.attrs)
    except FileNotFoundError:
        raise InputError(f"data file {path} does not exist") from None
    except (OSError, KeyError) as exc:
        raise InputError(f"cannot read {path} as an admm-mpi data set ({exc})") from None
    A = read_adjacency(adjacency)
    n_nodes = X.shape[0] + X_test.shape[0]
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise InputError(f"{adjacency}: the adjacency must be square, got shape {A.shape}")
    if A.shape[0] != n_nodes:
        raise InputError(f"{adjacency} has {A.shape[0]} nodes but {path} has {X.shape[0]} training + "
                         f"{X_test.shape[0]} test rows = {n_nodes} (nodes are training rows, then test rows)")
    A = sp.csr_matrix(A)
    if A.nnz and A.data.min() < 0:
        raise InputError(f"{adjacency} has negative edge weights")
    features = propagate(normalized_adjacency(A), np.vstack([X, X_test]).astype(np.float64), hops)
    features = features.astype(X.dtype if X.dtype.kind == "f" else np.float32)
    n = X.shape[0]
    note = f"graph-augmented [A^{hops}X..AX,X] with {os.path.basename(adjacency)}"
    previous = str(attrs.get("preprocessing", ""))
    write_dataset(out, features[:n], y, features[n:] if X_test.shape[0] else None,
                  y_test if X_test.shape[0] else None, name=str(attrs.get("name", "")) + "-graph",
                  n_classes=attrs.get("n_classes"), preprocessing=f"{previous}; {note}" if previous else note)
    return {"out": out, "nodes": n_nodes, "edges": int(A.nnz), "hops": hops,
            "features": int(features.shape[1]), "n_train": n, "n_test": int(X_test.shape[0])}
