"""Convert user data (NPZ, CSV, tables, LIBSVM/svmlight, MNIST IDX, HDF5) to the admm-mpi HDF5 format.

Each input format is registered once (:func:`register_format`: its name, its file-name suffixes
and its reader). Tables -- CSV/TSV with a header row, text columns or missing cells, and Parquet
-- are encoded by :mod:`admm_mpi.tables` (format ``"table"``): the encoding (categories,
imputation values, scaling) is fitted on the training rows only, after the test and validation
rows are chosen, and stored in the output file's ``encoding`` group.

Every reader yields ``(X_chunk, y_chunk)`` blocks of rows, so a file larger than memory converts
in chunks: the writer appends each block to resizable HDF5 datasets. Optional steps:

- a stratified test split (``test_fraction``): labels are read first (they are small), the test
  rows are drawn per class with a seeded generator, then the rows stream to ``X`` or ``X_test``;
- a stratified validation split of the training rows (``validation_fraction``), written as
  ``X_val``/``y_val``: the rows ``train --validation-fraction F --seed S`` would hold out of the
  file converted without it (``data.validation_rows`` on the training rows' labels);
- standardisation (``standardize``): feature means and standard deviations of the *training*
  rows (neither test nor validation rows) are accumulated while writing, then the written
  datasets are rescaled in place, chunk by chunk (and stored as attributes so the same transform
  can be applied to new data).

Every class keeps at least one training row: a class's test rows are at most all but one of
its rows, and its validation rows at most all but one of the rest.
"""

import gzip
import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import h5py
import numpy as np

from admm_mpi.data import ENCODING_GROUP, validation_rows
from admm_mpi.files import create_file, hdf5_file, hdf5_open_problem, indirect_storage, reserve_space, write_problem
from admm_mpi.errors import InputError

TRAIN, TEST, VALIDATION = 0, 1, 2  # where a row goes
SPLIT_KEYS = {TRAIN: ("X", "y"), TEST: ("X_test", "y_test"), VALIDATION: ("X_val", "y_val")}


@dataclass(frozen=True)
class Format:
    """An input format: its name, the file-name endings it is detected by (after ``.gz``), and
    ``read(*paths, chunk, **options)``, which yields ``(X, y)`` blocks of at most ``chunk`` rows;
    ``files`` paths are given as one comma-separated argument (IDX: ``IMAGES,LABELS``)."""

    name: str
    suffixes: tuple
    read: Callable = field(repr=False)
    files: int = 1


FORMATS = {}


def register_format(name, suffixes, read, files=1):
    """Register an input format once: ``detect_format``, ``reader`` and ``--format`` know it from then on."""
    FORMATS[name] = Format(name, tuple(suffixes), read, files)


def detect_format(path):
    """The registered format whose suffix ends the file name (``.gz`` aside)."""
    name = os.path.basename(path.split(",")[0]).lower().removesuffix(".gz")
    for fmt in FORMATS.values():
        if name.endswith(fmt.suffixes):
            return fmt.name
    raise InputError(f"cannot tell the format of {path}; pass --format {{{','.join(FORMATS)}}}")


def _open_text(path):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


# ---- readers: each yields (X, y) blocks of at most `chunk` rows -------------------------------
def read_npz(path, chunk, x_key="X", y_key="y"):
    with np.load(path) as f:
        if x_key not in f or y_key not in f:
            raise InputError(f"{path}: needs arrays {x_key!r} and {y_key!r}, found {sorted(f.files)}")
        X, y = f[x_key], f[y_key]
    if X.ndim == 0 or y.ndim == 0 or X.shape[0] != y.shape[0]:
        raise InputError(f"{path}: {x_key} {X.shape} and {y_key} {y.shape} do not have one row per label")
    X = X.reshape(X.shape[0], -1)
    for s in range(0, X.shape[0], chunk):
        yield X[s:s + chunk], y[s:s + chunk]


