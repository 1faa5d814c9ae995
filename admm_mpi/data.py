"""HDF5 datasets, read by every rank as its own contiguous slab of rows.

On-disk format (rows are samples, as users produce them):

- ``X``  float, N x d            training features
- ``y``  integer, N              training labels in ``0 .. n_classes-1``
- ``X_test``, ``y_test``         optional held-out split, same width
- ``X_val``, ``y_val``           optional validation split, same width (else ``train
                                 --validation-fraction`` holds out training rows)
- attributes: ``name``, ``n_classes``, ``preprocessing`` (free text), ``classes`` (optional names)
- group ``encoding``                a converted table's encoding (:mod:`admm_mpi.tables`), optional

In memory samples are columns (``d x n_local``), as in the ADMM papers. Every check runs on every
rank and the ranks agree on the verdict before anything collective happens (``Grid.agree``).

A validation split held out of ``X`` is chosen from the seed and the labels of *all* rows by
global row index (:func:`validation_rows`), so every rank count holds out the same rows; the
remaining training rows are then split in contiguous balanced blocks, as without one.
"""

import math
import os
from dataclasses import dataclass
from importlib import resources

import h5py
import numpy as np

from admm_mpi.files import hdf5_file, hdf5_open_problem, hdf5_reason, indirect_storage

BUNDLED = {"digits": "digits.h5"}
ENCODING_GROUP = "encoding"   # a converted table's encoding (admm_mpi.tables), copied into model.h5 by train
VALIDATION_STREAM = 0x76616C  # seeds the validation draw apart from the weights' and batches' streams
READ_BYTES = 64 << 20         # largest span of file rows read at once


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
    start: int               # index of this rank's first column among all training columns
    Y: np.ndarray = None     # real-valued targets (outputs x n_local) for regression; None: classes
    X_val: np.ndarray = None  # d x n_val_local (None: no validation split)
    y_val: np.ndarray = None
    n_val_total: int = 0
    validation_source: str = None  # "file" (X_val, y_val), "held_out" (rows of X), None
    val_start: int = 0       # index of this rank's first validation column among all validation columns


# ---- a fingerprint of the whole content, the same at any number of ranks -----------------------
# Each sample (a column) is hashed on its own, with its position, and the sample hashes are
# summed modulo 2**64: a sum does not depend on how the columns are split over ranks, so every
# rank hashes its own columns and the sums are added. A sample's hash is a weighted sum of its
# 32-bit words with odd weights (so changing any one word always changes it), plus its position,
# through the splitmix64 finaliser (so sums of different samples do not cancel by design). Two
# independent lanes give 128 bits. It detects changed, moved or missing data, not an adversary.
_MASK = (1 << 64) - 1
_LANES = ((0x9E3779B97F4A7C15, 0x5851F42D4C957F2D), (0xD1B54A32D192ED03, 0x2545F4914F6CDD1D))
_HASH_COLUMNS = 4096
_WEIGHTS = {}


