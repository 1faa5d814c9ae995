"""HDF5 datasets, read by every rank as its own contiguous slab of rows.

On-disk format (rows are samples, as users produce them):

- ``X``  float, N x d            training features
- ``y``  integer, N              training labels in ``0 .. n_classes-1``
- ``X_test``, ``y_test``         optional held-out split, same width
- attributes: ``name``, ``n_classes``, ``preprocessing`` (free text), ``classes`` (optional names)

In memory samples are columns (``d x n_local``), as in the ADMM papers. Every check runs on every
rank and the ranks agree on the verdict before anything collective happens (``Grid.agree``).
"""

import os
from dataclasses import dataclass
from importlib import resources

import h5py
import numpy as np

from admm_mpi.files import hdf5_open_problem, hdf5_reason

BUNDLED = {"digits": "digits.h5"}
READ_ROWS = 8192  # rows per read when converting the stored dtype (bounds the float64 copy)


def resolve_path(name):
    """A bundled data set name (``digits``) or a file path."""
    if name in BUNDLED:
        return str(resources.files("admm_mpi") / "datasets" / BUNDLED[name])
    return os.fspath(name)


@dataclass
class Shard:
    """This rank's columns of a data set plus the global facts every rank shares."""

    X: np.ndarray            # d x n_local
    y: np.ndarray            # n_local
    X_test: np.ndarray       # d x n_test_local (0 columns when the file has no test split)
    y_test: np.ndarray
    n_total: int
    n_test_total: int
    n_features: int
    n_classes: int
    name: str
    start: int               # global index of this rank's first training row
    Y: np.ndarray = None     # real-valued targets (outputs x n_local) for regression; None: classes


def _check_layout(f, path):
    """Problem with the file's datasets and shapes, or None."""
    for key in ("X", "y"):
        if key not in f:
            return f"{path}: no dataset {key!r} (found {sorted(f.keys())}); expected X (N x d) and y (N)"
    X, y = f["X"], f["y"]
    if X.ndim != 2 or y.ndim != 1:
        return f"{path}: X must be 2-D (N x d) and y 1-D (N), got shapes {X.shape} and {y.shape}"
    if X.shape[0] != y.shape[0]:
        return f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]} labels"
    if X.shape[0] == 0 or X.shape[1] == 0:
        return f"{path}: X is empty (shape {X.shape})"
    if ("X_test" in f) != ("y_test" in f):
        return f"{path}: X_test and y_test must be given together"
    if "X_test" in f:
        Xt, yt = f["X_test"], f["y_test"]
        if Xt.ndim != 2 or yt.ndim != 1 or Xt.shape[0] != yt.shape[0]:
            return f"{path}: X_test {Xt.shape} and y_test {yt.shape} do not match"
        if Xt.shape[1] != X.shape[1]:
            return f"{path}: X_test has {Xt.shape[1]} features but X has {X.shape[1]}"
    for key in ("X", "X_test"):
        if key in f and f[key].dtype.kind not in "fiu":
            return f"{path}: {key} has non-numeric dtype {f[key].dtype}"
    for key in ("y", "y_test"):
        if key in f and f[key].dtype.kind not in "iuf":
            return f"{path}: {key} has non-numeric dtype {f[key].dtype}"
    return None


def _n_classes_problem(value, path, n_samples):
    """Problem with the file's ``n_classes`` attribute, or None.

    Accepted: a whole number from 1 to the number of samples in the file (train + test). Classes
    may be missing from the labels (a subset of a larger data set), but more classes than
    samples means the attribute is damaged, and the targets and output layer are that wide.
    """
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        whole, value = True, int(value)
    if not whole:
        return f"{path}: the n_classes attribute must be a whole number, got {value!r}"
    if not 1 <= value <= n_samples:
        return (f"{path}: the n_classes attribute is {int(value)}, outside 1..{n_samples} (at most one class per "
                f"sample of the file's {n_samples} train and test samples)")
    return None


def _read_rows(dataset, start, stop, dtype, key):
    """Rows ``start..stop`` of ``dataset`` as ``dtype``, read in blocks; ``(rows, problem)``.

    A finite value too large for ``dtype`` (1e39 in a float64 file read as float32) is reported
    as such, before the cast would turn it into Inf.
    """
    dtype = np.dtype(dtype)
    stored = dataset.dtype
    limit = None
    if stored.kind == "f" and dtype.kind == "f" and np.finfo(stored).max > np.finfo(dtype).max:
        limit = np.finfo(dtype).max
    rows = np.empty((stop - start, *dataset.shape[1:]), dtype)
    for s in range(start, stop, READ_ROWS):
        block = dataset[s:min(s + READ_ROWS, stop)]
        if limit is not None:
            too_big = np.isfinite(block) & (np.abs(block) > limit)
            if too_big.any():
                r, c = np.argwhere(too_big)[0]
                return None, (f"{key} value {block[r, c]:.6g} at row {s + r}, column {c} overflows {dtype.name} "
                              f"(largest {limit:.4g}); rescale the data or use float64")
        rows[s - start:s - start + block.shape[0]] = block
    return rows, None