def read_csv(path, chunk, label_column=0, delimiter=None, skip_header=0):
    """Numeric delimited text, one sample per line; ``label_column`` (may be negative) is y."""
    with _open_text(path) as f:
        for _ in range(skip_header):
            next(f, None)
        while True:
            lines = [line for _, line in zip(range(chunk), f)]
            if not lines:
                return
            lines = [line for line in lines if line.strip()]
            if not lines:
                continue
            try:
                block = np.loadtxt(lines, delimiter=delimiter, ndmin=2)
            except ValueError as exc:
                raise InputError(f"{path}: not numeric delimited text ({exc})") from None
            if not -block.shape[1] <= label_column < block.shape[1]:
                raise InputError(f"{path}: --label {label_column} is out of range for rows of "
                                 f"{block.shape[1]} columns (0..{block.shape[1] - 1}, or negative from the end)")
            y = block[:, label_column]
            yield np.delete(block, label_column % block.shape[1], axis=1), y


def _libsvm_line(line, path, number):
    """``(label, [(index, value), ...])`` of one LIBSVM line, or raise InputError naming it."""
    items = line.split("#")[0].split()
    if not items:
        return None
    where = f"{path} line {number}"
    try:
        label = float(items[0])
    except ValueError:
        raise InputError(f"{where}: label {items[0]!r} is not a number") from None
    pairs = []
    for item in items[1:]:
        index, sep, value = item.partition(":")
        if not sep:
            raise InputError(f"{where}: {item!r} is not an index:value pair")
        try:
            pairs.append((int(index), float(value)))
        except ValueError:
            raise InputError(f"{where}: {item!r} needs an integer index and a numeric value") from None
        if pairs[-1][0] < 0:
            raise InputError(f"{where}: feature index {pairs[-1][0]} is negative")
    return label, pairs


def _libsvm_index_range(path):
    """Lowest and highest feature index; checks every line (the second pass then trusts them)."""
    lowest, highest = None, -1
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            parsed = _libsvm_line(line, path, number)
            for idx, _ in parsed[1] if parsed else []:
                highest = max(highest, idx)
                lowest = idx if lowest is None else min(lowest, idx)
    return (lowest if lowest is not None else 1), highest


def read_libsvm(path, chunk, n_features=None, zero_based="auto"):
    """svmlight/LIBSVM text ``label idx:value ...``.

    Indices are 1-based (LIBSVM) unless the file uses index 0 anywhere (``zero_based="auto"``,
    as scikit-learn decides; its ``dump_svmlight_file`` writes 0-based files).
    """
    lowest, highest = _libsvm_index_range(path)
    if zero_based == "auto":
        zero_based = lowest == 0
    shift = 0 if zero_based else 1
    width = n_features or (highest + 1 - shift)
    if highest + 1 - shift > width:
        raise InputError(f"{path}: feature index {highest} is beyond the {width} features given")
    with _open_text(path) as f:
        number = 0
        while True:
            lines = [line for _, line in zip(range(chunk), f)]
            if not lines:
                return
            rows = [_libsvm_line(line, path, number + i) for i, line in enumerate(lines, 1)]
            number += len(lines)
            rows = [r for r in rows if r]
            X = np.zeros((len(rows), width))
            y = np.empty(len(rows))
            for i, (label, pairs) in enumerate(rows):
                y[i] = label
                for idx, value in pairs:
                    X[i, idx - shift] = value
            yield X, y