def _word_weights(lane, n_words):
    key = (lane, n_words)
    if key not in _WEIGHTS:
        rng = np.random.default_rng([0x66707269, lane])
        _WEIGHTS[key] = rng.integers(0, 1 << 63, size=n_words, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return _WEIGHTS[key]


def _splitmix(h):
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def content_hash(columns, first):
    """``[lane0, lane1]``: the sums (mod 2**64) of the hashes of the samples in ``columns``
    (features x samples, or one label per sample), the first at position ``first``.

    Any backend's arrays (read to the host a block at a time); the sums of two shards' results
    (mod 2**64) are the result on the two shards' columns together.
    """
    if columns is None:
        return [0, 0]
    from admm_mpi.backend import to_host

    n = columns.shape[-1]
    totals = [0, 0]
    for s in range(0, n, _HASH_COLUMNS):
        block = to_host(columns[..., s:min(s + _HASH_COLUMNS, n)])  # some array libraries refuse slices past the end
        rows = np.ascontiguousarray(block.reshape(-1, block.shape[-1]).T)  # one sample per row
        words = rows.view(np.uint8).reshape(rows.shape[0], -1)
        words = np.pad(words, ((0, 0), (0, -words.shape[1] % 4))).view(np.uint32).astype(np.uint64)
        positions = np.arange(first + s, first + s + rows.shape[0], dtype=np.uint64)
        with np.errstate(over="ignore"):
            for lane, (offset, step) in enumerate(_LANES):
                h = (words * _word_weights(lane, words.shape[1])).sum(axis=1, dtype=np.uint64)
                h = _splitmix(h + np.uint64(offset) + positions * np.uint64(step))
                totals[lane] = (totals[lane] + int(h.sum(dtype=np.uint64))) & _MASK
    return totals


def data_fingerprint(shard, data_grid):
    """Collective over ``data_grid`` (the ranks that split the rows): the shapes and a content
    hash of the training features and labels (or targets) and of the validation split, the same
    on every rank of the grid and at any number of ranks."""
    labels = shard.Y if shard.Y is not None else shard.y
    local = [content_hash(shard.X, shard.start), content_hash(labels, shard.start),
             content_hash(shard.X_val, shard.val_start), content_hash(shard.y_val, shard.val_start)]
    summed = [[0, 0] for _ in local]
    for part in data_grid.gather_to_all(local):
        for total, lanes in zip(summed, part):
            total[0], total[1] = (total[0] + lanes[0]) & _MASK, (total[1] + lanes[1]) & _MASK
    hashes = [f"{a:016x}{b:016x}" for a, b in summed]
    return {"n_total": shard.n_total, "n_features": shard.n_features, "n_classes": shard.n_classes,
            "n_test_total": shard.n_test_total, "n_val_total": shard.n_val_total,
            "X": hashes[0], "y": hashes[1], "X_val": hashes[2], "y_val": hashes[3]}


FINGERPRINT_PARTS = {"n_total": "the number of training rows", "n_features": "the number of features",
                     "n_classes": "the number of classes", "n_test_total": "the number of test rows",
                     "n_val_total": "the number of validation rows", "X": "the training features",
                     "y": "the training labels", "X_val": "the validation features", "y_val": "the validation labels"}


def fingerprint_difference(saved, current):
    """What differs between two :func:`data_fingerprint` records, in words, or None."""
    differ = [what for key, what in FINGERPRINT_PARTS.items() if saved.get(key) != current.get(key)]
    return ", ".join(differ) if differ else None


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
    for split in ("test", "val"):
        kx, ky = f"X_{split}", f"y_{split}"
        if (kx in f) != (ky in f):
            return f"{path}: {kx} and {ky} must be given together"
        if kx in f:
            Xt, yt = f[kx], f[ky]
            if Xt.ndim != 2 or yt.ndim != 1 or Xt.shape[0] != yt.shape[0]:
                return f"{path}: {kx} {Xt.shape} and {ky} {yt.shape} do not match"
            if Xt.shape[1] != X.shape[1]:
                return f"{path}: {kx} has {Xt.shape[1]} features but X has {X.shape[1]}"
    for key in ("X", "X_test", "X_val"):
        if key in f and f[key].dtype.kind not in "fiu":
            return f"{path}: {key} has non-numeric dtype {f[key].dtype}"
    for key in ("y", "y_test", "y_val"):
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


def _labels(raw, key):
    """Integer labels, or a message if they are not whole numbers."""
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            return None, f"{key} holds non-integer labels"
    return raw.astype(np.int64), None


def _check_values(X, y, key_x, key_y, n_classes, rows):
    """Problem with the values, or None; ``rows`` are the file rows of ``X``'s rows (for the message)."""
    if X.size and not np.all(np.isfinite(X)):
        row = int(rows[int(np.argwhere(~np.isfinite(X))[0][0])])
        return f"{key_x} contains NaN or Inf (first at row {row})"
    if y.size and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        bad = y[(y < 0) | ((y >= n_classes) if n_classes is not None else False)][0]
        return f"{key_y} has label {bad} outside 0..{n_classes - 1 if n_classes else 'n'}"
    return None


def validation_rows(y, fraction, seed):
    """Sorted global indices of the rows of ``y`` held out for validation.

    Stratified: of each class's ``n_c`` rows, ``round(fraction * n_c)`` (at most ``n_c - 1``, so
    every class keeps a training row) are drawn from the seed. The result depends only on the
    labels of all rows, the fraction and the seed, never on the number of ranks.
    """
    y = np.asarray(y)
    if fraction <= 0 or y.size == 0:
        return np.empty(0, np.int64)
    rng = np.random.default_rng([VALIDATION_STREAM, seed])
    order = np.argsort(y, kind="stable")  # each class's rows, in increasing row order
    counts = np.unique(y, return_counts=True)[1]
    held = []
    for members in np.split(order, np.cumsum(counts)[:-1]):
        k = min(int(math.floor(fraction * members.size + 0.5)), members.size - 1)
        held.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(held)).astype(np.int64)