def _labels(raw, key):
    """Integer labels, or a message if they are not whole numbers."""
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            return None, f"{key} holds non-integer labels"
    return raw.astype(np.int64), None


def _check_values(X, y, key_x, key_y, n_classes, offset):
    if X.size and not np.all(np.isfinite(X)):
        row = offset + int(np.argwhere(~np.isfinite(X))[0][0])
        return f"{key_x} contains NaN or Inf (first at row {row})"
    if y.size and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        bad = y[(y < 0) | ((y >= n_classes) if n_classes is not None else False)][0]
        return f"{key_y} has label {bad} outside 0..{n_classes - 1 if n_classes else 'n'}"
    return None


def load_shard(path, grid, dtype=np.float64, part=None):
    """Read this rank's slab of the training (and test) rows of the HDF5 file at ``path``.

    ``part`` is the grid whose ranks split the rows (default ``grid``; on a layer × data grid,
    the data shards of this rank's layer group); ``grid`` is the one that agrees on errors.

    Raises :class:`InputError` on every rank if any rank finds a problem: missing or unreadable
    file, wrong dataset names or shapes, fewer samples than ranks, NaN/Inf, bad labels.
    """
    path = resolve_path(path)
    problem = None
    meta = None
    try:
        with h5py.File(path, "r") as f:
            problem = _check_layout(f, path)
            if problem is None:
                n, d = f["X"].shape
                n_test = f["X_test"].shape[0] if "X_test" in f else 0
                n_classes = f.attrs.get("n_classes")
                if n_classes is not None:
                    problem = _n_classes_problem(n_classes, path, n + n_test)
                name = f.attrs.get("name", os.path.basename(path))
                meta = (n, d, n_test, None if n_classes is None or problem else int(n_classes), str(name))
    except FileNotFoundError:
        problem = f"data file {path} does not exist"
    except OSError as exc:
        problem = hdf5_open_problem(path, exc)
    grid.agree(problem)

    n, d, n_test, n_classes, name = meta
    part = part or grid
    if n < part.size:
        shards = f"{part.size} ranks" if part is grid else f"{part.size} data shards of a layer group"
        problem = f"{path} has {n} training samples, fewer than the {shards}; use fewer ranks"
    grid.agree(problem)

    start, stop = part.block_range(n)
    t_start, t_stop = part.block_range(n_test)
    try:
        with h5py.File(path, "r") as f:
            X, problem_x = _read_rows(f["X"], start, stop, dtype, "X")
            y, problem = _labels(np.asarray(f["y"][start:stop]), "y")
            if n_test:
                X_test, problem_xt = _read_rows(f["X_test"], t_start, t_stop, dtype, "X_test")
                y_test, problem_t = _labels(np.asarray(f["y_test"][t_start:t_stop]), "y_test")
            else:
                X_test, y_test, problem_t, problem_xt = np.empty((0, d), dtype), np.empty(0, np.int64), None, None
        problem = problem_x or problem or problem_xt or problem_t
    except OSError as exc:  # a damaged chunk in this rank's slab
        problem = f"cannot read rows {start}..{stop} of {path} ({hdf5_reason(exc)})"
    grid.agree(problem)

    if n_classes is None:  # not recorded: the largest label over all ranks decides
        local_max = max(int(y.max(initial=0)), int(y_test.max(initial=0)))
        n_classes = int(grid.allmax(np.array([local_max], dtype=np.int64))[0]) + 1
        if n_classes > n + n_test:  # the same bound as on the attribute: targets would be that wide
            grid.agree(f"{path}: labels go up to {n_classes - 1}, more classes than the file's {n + n_test} "
                       f"samples; relabel them 0..k-1 (admm-mpi data convert does) or set n_classes")
    problem = _check_values(X, y, "X", "y", n_classes, start) or _check_values(
        X_test, y_test, "X_test", "y_test", n_classes, t_start
    )
    grid.agree(problem)
    return Shard(
        X=np.ascontiguousarray(X.T),
        y=y,
        X_test=np.ascontiguousarray(X_test.T),
        y_test=y_test,
        n_total=n,
        n_test_total=n_test,
        n_features=d,
        n_classes=n_classes,
        name=name,
        start=start,
    )


def write_dataset(path, X, y, X_test=None, y_test=None, *, name="", n_classes=None, preprocessing="", classes=None):
    """Write arrays (rows = samples) in the admm-mpi HDF5 format, atomically."""
    tmp = f"{path}.tmp"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset("y", data=y)
        if X_test is not None:
            f.create_dataset("X_test", data=X_test)
            f.create_dataset("y_test", data=y_test)
        f.attrs["name"] = name
        f.attrs["n_classes"] = int(n_classes if n_classes is not None else int(np.max(y)) + 1)
        f.attrs["preprocessing"] = preprocessing
        if classes is not None:
            f.attrs["classes"] = [str(c) for c in classes]
    os.replace(tmp, path)