def _idx_open(path):
    f = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    magic = f.read(4)
    if len(magic) != 4 or magic[0] != 0 or magic[1] != 0:
        raise InputError(f"{path} is not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if magic[2] not in dtypes:
        f.close()
        raise InputError(f"{path}: IDX type code 0x{magic[2]:02X} is not one of "
                         f"{', '.join(f'0x{code:02X}' for code in dtypes)}")
    dtype = np.dtype(dtypes[magic[2]])
    header = f.read(4 * magic[3])
    if magic[3] == 0 or len(header) != 4 * magic[3]:
        f.close()
        raise InputError(f"{path}: IDX header with {magic[3]} dimensions is truncated or empty")
    shape = struct.unpack(">" + "I" * magic[3], header)
    return f, dtype, shape


def read_idx(images, labels, chunk):
    """MNIST-style IDX pair (images, labels), gzip or not, streamed (``--format idx``: IMAGES,LABELS)."""
    fx, dtype, shape = _idx_open(images)
    fy, ydtype, yshape = _idx_open(labels)
    if shape[0] != yshape[0]:
        raise InputError(f"{images} has {shape[0]} images but {labels} has {yshape[0]} labels")
    width = int(np.prod(shape[1:]))
    with fx, fy:
        for s in range(0, shape[0], chunk):
            rows = min(chunk, shape[0] - s)
            x_bytes, y_bytes = fx.read(rows * width * dtype.itemsize), fy.read(rows * ydtype.itemsize)
            if len(x_bytes) != rows * width * dtype.itemsize or len(y_bytes) != rows * ydtype.itemsize:
                raise InputError(f"{images},{labels}: the files end before the {shape[0]} samples their headers give")
            yield np.frombuffer(x_bytes, dtype=dtype).reshape(rows, width), np.frombuffer(y_bytes, dtype=ydtype)


def virtual_sources_problem(f, path):
    """With ``--allow-virtual``: one line naming a virtual dataset's source file that is missing
    or unreadable (HDF5 would read zeros in its place), or a dataset with external raw storage
    (always refused: it reads any file's bytes), else None."""
    for name in _datasets(f):
        dset = f[name]
        if dset.external:
            return indirect_storage(f, path)
        if dset.is_virtual:
            for source in dset.virtual_sources():
                file = source.file_name
                where = path if file == "." else os.path.join(os.path.dirname(path), file) if not os.path.isabs(file) else file
                if not (os.path.isfile(where) and os.access(where, os.R_OK)):
                    return f"{path}: dataset {name!r} is virtual and its source {file} is missing or unreadable"
    return None


def _datasets(f):
    names = []
    f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return names


def read_hdf5(path, chunk, x_key="X", y_key="y", allow_virtual=False):
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(hdf5_open_problem(path, exc)) from None
    with f:
        if x_key not in f or y_key not in f:
            raise InputError(f"{path}: needs datasets {x_key!r} and {y_key!r}, found {sorted(f.keys())}")
        problem = virtual_sources_problem(f, path) if allow_virtual else indirect_storage(f, path)
        if problem:
            raise InputError(problem)
        X, y = f[x_key], f[y_key]
        for s in range(0, X.shape[0], chunk):
            yield X[s:s + chunk].reshape(min(chunk, X.shape[0] - s), -1), y[s:s + chunk]


def read_table(path, chunk, encoding, header=None, delimiter=None, report=None):
    """A table's encoded chunks (:func:`admm_mpi.tables.read_encoded`; pandas, and pyarrow for Parquet)."""
    return tables_module().read_encoded(path, chunk, encoding, header, delimiter, report)


def tables_module():
    """:mod:`admm_mpi.tables`, or one line saying how to install what it needs."""
    try:
        from admm_mpi import tables
    except ImportError:
        raise InputError("reading tables needs pandas: pip install 'admm-mpi[tables]'") from None
    return tables


register_format("npz", (".npz",), read_npz)
register_format("csv", (".csv", ".tsv", ".txt", ".dat"), read_csv)
register_format("table", (".parquet", ".pq"), read_table)
register_format("libsvm", (".svm", ".libsvm", ".svmlight"), read_libsvm)
register_format("idx", ("-ubyte", "-idx", ".idx"), read_idx, files=2)
register_format("hdf5", (".h5", ".hdf5"), read_hdf5)


def reader(path, fmt, chunk, **options):
    """Checked chunks of ``path`` in format ``fmt`` (default: detected); for a format of two
    files (IDX), ``path`` is ``FIRST,SECOND``."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    paths = path.split(",") if FORMATS[fmt].files > 1 else [path]
    if len(paths) != FORMATS[fmt].files:
        raise InputError(f"{fmt} input is {FORMATS[fmt].files} files given as one argument FIRST,SECOND (IDX: "
                         "IMAGES,LABELS, e.g. train-images-idx3-ubyte.gz,train-labels-idx1-ubyte.gz)")
    for part in paths:
        if not os.path.exists(part):
            raise InputError(f"input file {part} does not exist")
    return _guarded(FORMATS[fmt].read(*paths, chunk, **options), path)


def chunk_problem(X, y, path, first):
    """Why a reader's chunk (rows ``first``...) cannot be converted, or None: features must be a
    2-D array of real numbers, labels one finite value per row (never silently a class of NaN,
    nor the real part of a complex number)."""
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2:
        return f"{path}: features must be 2-D (rows x columns), got shape {X.shape}"
    if X.dtype.kind not in "biuf":
        what = "complex" if X.dtype.kind == "c" else f"non-numeric ({X.dtype})"
        return f"{path}: features are {what}; admm-mpi trains on real numbers only"
    if y.ndim != 1:
        hint = " (one-hot labels: pass the class index of each row, e.g. y.argmax(1))" if y.ndim == 2 else ""
        return f"{path}: labels must be one value per row (1-D), got shape {y.shape}{hint}"
    if y.shape[0] != X.shape[0]:
        return f"{path}: {X.shape[0]} rows of features but {y.shape[0]} labels"
    if y.dtype.kind == "c" or (y.dtype.kind not in "biufUS"):
        return f"{path}: labels have unsupported type {y.dtype}"
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        row = first + int(np.flatnonzero(~np.isfinite(y))[0])
        return f"{path}: label at row {row} is {y[row - first]} (labels must be finite)"
    return None


def _guarded(chunks, path):
    """A reader's chunks, each checked (:func:`chunk_problem`); a failure to read or parse the
    input becomes one line naming it."""
    first = 0
    try:
        for X, y in chunks:
            problem = chunk_problem(X, y, path, first)
            if problem:
                raise InputError(problem)
            first += len(y)
            yield X, y
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # gzip, zip, text decoding, npz
        reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc).splitlines()[0]
        raise InputError(f"cannot read {path}: {reason}") from None


# ---- writer -----------------------------------------------------------------------------------
def convert(inputs, out, **settings):
    """Convert ``inputs`` (and optional ``test_inputs``) to ``out``; returns a summary dict.

    Labels are mapped to ``0..k-1`` in sorted order of their original values (recorded as the
    ``classes`` attribute). Features are divided by ``scale`` (e.g. 255 for 8-bit pixels). The
    output is written to ``out.tmp`` and renamed when complete; on any failure the ``.tmp`` is
    removed, so no partial output is left. ``out`` is checked for writing before any work.
    """
    tmp = f"{out}.tmp"
    scale = settings.get("scale", 1.0)
    if not (np.isfinite(scale) and scale > 0):
        raise InputError(f"--scale must be a finite positive number, got {scale}")
    problem = f"cannot write {out}: it is a directory" if os.path.isdir(out) else None
    try:
        if problem is None:
            create_file(tmp).close()
            os.remove(tmp)
    except OSError as exc:
        problem = write_problem(out, exc)
    if problem:
        raise InputError(problem)
    try:
        summary = _convert(inputs, tmp, **settings)
        os.replace(tmp, out)
    except BaseException as exc:
        if os.path.isfile(tmp) and not os.path.islink(tmp):  # ours, partly written
            os.remove(tmp)
        if isinstance(exc, OSError):  # the readers turn their own failures into InputError
            raise InputError(write_problem(out, exc)) from None
        raise
    return {"out": out, **summary}


def _label_pass(inputs, fmt, chunk, test_inputs, options):
    """Pass 1 over the labels (small): ``(labels, test labels or None, width)``."""
    labels, width = [], 0
    for X, y in reader(inputs, fmt, chunk, **options):
        labels.append(np.asarray(y))
        width = max(width, X.shape[1])
    y_all = np.concatenate(labels) if labels else np.empty(0)
    if y_all.size == 0:
        raise InputError(f"{inputs} holds no samples")
    test_labels = None
    if test_inputs:
        test_labels = np.concatenate([np.asarray(y) for _, y in reader(test_inputs, fmt, chunk, **options)])
    return y_all, test_labels, width


def split_rows(y, test_fraction, validation_fraction, seed, test_file=False):
    """Where each row of labels ``y`` goes: TRAIN, TEST or VALIDATION (int8 per row).

    Test rows: ``round(test_fraction * n_c)`` of each class's ``n_c`` rows (at most ``n_c - 1``),
    drawn from ``seed`` class by class in sorted order; validation rows: the rows ``train
    --validation-fraction F --seed S`` holds out of the remaining training rows.
    """
    split = np.full(y.size, TRAIN, dtype=np.int8)
    if test_fraction:
        if test_file:
            raise InputError("give either a test file or a test fraction, not both")
        _check_fraction("test", test_fraction)
        rng = np.random.default_rng(seed)
        for c in np.unique(y):  # stratified: the same fraction of every class, all but one row at most
            members = np.flatnonzero(y == c)
            k = min(int(round(test_fraction * members.size)), members.size - 1)
            split[rng.choice(members, size=k, replace=False)] = TEST
    if validation_fraction:
        _check_fraction("validation", validation_fraction)
        training = np.flatnonzero(split == TRAIN)
        held = validation_rows(y[training], validation_fraction, seed)
        if held.size == 0:
            raise InputError(f"validation fraction {validation_fraction} holds out no row of {training.size} "
                             "training rows (every class keeps at least one training row)")
        split[training[held]] = VALIDATION
    return split


def _check_fraction(name, fraction):
    if not 0 < fraction < 1:  # (NaN fails too)
        raise InputError(f"{name} fraction must lie in (0, 1), got {fraction}")


def _appender(f, classes, chunk, dtype):
    """``append(key_x, key_y, X, y)``: rows added to growing datasets, labels as class indices."""
    def append(key_x, key_y, X, y):
        if key_x not in f:
            f.create_dataset(key_x, shape=(0, X.shape[1]), maxshape=(None, X.shape[1]), dtype=dtype,
                             chunks=(min(chunk, 4096), X.shape[1]))
            f.create_dataset(key_y, shape=(0,), maxshape=(None,), dtype=np.int64)
        dx, dy = f[key_x], f[key_y]
        if dx.shape[1] != X.shape[1]:
            raise InputError(f"rows of different widths: {dx.shape[1]} and {X.shape[1]}")
        n = dx.shape[0]
        dx.resize(n + X.shape[0], axis=0)
        dy.resize(n + X.shape[0], axis=0)
        dx[n:] = X
        dy[n:] = np.searchsorted(classes, y)
    return append


def _write_rows(f, inputs, fmt, chunk, options, split, append, scale):
    """Pass 2: the rows, each to its split; returns the training rows' sums, squares, count."""
    sums = sq = None
    n_train = offset = 0
    for X, y in reader(inputs, fmt, chunk, **options):
        X, y = np.asarray(X, dtype=np.float64) / scale, np.asarray(y)
        if not np.all(np.isfinite(X)):
            hint = " (to fill missing cells, read it as a table: --missing mean|median|constant|drop)" \
                if fmt == "csv" else ""
            raise InputError(f"{inputs} contains NaN or Inf near row {offset}{hint}")
        where = split[offset:offset + X.shape[0]]
        for code, (key_x, key_y) in SPLIT_KEYS.items():
            rows = where == code
            if rows.any():
                append(key_x, key_y, X[rows], y[rows])
        train_X = X[where == TRAIN]
        if train_X.shape[0]:
            sums = train_X.sum(0) if sums is None else sums + train_X.sum(0)
            sq = (train_X ** 2).sum(0) if sq is None else sq + (train_X ** 2).sum(0)
            n_train += train_X.shape[0]
        offset += X.shape[0]
    return sums, sq, n_train


def _standardize(f, sums, sq, n_train, chunk):
    """Rescale every split with the training rows' mean and standard deviation, in place;
    returns them."""
    mean = sums / n_train
    std = np.sqrt(np.maximum(sq / n_train - mean ** 2, 0))
    std[std == 0] = 1.0  # constant features stay constant (at 0)
    for key in ("X", "X_test", "X_val"):
        if key in f:
            d = f[key]
            for s in range(0, d.shape[0], chunk):
                d[s:s + chunk] = (d[s:s + chunk] - mean) / std
    f.attrs["standardize_mean"] = mean
    f.attrs["standardize_std"] = std
    return mean, std


def _is_index(label):
    try:
        int(str(label))
        return True
    except ValueError:
        return False


def _holds_text(path, delimiter, lines=50):
    """Whether the first ``lines`` non-empty lines of a delimited text file hold a field that is
    not a number (a header row, a text column, an empty or ``?`` cell): then it is read as a table."""
    try:
        with _open_text(path) as f:
            for _, line in zip(range(lines), (line for line in f if line.strip())):
                for cell in line.strip().split(delimiter):
                    float(cell)
    except ValueError:
        return True
    except (OSError, EOFError, UnicodeDecodeError):
        return False  # the numeric reader names the problem
    return False


def input_format(inputs, fmt, label=None, delimiter=None, table=None, header=None):
    """The format ``inputs`` is read in: ``fmt``, else detected from the file name. Delimited text
    is read as a table (:mod:`admm_mpi.tables`) when table settings, ``header`` or a label name
    are given, or when its first lines hold something other than numbers; numeric text stays
    with the numeric reader."""
    fmt = fmt or detect_format(inputs)
    asked = [k for k, v in (table or {}).items() if v not in (None, ())]
    if header is not None:
        asked.append("header")
    if fmt == "csv" and (asked or (label is not None and not _is_index(label)) or _holds_text(inputs, delimiter)):
        return "table"
    if fmt not in ("csv", "table") and (asked or label is not None or delimiter):
        given = asked + (["label"] if label is not None else []) + (["delimiter"] if delimiter else [])
        raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to delimited text and "
                         f"tables only, not to {fmt} input")
    return fmt