class _Overflow(ValueError):
    """A finite stored value too large for the working dtype (its message names where)."""


def _read_rows(dset, rows, dtype=None, key=None):
    """The rows ``rows`` (sorted global indices) of an HDF5 dataset, converted to ``dtype``.

    Read in contiguous spans of bounded size: a scattered selection costs about one pass over
    its range and little memory, not one read per row. A finite value too large for ``dtype``
    (1e39 in a float64 file read as float32) raises :class:`_Overflow` naming it, before the
    cast would turn it into Inf.
    """
    dtype = np.dtype(dtype or dset.dtype)
    limit = None
    if dset.dtype.kind == "f" and dtype.kind == "f" and np.finfo(dset.dtype).max > np.finfo(dtype).max:
        limit = np.finfo(dtype).max
    out = np.empty((rows.size, *dset.shape[1:]), dtype)
    row_bytes = max(1, int(np.prod(dset.shape[1:], dtype=np.int64)) * dset.dtype.itemsize)
    span = max(1, READ_BYTES // row_bytes)
    i = 0
    while i < rows.size:
        lo = int(rows[i])
        j = int(np.searchsorted(rows, lo + span, side="left"))
        block = dset[lo:int(rows[j - 1]) + 1][rows[i:j] - lo]
        if limit is not None:
            too_big = np.isfinite(block) & (np.abs(block) > limit)
            if too_big.any():
                r, c = np.argwhere(too_big)[0]
                raise _Overflow(f"{key} value {block[r, c]:.6g} at row {int(rows[i + r])}, column {c} overflows "
                                f"{dtype.name} (largest {limit:.4g}); rescale the data or use float64")
        out[i:j] = block
        i = j
    return out


def _read_meta(path):
    """``((n, d, n_test, n_val, n_classes, name), problem)`` from the file's layout."""
    try:
        with h5py.File(path, "r") as f:
            problem = indirect_storage(f, path) or _check_layout(f, path)
            if problem is not None:
                return None, problem
            n, d = f["X"].shape
            n_test = f["X_test"].shape[0] if "X_test" in f else 0
            n_val = f["X_val"].shape[0] if "X_val" in f else None  # (0: present but empty)
            n_classes = f.attrs.get("n_classes")
            if n_classes is not None:
                problem = _n_classes_problem(n_classes, path, n + n_test + (n_val or 0))
                if problem:
                    return None, problem
            name = f.attrs.get("name", os.path.basename(path))
            return (n, d, n_test, n_val, None if n_classes is None else int(n_classes), str(name)), None
    except FileNotFoundError:
        return None, f"data file {path} does not exist"
    except OSError as exc:
        return None, hdf5_open_problem(path, exc)


def _held_out_rows(path, fraction, seed):
    """``(global rows held out of X for validation (perhaps none), problem)``; every rank reads all labels."""
    try:
        with h5py.File(path, "r") as f:
            y, problem = _labels(np.asarray(f["y"][...]), "y")
    except OSError as exc:
        return None, f"cannot read the labels y of {path} ({hdf5_reason(exc)})"
    if problem:
        return None, problem
    return validation_rows(y, fraction, seed), None


def _read_split(f, part, n_train, held, d, dtype, read_test, read_val_file):
    """This rank's training, validation and test rows: ``{key: array}`` (rows = samples), with
    ``rows``, ``rows_val``, ``rows_test``: their row indices in the file's datasets.

    ``held``: the global rows of X held out for validation (None: none); the others are the
    training rows, split over ``part`` in contiguous balanced blocks.
    """
    start, stop = part.block_range(n_train)
    if held is None:
        rows = np.arange(start, stop)
    else:
        rows = np.delete(np.arange(f["X"].shape[0]), held)[start:stop]
    found = {"": (f["X"], f["y"], rows)}
    if held is not None:
        v0, v1 = part.block_range(held.size)
        found["_val"] = (f["X"], f["y"], held[v0:v1])
    elif read_val_file:
        found["_val"] = (f["X_val"], f["y_val"], np.arange(*part.block_range(f["X_val"].shape[0])))
    if read_test and "X_test" in f:
        found["_test"] = (f["X_test"], f["y_test"], np.arange(*part.block_range(f["X_test"].shape[0])))
    arrays = {"X_test": np.empty((0, d), dtype), "y_test": np.empty(0, np.int64)}
    for split, (X, y, split_rows) in found.items():
        arrays["X" + split] = _read_rows(X, split_rows, dtype, key="X" + split)
        arrays["y" + split] = _read_rows(y, split_rows)
        arrays["rows" + split] = split_rows
    return arrays


def _infer_classes(labels, grid, path, n_samples):
    """The number of classes from the largest training label over all ranks (a validation or test
    label beyond it is then an error: no training row teaches that class)."""
    local_max = int(labels["y"].max(initial=0))
    n_classes = int(grid.allmax(np.array([local_max], dtype=np.int64))[0]) + 1
    if n_classes > n_samples:  # the same bound as on the attribute: targets would be that wide
        grid.agree(f"{path}: labels go up to {n_classes - 1}, more classes than the file's {n_samples} "
                   "samples; relabel them 0..k-1 (admm-mpi data convert does) or set n_classes")
    return n_classes


def _validation_split(path, grid, n, n_val_file, fraction, seed, optional):
    """``(rows of the file's X_val (0: none), global rows of X held out (None: none))``: the file's
    own split when it has one (``n_val_file`` rows; None: no X_val), else ``fraction`` of X."""
    grid.agree(None if n_val_file != 0 else
               f"{path}: X_val and y_val hold no rows; fill them, or remove both (then --validation-fraction "
               "holds rows of X out)")
    if n_val_file or fraction <= 0:
        return n_val_file or 0, None
    return 0, _validation_rows(path, grid, n, fraction, seed, optional)


def _validation_rows(path, grid, n, fraction, seed, optional):
    """The global rows of ``X`` held out for validation (None if none and ``optional``); agreed on every rank."""
    held, problem = _held_out_rows(path, fraction, seed)
    grid.agree(problem)
    if held.size:
        return held
    # the same on every rank: each drew from all the labels
    grid.agree(None if optional else
               f"validation_fraction {fraction} holds out no row of the {n} training rows of "
               f"{path} (at most all but one row of each class); use a larger fraction")
    return None


def load_shard(path, grid, dtype=np.float64, part=None, *, validation_fraction=0.0, seed=0, read_test=True,
               validation_optional=False, read_validation=True):
    """Read this rank's slab of the training, validation and test rows of the HDF5 file at ``path``.

    ``part`` is the grid whose ranks split the rows (default ``grid``; on a layer × data grid,
    the data shards of this rank's layer group); ``grid`` is the one that agrees on errors.
    The validation split is the file's ``X_val``/``y_val`` when it has them, else
    ``validation_fraction`` of the rows of ``X`` (stratified, drawn from ``seed``), else none.
    ``read_test=False`` leaves the test split unread (empty; ``n_test_total`` still counts it).
    ``validation_optional``: a fraction that holds out no row (a tiny data set) leaves the run
    without validation rows instead of being an error (for the default fraction).
    ``read_validation=False``: no validation split at all, the file's ``X_val``, ``y_val`` neither
    read nor checked (evaluation and prediction use the training and test rows only).

    Raises :class:`InputError` on every rank if any rank finds a problem: missing or unreadable
    file, wrong dataset names or shapes, fewer samples than ranks, NaN/Inf, bad labels.
    """
    path = resolve_path(path)
    meta, problem = _read_meta(path)
    grid.agree(problem)
    n, d, n_test, n_val_file, n_classes, name = meta
    n_val_file, held = _validation_split(path, grid, n, n_val_file if read_validation else None,
                                         validation_fraction if read_validation else 0.0, seed, validation_optional)
    n_train = n - (0 if held is None else held.size)
    part = part or grid
    if n_train < part.size:
        shards = f"{part.size} ranks" if part is grid else f"{part.size} data shards of a layer group"
        problem = f"{path} has {n_train} training samples, fewer than the {shards}; use fewer ranks"
    grid.agree(problem)

    start = part.block_range(n_train)[0]
    try:
        with h5py.File(path, "r") as f:
            arrays = _read_split(f, part, n_train, held, d, dtype, read_test, bool(n_val_file))
    except _Overflow as exc:
        arrays, problem = None, str(exc)
    except OSError as exc:  # a damaged chunk in this rank's rows
        arrays, problem = None, f"cannot read the rows of {path} ({hdf5_reason(exc)})"
    grid.agree(problem)
    labels = {}
    for key in ("y", "y_val", "y_test"):
        if key in arrays:
            labels[key], problem = _labels(arrays[key], key)
            grid.agree(problem)

    if n_classes is None:  # not recorded: the largest training label over all ranks decides
        n_classes = _infer_classes(labels, grid, path, n + n_test + n_val_file)
    for split in ("", "_val", "_test"):
        if "y" + split in labels:
            problem = problem or _check_values(arrays["X" + split], labels["y" + split], "X" + split,
                                               "y" + split, n_classes, arrays.get("rows" + split))
    grid.agree(problem)
    has_val, n_held = "X_val" in arrays, 0 if held is None else held.size
    return Shard(X=np.ascontiguousarray(arrays["X"].T), y=labels["y"],
                 X_test=np.ascontiguousarray(arrays["X_test"].T), y_test=labels["y_test"], n_total=n_train,
                 n_test_total=n_test, n_features=d, n_classes=n_classes, name=name, start=start,
                 X_val=np.ascontiguousarray(arrays["X_val"].T) if has_val else None,
                 y_val=labels["y_val"] if has_val else None, n_val_total=n_val_file or n_held,
                 validation_source="file" if n_val_file else "held_out" if held is not None else None,
                 val_start=part.block_range(n_val_file or n_held)[0])


def write_dataset(path, X, y, X_test=None, y_test=None, *, name="", n_classes=None, preprocessing="", classes=None,
                  X_val=None, y_val=None):
    """Write arrays (rows = samples) in the admm-mpi HDF5 format, atomically."""
    tmp = f"{path}.tmp"
    with hdf5_file(tmp, "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset("y", data=y)
        for key, X_split, y_split in (("test", X_test, y_test), ("val", X_val, y_val)):
            if X_split is not None:
                f.create_dataset(f"X_{key}", data=X_split)
                f.create_dataset(f"y_{key}", data=y_split)
        f.attrs["name"] = name
        f.attrs["n_classes"] = int(n_classes if n_classes is not None else int(np.max(y)) + 1)
        f.attrs["preprocessing"] = preprocessing
        if classes is not None:
            f.attrs["classes"] = [str(c) for c in classes]
    os.replace(tmp, path)