def _table_labels(tables, inputs, test_inputs, spec, header, delimiter, chunk):
    """The label pass of a table conversion: the tables, and their labels over one class list.
    A missing label is an error unless ``missing="drop"`` (labels are never filled)."""
    opened = [tables.open_table(path, header=header, delimiter=delimiter) for path in (inputs, test_inputs) if path]
    labels = tables.read_labels(opened, spec, chunk)
    for table, count in zip(opened, labels.counts):
        problem = tables.missing_label_problem(table, spec, count.missing_label)
        if problem:
            raise InputError(problem)
    return opened, labels


def _convert(inputs, tmp, *, fmt=None, test_inputs=None, test_fraction=0.0, validation_fraction=0.0,
             standardize=False, chunk=10000, seed=0, name=None, dtype=np.float32, scale=1.0, label=None,
             delimiter=None, table=None, header=None, **options):
    """The conversion of :func:`convert`, written to ``tmp``."""
    fmt = input_format(inputs, fmt, label, delimiter, table, header)
    encoding = data_report = None
    if fmt == "table":
        if scale != 1.0:
            raise InputError("--scale applies to numeric input; a table's features are rescaled by --standardize")
        tables = tables_module()
        spec = tables.TableSpec(label=0 if label is None else label,
                                **{k: v for k, v in (table or {}).items() if v is not None})
        opened, labels = _table_labels(tables, inputs, test_inputs, spec, header, delimiter, chunk)
        y_all = labels.codes[0]
        test_labels = labels.codes[1] if test_inputs else None
        classes, class_names = np.arange(len(labels.classes)), list(labels.classes)
    else:
        if fmt == "csv":
            options.update(label_column=int(label or 0), delimiter=delimiter)
        y_all, test_labels, width = _label_pass(inputs, fmt, chunk, test_inputs, options)
        classes = np.unique(y_all if test_labels is None else np.concatenate([y_all, test_labels]))
        class_names = [str(c) for c in classes]
    split = split_rows(y_all, test_fraction, validation_fraction, seed, test_file=bool(test_inputs))
    if fmt == "table":  # categories, imputation, identifiers: from the training rows only
        encoding, data_report = tables.fit_encoding(opened[0], spec, chunk=chunk, train_rows=split == TRAIN,
                                                    classes=labels)
        transformed = tables.TransformReport()
        options = {"encoding": encoding, "header": header, "delimiter": delimiter, "report": transformed}
        width = encoding.n_features
    n_rows = y_all.size + (0 if test_labels is None else test_labels.size)
    reserve_space(tmp, n_rows * (width * np.dtype(dtype).itemsize + 8))  # a full disk fails here, cleanly
    with hdf5_file(tmp, "w") as f:
        append = _appender(f, classes, chunk, dtype)
        sums, sq, n_train = _write_rows(f, inputs, fmt, chunk, options, split, append, scale)
        if test_inputs:
            for X, y in reader(test_inputs, fmt, chunk, **options):
                append("X_test", "y_test", np.asarray(X, dtype=np.float64) / scale, y)
        if "X_test" in f and f["X_test"].shape[1] != f["X"].shape[1]:
            raise InputError("test rows have a different width than training rows")
        preprocessing = f"converted from {inputs}" + (f" and {test_inputs}" if test_inputs else "")
        if encoding is not None:
            preprocessing += (f"; table encoding of {len(encoding.used_columns)} columns into {encoding.n_features} "
                              "features, fitted on the training rows (see the encoding group)")
        if scale != 1.0:
            preprocessing += f"; divided by {scale}"
        if test_fraction:
            preprocessing += f"; stratified test split {test_fraction} (seed {seed})"
        if validation_fraction:
            preprocessing += f"; stratified validation split {validation_fraction} of the training rows (seed {seed})"
        if standardize:
            mean, std = _standardize(f, sums, sq, n_train, chunk)
            preprocessing += "; standardised with the training rows' mean and std"
            if encoding is not None:
                encoding = encoding.with_standardization(mean, std)
        f.attrs["name"] = name or os.path.basename(inputs.split(",")[0])
        f.attrs["n_classes"] = len(classes)
        f.attrs["classes"] = class_names
        f.attrs["preprocessing"] = preprocessing
        summary = {"format": fmt, "n_train": int(f["X"].shape[0]),
                   "n_test": int(f["X_test"].shape[0]) if "X_test" in f else 0,
                   "n_validation": int(f["X_val"].shape[0]) if "X_val" in f else 0,
                   "n_features": int(f["X"].shape[1]), "n_classes": len(classes)}
        if encoding is not None:
            report = {**data_report.as_dict(), "class_counts": _class_balance(f, class_names),
                      "converted_rows": transformed.as_dict()}
            tables.save_encoding(f, encoding, dtype, report)
            summary["table"] = report
    return summary


def _class_balance(f, class_names):
    """``{split: {class name: rows}}`` of a data file's splits."""
    balance = {}
    for split, code in (("train", TRAIN), ("validation", VALIDATION), ("test", TEST)):
        key_y = SPLIT_KEYS[code][1]
        if key_y in f:
            counts = np.bincount(f[key_y][...].astype(np.int64), minlength=len(class_names))
            balance[split] = {str(n): int(c) for n, c in zip(class_names, counts)}
    return balance


def info(path):
    """Shapes, classes and class balance of an admm-mpi HDF5 file, and the data report of a
    converted table (its encoding decisions)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(hdf5_open_problem(path, exc)) from None
    with f:
        if "X" not in f or "y" not in f:
            raise InputError(f"{path}: no datasets X and y (found {sorted(f.keys())})")
        result = {"path": path, "name": str(f.attrs.get("name", "")), "preprocessing": str(f.attrs.get("preprocessing", ""))}
        classes = [str(c) for c in f.attrs.get("classes", [])]
        balance = _class_balance(f, classes) if classes else {}
        for split, code in (("train", TRAIN), ("validation", VALIDATION), ("test", TEST)):
            key_x, key_y = SPLIT_KEYS[code]
            if key_x in f:
                y = f[key_y][...]
                counts = np.bincount(y.astype(np.int64)) if y.size else np.zeros(0, int)
                result[split] = {"samples": int(f[key_x].shape[0]), "features": int(f[key_x].shape[1]),
                                 "class_counts": [int(c) for c in counts]}
                if split in balance:
                    result[split]["class_balance"] = balance[split]
        result["n_classes"] = int(f.attrs.get("n_classes", len(result["train"]["class_counts"])))
        if classes:
            result["classes"] = classes
        report = f.get(f"{ENCODING_GROUP}/report")
        if isinstance(report, h5py.Dataset):
            text = report[()]
            result["table"] = json.loads(text.decode() if isinstance(text, bytes) else text)
    return result
