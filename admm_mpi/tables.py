"""Users' own tables (CSV, TSV, Parquet, pandas DataFrames) encoded as float features, in chunks.

The encoding follows scikit-learn's preprocessing and LightGBM's command line where they agree,
and every decision it takes is recorded in a data report:

- **Reading.** CSV/TSV through ``pandas.read_csv`` (every cell read as text, so a chunk never
  guesses a column's type on its own), Parquet through pyarrow. The delimiter is sniffed
  (``csv.Sniffer``) unless given; a header row is detected (:func:`_detect_header`) unless
  ``header=True/False`` is given. Columns without a header are named ``"0"``, ``"1"``, ... so a
  column's name and its index agree. Cells equal to one of :data:`MISSING_MARKERS` (pandas'
  defaults plus ``?`` and ``<null>``, the UCI and KEEL conventions) are missing.
- **Label.** A column by name or index. Rows whose label is missing are dropped and counted
  (never filled); ``admm-mpi data convert`` and ``evaluate`` refuse them unless
  ``missing="drop"`` (:func:`missing_label_problem`). Labels map to classes ``0..k-1``: numbers in increasing order of value when
  every label is a number (``"1"`` and ``"1.0"`` are one class, named ``"1"``), otherwise texts in
  sorted order; the names are kept.
- **Columns.** A column whose every present training value is a number is numeric; other
  columns are text. Text columns are one-hot encoded (categories in sorted order, as
  ``OneHotEncoder``), or ordinal (codes ``0..k-1``) where the user says ``ordinal=[...]`` (sorted
  order) or ``ordinal={name: [levels in order]}``; ``categorical=[...]`` makes a numeric column
  one-hot. Identifier-like columns -- text with a different value in every training row, or a
  whole-number column equal to the row number plus a constant -- are dropped unless listed in
  ``keep=[...]``; columns with no value in the training rows are dropped (as ``SimpleImputer``
  does); ``drop=[...]`` drops others.
- **Missing cells** (``missing=``): ``mean`` (the default, ``SimpleImputer``'s), ``median``,
  ``constant`` (``fill_value``) fill numeric columns with the training rows' statistic; a text
  column's missing cells are a category of their own, ``(missing)``, when the training rows have
  any (as ``OneHotEncoder`` treats ``NaN``), else an all-zero code; an ordinal column's are
  ``-1``. ``drop`` drops every row with a missing cell in an input column (all columns but the
  label and those named in ``drop=``), at fit and at transform time.
- **Learned from training rows only.** Types, categories, identifiers and statistics come from
  the rows of ``train_rows`` (a boolean mask over the kept rows); the class list from every kept
  row (a class seen only in test rows is still a class, as ``admm-mpi data convert`` does).
- **Transform.** Columns are taken by name, in any order; extra columns are ignored and
  reported; a missing input column is an :class:`InputError` naming it. A category unseen in
  training gets the all-zero one-hot code (``handle_unknown="ignore"``) or ordinal code ``-1``,
  and is counted.
- **Bounded memory.** Conversion reads ``chunk`` rows at a time. What stays in memory besides a
  chunk: one class code per row (the label pass), each text column's categories (at most
  ``max_categories``) and, until a duplicate shows it is no identifier, 8 bytes per distinct
  value; the median is exact (a radix selection over a few extra passes, at most
  :data:`MEDIAN_SELECT_VALUES` values held per median). Means are exact too (an integer sum of
  the float values), so neither depends on the chunk size.
"""

import csv
import gzip
import io
import json
import os
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction

import numpy as np
import pandas as pd

from admm_mpi.data import ENCODING_GROUP  # noqa: F401  (where data and model files keep the encoding)
from admm_mpi.errors import InputError

# pandas' default missing-value strings (``read_csv``'s ``na_values`` documentation), plus the
# UCI repository's "?" and KEEL's "<null>". A cell equal to one of them is missing.
PANDAS_MISSING = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                  "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
MISSING_MARKERS = PANDAS_MISSING + ("?", "<null>")
MISSING_POLICIES = ("mean", "median", "constant", "drop")
KINDS = ("numeric", "one-hot", "ordinal", "dropped")
MISSING_CATEGORY = "(missing)"     # the feature name of a text column's missing cells
ORDINAL_UNKNOWN = -1.0             # an ordinal column's code for an unseen or missing level
MAX_CATEGORIES = 1000              # more distinct texts in a column is refused (drop= it, or raise this)
MEDIAN_SELECT_VALUES = 1 << 17     # values held at once per median (radix selection below that)
ENCODING_FORMAT = "admm-mpi table encoding"
ENCODING_VERSION = 1
ALL_ROWS = 1 << 62                 # "chunk" meaning one chunk for the whole table
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".dat", ".parquet", ".pq")


# ---- reading --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """A table read in chunks of rows: a CSV/TSV/Parquet file or an in-memory DataFrame."""

    name: str
    columns: tuple            # column names (str), in file order
    notes: tuple              # how it was read: format, delimiter, header decision
    read: object = field(repr=False, compare=False)  # (chunk, columns) -> iterator of DataFrames

    def frames(self, chunk=None, columns=None):
        """The raw rows, ``chunk`` (default: all) at a time, of ``columns`` (default: all)."""
        return self.read(chunk or ALL_ROWS, list(self.columns if columns is None else columns))


def table_format(path):
    """``"csv"`` or ``"parquet"`` from the file name (``.gz`` allowed for text)."""
    name = os.path.basename(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.removesuffix(".gz").endswith((".csv", ".tsv", ".txt", ".dat")):
        return "csv"
    raise InputError(f"cannot tell the table format of {path} (expected {', '.join(TABLE_SUFFIXES)}); "
                     "pass the format")


def open_table(path, *, header=None, delimiter=None, fmt=None):
    """A :class:`Table` of a CSV/TSV or Parquet file; the delimiter and header row are detected
    unless given (``header=True``: the first row names the columns; ``False``: it is data)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"input file {path} does not exist")
    fmt = fmt or table_format(path)
    if fmt == "parquet":
        return _open_parquet(path)
    if fmt != "csv":
        raise InputError(f"unknown table format {fmt!r}; choose csv or parquet")
    return _open_csv(path, header, delimiter)


def frame_table(frame, name="DataFrame"):
    """A :class:`Table` of an in-memory pandas DataFrame (its column names taken as text)."""
    frame = _named_columns(frame)

    def read(chunk, columns):
        for start in range(0, len(frame), chunk):
            yield frame.iloc[start:start + chunk][columns]

    return Table(name, tuple(frame.columns), ("in-memory DataFrame",), read)


def _named_columns(frame):
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    names = [str(c) for c in frame.columns]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"duplicate column names {duplicated}")
    return frame.set_axis(names, axis=1) if list(frame.columns) != names else frame


def _open_text(path):
    return gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")


def _first_lines(path, n=200):
    try:
        with _open_text(path) as f:
            return [line for _, line in zip(range(n), f)]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _sniff_delimiter(path, lines):
    """The field separator: tab for .tsv, else ``csv.Sniffer`` over the first lines."""
    name = path.lower().removesuffix(".gz")
    if name.endswith(".tsv"):
        return "\t", "'\\t' (from the .tsv name)"
    sample = "".join(line for line in lines[:50] if line.strip())
    candidates = ",;\t|" if name.endswith(".csv") else ",;\t| "
    try:
        found = csv.Sniffer().sniff(sample, delimiters=candidates).delimiter
    except csv.Error:
        if "," in sample or name.endswith(".csv"):
            return ",", "',' (not sniffed: the default)"
        raise InputError(f"{path}: cannot tell the delimiter; pass it (e.g. --delimiter ',')") from None
    return found, f"{found!r} (sniffed)"


def _read_csv_options(sep, markers):
    # Every cell as text: chunks must not each guess a column's type. "\s+" is pandas' fast
    # whitespace separator (runs of blanks are one separator).
    return {"sep": r"\s+" if sep == " " else sep, "dtype": str, "keep_default_na": False,
            "na_values": list(markers), "skipinitialspace": sep != " ", "engine": "c"}


def _open_csv(path, header, delimiter):
    lines = _first_lines(path)
    if not any(line.strip() for line in lines):
        raise InputError(f"{path} is empty")
    if delimiter:
        sep, sep_note = delimiter, f"{delimiter!r} (given)"
    else:
        sep, sep_note = _sniff_delimiter(path, lines)
    options = _read_csv_options(sep, MISSING_MARKERS)
    try:
        sample = pd.read_csv(io.StringIO("".join(lines)), header=None, **options)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if header is None:
        header, header_note = _detect_header(sample)
    else:
        header_note = f"header row: {'yes' if header else 'no'} (given)"
    if header:  # the names as written (a column may be called "NA")
        first = pd.read_csv(io.StringIO("".join(lines)), header=None, nrows=1, **{**options, "na_values": []})
        names = [str(v) if isinstance(v, str) else "" for v in first.iloc[0]]
        names = _deduplicated([n or f"unnamed {i}" for i, n in enumerate(names)])
    else:
        names = [str(i) for i in range(sample.shape[1])]

    def read(chunk, columns):
        try:
            with pd.read_csv(path, header=0 if header else None, names=names, usecols=columns,
                             chunksize=min(chunk, 1 << 24), **options) as chunks:
                yield from chunks
        except (ValueError, OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise InputError(f"cannot read {path}: {reason}") from None

    notes = (f"format: delimited text, delimiter {sep_note}", header_note)
    return Table(path, tuple(names), notes, read)


def _deduplicated(names):
    """``a, a`` becomes ``a, a.1`` (pandas' own renaming of repeated header names)."""
    seen, out = {}, []
    for name in names:
        base, k = name, seen.get(name, 0)
        while name in seen:
            k += 1
            name = f"{base}.{k}"
        seen[base] = k
        seen[name] = 0
        out.append(name)
    return out


def _detect_header(sample):
    """``(has_header, note)`` from the first rows read as text.

    A header row when a column whose other cells are all numbers has a text first cell; when no
    column is numeric, when every first-row cell is filled, they differ from each other, and
    none of them recurs in its column below (a name is not a value). As ``csv.Sniffer.has_header``
    reasons, on pandas' parse of the file.
    """
    if len(sample) < 2:
        return False, "header row: no (one row only; pass --header if it names the columns)"
    first, body = sample.iloc[0], sample.iloc[1:]
    for name in sample.columns:
        cells = body[name].dropna()
        numbers = pd.to_numeric(cells, errors="coerce")
        if len(cells) and numbers.notna().all() and isinstance(first[name], str) \
                and pd.isna(pd.to_numeric(pd.Series([first[name]]), errors="coerce")[0]):
            return True, (f"header row: yes (detected: column {name} holds numbers below its first cell "
                          f"{first[name]!r}; pass --no-header if that row is data)")
    firsts = [v for v in first if isinstance(v, str)]
    numeric_columns = [n for n in sample.columns if pd.to_numeric(body[n].dropna(), errors="coerce").notna().all()
                       and body[n].notna().any()]
    if not numeric_columns and len(firsts) == len(first) and len(set(firsts)) == len(firsts) \
            and not any((body[name] == first[name]).any() for name in sample.columns):
        return True, ("header row: yes (detected: the first row's texts differ and none recurs below; pass "
                      "--no-header if that row is data)")
    return False, ("header row: no (detected: the first row looks like data; columns are named 0, 1, ...; pass "
                   "--header if it names the columns)")


def _open_parquet(path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading Parquet needs pyarrow: pip install 'admm-mpi[tables]'") from None
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    index = [n for n in names if n.startswith("__index_level_")]
    names = [n for n in names if n not in index]

    def nullable(arrow_type):  # whole numbers stay whole beside missing cells ("3", not "3.0")
        return pd.Int64Dtype() if pa.types.is_integer(arrow_type) else None

    def read(chunk, columns):
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=min(chunk, 1 << 24), columns=columns):
                yield batch.to_pandas(types_mapper=nullable)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None

    notes = ["format: Parquet"] + ([f"pandas index columns {index} ignored"] if index else [])
    return Table(path, tuple(names), tuple(notes), read)


# ---- cells: text and numbers ------------------------------------------------------------------
def _is_number_dtype(series):
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def _texts(series, markers):
    """Each cell's text (``3`` for a whole-number column, ``3.0`` for a float one, ``True``), None
    where missing (NaN, None, or one of ``markers``): the form categories and labels take."""
    text = series.astype("string")
    missing = text.isna().to_numpy() | text.isin(markers).fillna(False).to_numpy(dtype=bool)
    out = text.to_numpy(dtype=object, na_value=None)
    out[missing] = None
    return out


def _numbers(series, markers):
    """``(values, not_numbers)``: float64 cells (NaN where missing) and where a present cell is
    no number."""
    if _is_number_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(series), bool)
    texts = _texts(series, markers)
    values = pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    return values, np.isnan(values) & pd.notna(texts)


def _missing(series, markers):
    return pd.isna(_texts(series, markers))


def _row_name(rows, i):
    return f"data row {int(rows[i]) + 1}"


# ---- what the user asks ------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    """How a table is to be encoded (column references are names, or indices given as int or digits)."""

    label: object = None           # the label column; None: a table of features only
    categorical: tuple = ()        # one-hot even if numeric
    ordinal: object = ()           # list (sorted order) or {name: [levels in order]}
    drop: tuple = ()               # never used
    keep: tuple = ()               # identifier-like columns to encode anyway
    missing: str = "mean"          # mean | median | constant | drop
    fill_value: float = 0.0        # missing="constant": the numeric fill
    max_categories: int = MAX_CATEGORIES
    missing_markers: tuple = MISSING_MARKERS


def _resolve(ref, columns, what):
    """The column name ``ref`` means: a name first, else an index (int or digits, negative from the end)."""
    ref_text = str(ref)
    if ref_text in columns:
        return ref_text
    try:
        index = int(ref_text)
    except ValueError:
        index = None
    if index is not None and -len(columns) <= index < len(columns):
        return columns[index]
    shown = list(columns) if len(columns) <= 30 else list(columns[:30]) + ["..."]
    raise InputError(f"{what} {ref_text!r} is neither a column name nor an index 0..{len(columns) - 1}; "
                     f"the columns are {shown}")


def _resolved_spec(spec, columns):
    """``spec`` with every column reference resolved to a name, checked for conflicts."""
    if spec.missing not in MISSING_POLICIES:
        raise InputError(f"missing policy {spec.missing!r} is not one of {list(MISSING_POLICIES)}")
    if spec.missing == "constant" and not np.isfinite(float(spec.fill_value)):
        raise InputError(f"the constant fill value must be a finite number, got {spec.fill_value!r}")
    if int(spec.max_categories) < 1:
        raise InputError(f"max_categories must be at least 1, got {spec.max_categories}")
    label = None if spec.label is None else _resolve(spec.label, columns, "label column")
    ordinal_orders = {}
    if isinstance(spec.ordinal, dict):
        for ref, levels in spec.ordinal.items():
            levels = tuple(str(v) for v in levels)
            if len(set(levels)) != len(levels):
                raise InputError(f"ordinal levels of {ref!r} repeat: {list(levels)}")
            ordinal_orders[_resolve(ref, columns, "ordinal column")] = levels
        ordinal = tuple(ordinal_orders)
    else:
        ordinal = tuple(_resolve(r, columns, "ordinal column") for r in spec.ordinal)
    lists = {"categorical": tuple(_resolve(r, columns, "categorical column") for r in spec.categorical),
             "ordinal": ordinal, "drop": tuple(_resolve(r, columns, "dropped column") for r in spec.drop),
             "keep": tuple(_resolve(r, columns, "kept column") for r in spec.keep)}
    for name, refs in lists.items():
        if label in refs:
            raise InputError(f"the label column {label!r} cannot also be {name}")
    for a, b in (("categorical", "ordinal"), ("drop", "keep"), ("drop", "categorical"), ("drop", "ordinal")):
        both = sorted(set(lists[a]) & set(lists[b]))
        if both:
            raise InputError(f"columns {both} are both {a} and {b}")
    resolved = replace(spec, label=label, missing_markers=tuple(spec.missing_markers), **lists)
    return resolved, ordinal_orders


def _drop_filter_columns(columns, label, dropped):
    """Under ``missing="drop"``: the columns whose missing cells drop a row."""
    return tuple(c for c in columns if c != label and c not in dropped)


# ---- rows kept: a label, and under missing="drop" no missing cell ------------------------------
@dataclass
class RowCounts:
    read: int = 0                  # rows in the table
    missing_label: int = 0         # dropped: no label
    missing_cells: int = 0         # dropped (missing="drop"): a missing input cell
    kept: int = 0


def _kept_chunks(table, label, filter_columns, markers, chunk, columns, counts):
    """``(frame, rows)`` per chunk: the kept rows of ``columns`` and their data row numbers (0-based)."""
    needed = list(dict.fromkeys(list(columns) + ([label] if label else []) + list(filter_columns)))
    start = 0
    for frame in table.frames(chunk, needed):
        rows = np.arange(start, start + len(frame))
        start += len(frame)
        keep = np.ones(len(frame), bool)
        if label is not None:
            no_label = _missing(frame[label], markers)
            counts.missing_label += int(no_label.sum())
            keep &= ~no_label
        if filter_columns:
            holes = np.zeros(len(frame), bool)
            for name in filter_columns:
                holes |= _missing(frame[name], markers)
            counts.missing_cells += int((holes & keep).sum())
            keep &= ~holes
        counts.read += len(frame)
        counts.kept += int(keep.sum())
        yield frame[keep], rows[keep]


# ---- labels -------------------------------------------------------------------------------------
def _class_name(value):
    """A numeric class's name: ``1`` for a whole number, else the float's shortest repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _LabelTexts:
    """Distinct label texts seen so far, each row's provisional code, and the class list at the end."""

    def __init__(self):
        self.codes_of = {}         # text -> provisional code (order of first appearance)

    def codes(self, texts):
        """Provisional codes of ``texts`` (present labels)."""
        uniques, inverse = np.unique(texts.astype(str), return_inverse=True)
        known = np.array([self.codes_of.setdefault(str(t), len(self.codes_of)) for t in uniques], np.int64)
        return known[inverse.reshape(-1)]

    def classes(self):
        """``(names, numeric, remap)``: sorted class names, whether the labels are numbers, and the
        class index of each provisional code."""
        texts = list(self.codes_of)
        try:
            values = [float(t) for t in texts]
            numeric = all(np.isfinite(values))
        except ValueError:
            numeric = False
        if numeric:
            names = sorted({_class_name(v) for v in values}, key=float)
            position = {n: i for i, n in enumerate(names)}
            remap = np.array([position[_class_name(v)] for v in values], np.int64)
        else:
            names = sorted(texts)
            position = {n: i for i, n in enumerate(names)}
            remap = np.array([position[t] for t in texts], np.int64)
        return tuple(names), numeric, remap


def _class_indices(texts, classes, numeric, where):
    """Class indices of present label texts; a label outside ``classes`` is an InputError."""
    if numeric:
        values = pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce").to_numpy(np.float64)
        class_values = np.array([float(c) for c in classes])
        index = np.clip(np.searchsorted(class_values, values), 0, len(classes) - 1)
        unknown = ~(class_values[index] == values)
    else:
        index = pd.Index(list(classes)).get_indexer(texts).astype(np.int64)  # -1: not a class
        unknown = index < 0
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise InputError(f"label {texts[i]!r} ({where(i)}) is not one of the {len(classes)} classes "
                         f"{list(classes)[:20]}")
    return index.astype(np.int64)


@dataclass
class Labels:
    """The label pass: class index per kept row (per table), the class names, and row counts."""

    codes: list                    # one int64 array per table, kept rows in file order
    classes: tuple
    numeric: bool                  # labels are numbers (classes ordered by value)
    counts: list                   # RowCounts per table


def read_labels(tables, spec, chunk=10000):
    """Pass 1 of a conversion: the labels of the kept rows of each table (e.g. a training and a
    test file), mapped to one sorted class list. Reads only the label column (and, under
    ``missing="drop"``, the input columns)."""
    tables = [tables] if isinstance(tables, Table) else list(tables)
    collector, provisional, counts = _LabelTexts(), [], []
    for table in tables:
        resolved, _ = _resolved_spec(spec, table.columns)
        if resolved.label is None:
            raise InputError("no label column given")
        filters = _drop_filter_columns(table.columns, resolved.label, resolved.drop) \
            if resolved.missing == "drop" else ()
        count, parts = RowCounts(), []
        for frame, _ in _kept_chunks(table, resolved.label, filters, resolved.missing_markers, chunk, [], count):
            parts.append(collector.codes(_texts(frame[resolved.label], resolved.missing_markers)))
        provisional.append(np.concatenate(parts) if parts else np.empty(0, np.int64))
        counts.append(count)
        if count.kept == 0:
            raise InputError(_no_rows_message(table.name, count, resolved.missing))
    classes, numeric, remap = collector.classes()
    return Labels([remap[p] for p in provisional], classes, numeric, counts)


def _no_rows_message(name, count, policy):
    why = []
    if count.missing_label:
        why.append(f"{count.missing_label} without a label")
    if count.missing_cells:
        why.append(f"{count.missing_cells} with a missing cell (missing={policy})")
    return f"{name} holds no usable row ({count.read} rows" + (": " + ", ".join(why) if why else "") + ")"


# ---- exact statistics ---------------------------------------------------------------------------
def _exact_sum(values):
    """The exact sum of finite float64 ``values``, as an integer number of 2**-1074 (the smallest
    subnormal): chunk sums add up exactly, so the mean does not depend on the chunk size."""
    if values.size == 0:
        return 0
    mantissa, exponent = np.frexp(values)
    whole = (mantissa * 2.0 ** 53).astype(np.int64)          # exact: 53 significant bits
    shift = exponent.astype(np.int64) + (1074 - 53)           # value = whole * 2**shift * 2**-1074
    high, low = whole >> 26, whole & ((1 << 26) - 1)          # sums of these cannot overflow int64
    order = np.argsort(shift, kind="stable")
    shift, high, low = shift[order], high[order], low[order]
    starts = np.flatnonzero(np.r_[True, shift[1:] != shift[:-1]])
    total = 0
    for s, h, lo in zip(shift[starts], np.add.reduceat(high, starts), np.add.reduceat(low, starts)):
        part = (int(h) << 26) + int(lo)
        total += part << int(s) if s >= 0 else part >> int(-s)  # exact: subnormals' low bits are zero
    return total


def _exact_mean(total, count):
    return float(Fraction(total, count << 1074))


def _sort_keys(values):
    """Unsigned integers ordered as the float64 ``values`` (no NaN): the radix selection's keys."""
    bits = values.view(np.uint64)
    return np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))


def _key_value(key):
    key = np.uint64(key)
    bits = key & np.uint64((1 << 63) - 1) if key >> np.uint64(63) else ~key
    return float(np.array([bits], np.uint64).view(np.float64)[0])


class _RankSearch:
    """The value of rank ``rank`` (0-based) among a column's present training values, found 16 bits
    of its sort key at a time from a histogram of the leading bits, then exactly among at most
    :data:`MEDIAN_SELECT_VALUES` collected values."""

    def __init__(self, rank, top_histogram):
        self.value = None
        self.prefix, self.shift = 0, 64
        self.rank, self.count = rank, None
        self._narrow(top_histogram)

    def _narrow(self, histogram):
        below = np.cumsum(histogram)
        bucket = int(np.searchsorted(below, self.rank, side="right"))
        self.rank -= int(below[bucket - 1]) if bucket else 0
        self.prefix, self.shift = (self.prefix << 16) | bucket, self.shift - 16
        self.count = int(histogram[bucket])
        if self.shift == 0:  # every key of the group is the same value
            self.value = _key_value(self.prefix)
        self.histogram = None if self.collecting else np.zeros(1 << 16, np.int64)
        self.collected = [] if self.collecting else None

    @property
    def collecting(self):
        return self.count <= MEDIAN_SELECT_VALUES

    def add(self, keys):
        group = keys[(keys >> np.uint64(self.shift)) == np.uint64(self.prefix)]
        if self.collecting:
            self.collected.append(group)
        else:
            digits = (group >> np.uint64(self.shift - 16)) & np.uint64(0xFFFF)
            self.histogram += np.bincount(digits.astype(np.int64), minlength=1 << 16)

    def finish_pass(self):
        if self.collecting:
            keys = np.concatenate(self.collected)
            self.value = _key_value(np.partition(keys, self.rank)[self.rank])
        else:
            self._narrow(self.histogram)


def _top_histogram(values):
    return np.bincount((_sort_keys(values) >> np.uint64(48)).astype(np.int64), minlength=1 << 16)


# ---- the fit pass ----------------------------------------------------------------------------
class _NumberScan:
    """A numeric column's training rows: missing count, exact sum, range, row-counter test."""

    kind = "number"

    def __init__(self, missing=0, median=False):
        self.missing, self.count, self.total = missing, 0, 0
        self.low, self.high = np.inf, -np.inf
        self.offset = None         # value - row number, while it is one constant whole number
        self.counter = True
        self.histogram = np.zeros(1 << 16, np.int64) if median else None

    def add(self, name, values, rows):
        holes = np.isnan(values)
        present = values[~holes]
        if np.isinf(present).any():
            i = int(np.flatnonzero(np.isinf(values))[0])
            raise InputError(f"column {name!r} holds {values[i]} ({_row_name(rows, i)}); features must be finite")
        self.missing += int(holes.sum())
        self.count += present.size
        self.total += _exact_sum(present)
        if present.size:
            self.low, self.high = min(self.low, present.min()), max(self.high, present.max())
        if self.histogram is not None:
            self.histogram += _top_histogram(present)
        if self.counter and values.size:
            differences = values - rows
            if holes.any() or not (differences == differences[0]).all() or not float(differences[0]).is_integer() \
                    or (self.offset is not None and differences[0] != self.offset):
                self.counter = False
            else:
                self.offset = float(differences[0])


class _TextScan:
    """A text column's training rows: missing count, category counts, and whether every value differs."""

    kind = "text"

    def __init__(self, max_categories, missing=0):
        self.missing, self.count = missing, 0
        self.max_categories = max_categories
        self.categories = {}       # text -> count; None once there are more than max_categories
        self.distinct = 0          # distinct texts while they are all different (else None)
        self.hashes = np.empty(0, np.uint64)

    def add(self, name, texts, rows):
        holes = pd.isna(texts)
        present = texts[~holes].astype(str)
        self.missing += int(holes.sum())
        self.count += present.size
        if self.categories is not None:
            for text, n in pd.Series(present).value_counts(sort=False).items():
                self.categories[text] = self.categories.get(text, 0) + int(n)
            if len(self.categories) > self.max_categories:
                self.categories = None
        if self.hashes is not None:  # only until a value repeats: then it is no identifier
            self.hashes = np.union1d(self.hashes, pd.util.hash_array(present.astype(object)))
            if self.hashes.size < self.count:
                self.hashes = None

    @property
    def unique_per_row(self):
        return self.hashes is not None and self.count >= 2


def _mask_part(train_rows, start, n):
    """The training-row mask of kept rows ``start .. start+n`` (False past its end: the length is
    checked after the pass, when the number of kept rows is known)."""
    if train_rows is None:
        return np.ones(n, bool)
    part = np.zeros(n, bool)
    given = train_rows[start:start + n]
    part[:given.size] = given
    return part


def _scan(table, spec, chunk, train_rows, as_text, filters, names):
    """One pass over the kept rows: the training rows' statistics of ``names``, the label texts.

    A CSV column starts as numbers and becomes text at its first present non-number; if it had
    numbers before (in an earlier chunk), its text statistics are incomplete and it is listed in
    ``flipped`` for a second scan.
    """
    counts, labels = RowCounts(), _LabelTexts()
    scans, flipped = {}, []
    provisional, training = [], []
    start = 0
    for frame, rows in _kept_chunks(table, spec.label, filters, spec.missing_markers, chunk, names, counts):
        train = _mask_part(train_rows, start, len(frame))
        start += len(frame)
        if spec.label is not None:
            provisional.append(labels.codes(_texts(frame[spec.label], spec.missing_markers)))
            training.append(train)
        part, part_rows = frame[train], rows[train]
        for name in names:
            if name in flipped:
                continue
            series, scan = part[name], scans.get(name)
            if scan is None and (name in as_text or pd.api.types.is_bool_dtype(series.dtype)
                                 or not (_is_number_dtype(series) or series.dtype == object
                                         or pd.api.types.is_string_dtype(series.dtype))):
                scan = scans[name] = _TextScan(spec.max_categories)
            if scan is None or scan.kind == "number":
                values, not_numbers = _numbers(series, spec.missing_markers)
                if not_numbers.any():
                    if scan is not None and scan.count:  # its earlier texts were not kept: scan it again
                        flipped.append(name)
                        continue
                    scan = scans[name] = _TextScan(spec.max_categories, missing=scan.missing if scan else 0)
                else:
                    if scan is None:
                        scan = scans[name] = _NumberScan(median=spec.missing == "median")
                    scan.add(name, values, part_rows)
                    continue
            scan.add(name, _texts(series, spec.missing_markers), part_rows)
    if train_rows is not None and start != train_rows.size:
        raise InputError(f"the training-row mask has {train_rows.size} entries but {table.name} has {start} "
                         "kept rows")
    for name in names:  # no training row at all: an empty column
        scans.setdefault(name, _NumberScan(median=spec.missing == "median"))
    return scans, flipped, counts, labels, provisional, training


def _medians(table, spec, chunk, train_rows, filters, scans):
    """Exact medians (as ``numpy.median``) of the numeric columns' present training values."""
    searches = {}
    for name, scan in scans.items():
        if scan.count:
            ranks = sorted({(scan.count - 1) // 2, scan.count // 2})
            searches[name] = [_RankSearch(r, scan.histogram) for r in ranks]
    while any(s.value is None for group in searches.values() for s in group):
        names = [n for n, group in searches.items() if any(s.value is None for s in group)]
        start = 0
        for frame, _ in _kept_chunks(table, spec.label, filters, spec.missing_markers, chunk, names, RowCounts()):
            train = _mask_part(train_rows, start, len(frame))
            start += len(frame)
            for name in names:
                values, _ = _numbers(frame[name][train], spec.missing_markers)
                keys = _sort_keys(values[~np.isnan(values)])
                for search in searches[name]:
                    if search.value is None:
                        search.add(keys)
        for name in names:
            for search in searches[name]:
                if search.value is None:
                    search.finish_pass()
    medians = {}
    for name, group in searches.items():
        values = [np.float64(s.value) for s in group]
        medians[name] = float(values[0] if len(values) == 1 else (values[0] + values[1]) / 2)
    return medians


# ---- the encoding --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnEncoding:
    """How one input column becomes features."""

    name: str
    kind: str                      # numeric | one-hot | ordinal | dropped
    values: str = "number"         # what the training rows hold: number | text | none
    categories: tuple = ()         # one-hot/ordinal: the category texts, in code order
    missing_category: bool = False  # one-hot: a (missing) feature after the categories
    fill: float = None             # numeric: a missing cell's value (None: missing="drop")
    identifier: bool = False       # identifier-like in the training rows
    dropped_by_user: bool = False  # named in drop=
    note: str = ""                 # why this kind

    @property
    def feature_names(self):
        if self.kind == "numeric":
            return (self.name,)
        if self.kind == "ordinal":
            return (self.name,)
        if self.kind == "one-hot":
            return tuple(f"{self.name}={c}" for c in self.categories) + \
                ((f"{self.name}={MISSING_CATEGORY}",) if self.missing_category else ())
        return ()


@dataclass(frozen=True)
class Encoding:
    """A fitted table encoding: raw rows to float features (and label texts to class indices)."""

    columns: tuple                 # ColumnEncoding per input column (every column but the label)
    label: str = None
    classes: tuple = ()            # class names, in class-index order
    numeric_labels: bool = False   # labels are numbers: a label matches a class by value
    missing: str = "mean"
    missing_markers: tuple = MISSING_MARKERS
    standardize_mean: tuple = None  # set by with_standardization (convert --standardize)
    standardize_std: tuple = None

    @property
    def feature_names(self):
        return tuple(n for c in self.columns for n in c.feature_names)

    @property
    def n_features(self):
        return len(self.feature_names)

    @property
    def used_columns(self):
        """The input columns a transform needs."""
        return tuple(c.name for c in self.columns if c.kind != "dropped")

    def with_standardization(self, mean, std):
        """This encoding followed by ``(x - mean) / std`` (the training rows' statistics)."""
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.shape != (self.n_features,) or std.shape != (self.n_features,):
            raise ValueError(f"standardisation of {mean.shape} and {std.shape} for {self.n_features} features")
        return replace(self, standardize_mean=tuple(float(v) for v in mean),
                       standardize_std=tuple(float(v) for v in std))

    # -- applying it
    def transform(self, frame, *, labels=False, standardize=True, storage_dtype=None, rows=None):
        """``Encoded(X, y, rows, report)`` of a raw DataFrame.

        ``labels=True`` also maps the label column (required) to class indices; rows without a
        label are dropped and counted. ``rows`` numbers the frame's rows in messages (default
        ``0..n-1``). ``storage_dtype`` rounds the encoded features as a data file stores them
        before standardising them, as ``admm-mpi data convert`` does (so predictions on raw rows
        equal those on the converted file).
        """
        frame = _named_columns(frame)
        rows = np.arange(len(frame)) if rows is None else np.asarray(rows)
        absent = [c for c in self.used_columns if c not in frame.columns]
        if labels and self.label not in frame.columns:
            absent.append(self.label)
        if absent:
            raise InputError(f"the table has no column {', '.join(repr(c) for c in absent)}, which the encoding "
                             f"needs (it has {list(frame.columns)[:30]})")
        known = {c.name for c in self.columns} | {self.label}
        report = TransformReport(rows_in=len(frame), ignored_columns=[c for c in frame.columns if c not in known])
        keep = np.ones(len(frame), bool)
        y = None
        if labels:
            label_texts = _texts(frame[self.label], self.missing_markers)
            no_label = pd.isna(label_texts)
            report.missing_label = int(no_label.sum())
            keep &= ~no_label
        if self.missing == "drop":
            holes = np.zeros(len(frame), bool)
            for c in self.columns:
                if not c.dropped_by_user and c.name in frame.columns:
                    holes |= _missing(frame[c.name], self.missing_markers)
            report.missing_cells = int((holes & keep).sum())
            keep &= ~holes
        kept_rows = rows[keep]
        if labels:
            y = _class_indices(label_texts[keep], self.classes, self.numeric_labels,
                               lambda i: _row_name(kept_rows, i))
        part = frame[keep]
        blocks = [self._encode_column(c, part[c.name], kept_rows, report) for c in self.columns if c.kind != "dropped"]
        X = np.hstack(blocks) if blocks else np.zeros((int(keep.sum()), 0))
        if storage_dtype is not None:
            X = X.astype(storage_dtype).astype(np.float64)
        if standardize and self.standardize_mean is not None:
            X = (X - np.asarray(self.standardize_mean)) / np.asarray(self.standardize_std)
            if storage_dtype is not None:
                X = X.astype(storage_dtype).astype(np.float64)
        report.rows_out = X.shape[0]
        return Encoded(X, y, np.flatnonzero(keep), report)

    def _encode_column(self, column, series, rows, report):
        name = column.name
        if column.kind == "numeric":
            values, not_numbers = _numbers(series, self.missing_markers)
            if not_numbers.any():
                i = int(np.flatnonzero(not_numbers)[0])
                raise InputError(f"column {name!r} holds {_texts(series.iloc[[i]], ())[0]!r} ({_row_name(rows, i)}), "
                                 f"not a number, but was numeric in the training rows; mark such cells missing or "
                                 f"encode the column as categorical")
            if np.isinf(values).any():
                i = int(np.flatnonzero(np.isinf(values))[0])
                raise InputError(f"column {name!r} holds {values[i]} ({_row_name(rows, i)}); features must be finite")
            holes = np.isnan(values)
            if holes.any():
                report.count("missing", name, int(holes.sum()))
                values = np.where(holes, column.fill, values)
            return values[:, None]
        texts = _texts(series, self.missing_markers)
        holes = pd.isna(texts)
        # -1 where a cell is missing or holds a category the training rows did not have (a Categorical of
        # such values is deprecated in pandas)
        codes = pd.Index(list(column.categories)).get_indexer(texts).astype(np.int64)
        unknown = (codes < 0) & ~holes
        if unknown.any():
            report.count("unknown", name, int(unknown.sum()))
        if holes.any():
            report.count("missing", name, int(holes.sum()))
        if column.kind == "ordinal":
            return np.where(codes < 0, ORDINAL_UNKNOWN, codes.astype(np.float64))[:, None]
        width = len(column.categories) + column.missing_category
        if column.missing_category:
            codes = np.where(holes, len(column.categories), codes)
        out = np.zeros((len(codes), width))
        hot = np.flatnonzero(codes >= 0)
        out[hot, codes[hot]] = 1.0
        return out

    # -- storing it
    def to_dict(self):
        return {"format": ENCODING_FORMAT, "version": ENCODING_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data):
        if data.get("format") != ENCODING_FORMAT or data.get("version") != ENCODING_VERSION:
            raise InputError(f"not an admm-mpi table encoding of version {ENCODING_VERSION} "
                             f"(format {data.get('format')!r}, version {data.get('version')!r})")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        fields["columns"] = tuple(ColumnEncoding(**{**c, "categories": tuple(c["categories"])})
                                  for c in fields["columns"])
        unknown = sorted({c.kind for c in fields["columns"]} - set(KINDS))
        if unknown or fields.get("missing") not in MISSING_POLICIES:
            raise InputError(f"table encoding with unknown column kinds {unknown} or missing policy "
                             f"{fields.get('missing')!r}")
        for key in ("classes", "missing_markers", "standardize_mean", "standardize_std"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return cls(**fields)

    def save(self, group):
        """Write into an h5py group (e.g. ``f.require_group(ENCODING_GROUP)``): one JSON text dataset
        (floats written by ``repr`` read back exactly), plus format attributes."""
        group.attrs["format"] = ENCODING_FORMAT
        group.attrs["version"] = ENCODING_VERSION
        if "json" in group:
            del group["json"]
        group.create_dataset("json", data=json.dumps(self.to_dict(), allow_nan=False))

    @classmethod
    def load(cls, group):
        try:
            text = group["json"][()]
        except KeyError:
            raise InputError(f"{group.name} in {group.file.filename} holds no table encoding") from None
        return cls.from_dict(json.loads(text.decode() if isinstance(text, bytes) else text))


@dataclass
class TransformReport:
    """What a transform did to raw rows (added up over chunks with ``add``)."""

    rows_in: int = 0
    rows_out: int = 0
    missing_label: int = 0         # rows dropped: no label
    missing_cells: int = 0         # rows dropped (missing="drop")
    missing: dict = field(default_factory=dict)   # column -> missing cells filled (or coded)
    unknown: dict = field(default_factory=dict)   # column -> cells with a category unseen in training
    ignored_columns: list = field(default_factory=list)

    def count(self, what, column, n):
        counts = getattr(self, what)
        counts[column] = counts.get(column, 0) + n

    def add(self, other):
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.missing_label += other.missing_label
        self.missing_cells += other.missing_cells
        for what in ("missing", "unknown"):
            for column, n in getattr(other, what).items():
                self.count(what, column, n)
        self.ignored_columns += [c for c in other.ignored_columns if c not in self.ignored_columns]
        return self

    def as_dict(self):
        return asdict(self)


@dataclass
class Encoded:
    X: np.ndarray                  # rows x features, float64
    y: np.ndarray                  # class indices (labels=True), else None
    rows: np.ndarray               # the frame positions of X's rows
    report: TransformReport


# ---- the data report ---------------------------------------------------------------------------------
@dataclass
class DataReport:
    """Every encoding decision of a fit, JSON-ready through ``as_dict``."""

    source: str
    reading: list                  # format, delimiter, header decision
    rows: dict                     # read, kept, dropped for a missing label / cell, training
    missing_policy: str
    label: dict                    # column, kind, classes, class counts of the training rows
    columns: list                  # per column: type, encoding, missing, categories, identifier, note
    n_features: int
    notes: list

    def as_dict(self):
        return asdict(self)


def _policy_text(spec):
    numeric = {"mean": "the training rows' mean", "median": "the training rows' median",
               "constant": f"the constant {float(spec.fill_value)!r}", "drop": None}[spec.missing]
    if numeric is None:
        return "drop: every row with a missing input cell is dropped (at conversion and prediction)"
    return (f"{spec.missing}: a numeric cell takes {numeric}; a text cell the category {MISSING_CATEGORY} (if "
            f"training rows have missing cells there, else an all-zero code); an ordinal cell {ORDINAL_UNKNOWN:g}")


def _column_report(column, scan):
    entry = {"name": column.name, "type": column.values, "encoding": column.kind,
             "missing": scan.missing if scan else 0, "identifier": column.identifier}
    if column.kind == "numeric":
        entry["fill"] = column.fill
        entry["range"] = [float(scan.low), float(scan.high)] if scan and scan.count else None
    if column.kind in ("one-hot", "ordinal"):
        entry["n_categories"] = len(column.categories)
        entry["categories"] = list(column.categories[:50]) + (["..."] if len(column.categories) > 50 else [])
    if column.note:
        entry["note"] = column.note
    return entry


def _numbers_as_text_note(name, scan):
    """A text column all of whose categories but a few are numbers: perhaps unmarked missing cells."""
    if scan.categories is None or len(scan.categories) < 5:
        return None
    odd = [t for t in scan.categories if pd.isna(pd.to_numeric(pd.Series([t]), errors="coerce")[0])]
    if 0 < len(odd) <= 2:
        rows = sum(scan.categories[t] for t in odd)
        return (f"column {name!r} is text only because of {odd} ({rows} training rows); if those mark missing "
                "cells, add them to the missing markers")
    return None


def report_lines(report):
    """A data report (:meth:`DataReport.as_dict`, plus ``class_counts`` per split if given) as
    lines of text: the reading, the rows, the label, one line per column, the notes."""
    rows, label = report["rows"], report["label"]
    lines = [f"{report['source']}: " + "; ".join(report["reading"][:-1]),
             f"rows: {rows['read']} read, {rows['kept']} kept ({rows['dropped_missing_label']} dropped without a "
             f"label, {rows['dropped_missing_cells']} with a missing cell), {rows['training']} training rows"]
    if label.get("column") is not None:
        lines.append(f"label: column {label['column']!r} ({label['kind']}), classes {label['classes']}")
    lines.append(f"missing cells: {report['missing_policy']}")
    width = max(len(str(c["name"])) for c in report["columns"])
    for c in report["columns"]:
        what = {"numeric": lambda: f"fill {c['fill']:.6g}" if c.get("fill") is not None else "",
                "one-hot": lambda: f"{c['n_categories']} categories {c['categories']}",
                "ordinal": lambda: f"levels {c['categories']}"}.get(c["encoding"], lambda: c.get("note", ""))()
        flag = " (identifier-like, kept as asked)" if c["identifier"] and c["encoding"] != "dropped" else ""
        lines.append(f"  {str(c['name']):<{width}}  {c['type']:<6}  {c['encoding']:<8}  missing {c['missing']:<6} "
                     f"{what}{flag}".rstrip())
    lines.append(f"{report['n_features']} features")
    for split, counts in report.get("class_counts", {}).items():
        lines.append(f"class balance, {split}: " + ", ".join(f"{n} {k}" for n, k in counts.items()))
    return lines + [f"note: {note}" for note in report["notes"]]


# ---- fit ---------------------------------------------------------------------------------------------
def fit_encoding(table, spec=TableSpec(), *, chunk=10000, train_rows=None, classes=None):
    """``(Encoding, DataReport)`` learned from the training rows of ``table`` (a :class:`Table` or
    a DataFrame).

    ``train_rows``: a boolean mask over the table's kept rows (rows with a label and, under
    ``missing="drop"``, no missing input cell; the rows :func:`read_labels` returns, in file
    order), True for a training row; None: every row trains. ``classes``: ``(names, numeric)``
    from :func:`read_labels` (a class list over several files); None: the kept rows' labels.
    Reads the table once, once more for a column that turns out to be text after numbers
    (CSV), and a few times more for exact medians.
    """
    if isinstance(table, pd.DataFrame):
        table = frame_table(table)
    spec, ordinal_orders = _resolved_spec(spec, table.columns)
    if train_rows is not None:
        train_rows = np.asarray(train_rows)
        if train_rows.dtype != bool or train_rows.ndim != 1:
            raise ValueError("train_rows must be a 1-D boolean mask over the kept rows")
    names = [c for c in table.columns if c != spec.label and c not in spec.drop]
    filters = _drop_filter_columns(table.columns, spec.label, spec.drop) if spec.missing == "drop" else ()
    as_text = set(spec.categorical) | set(spec.ordinal)
    scans, flipped, counts, label_texts, provisional, training = _scan(table, spec, chunk, train_rows, as_text,
                                                                      filters, names)
    if flipped:  # text after numbers in a later chunk: those columns' text statistics, from a second pass
        again = _scan(table, spec, chunk, train_rows, as_text | set(flipped), filters, flipped)[0]
        scans.update(again)
    if counts.kept == 0:
        raise InputError(_no_rows_message(table.name, counts, spec.missing))
    n_train = counts.kept if train_rows is None else int(train_rows.sum())
    if n_train == 0:
        raise InputError(f"{table.name}: no training row")
    medians = {}
    if spec.missing == "median":
        numeric = {n: s for n, s in scans.items() if s.kind == "number" and n not in as_text}
        medians = _medians(table, spec, chunk, train_rows, filters, numeric)

    label_report, class_names, numeric_labels = {"column": None}, (), False
    if spec.label is not None:
        found, numeric_found, remap = label_texts.classes()
        if isinstance(classes, Labels):
            classes = (classes.classes, classes.numeric)
        class_names, numeric_labels = (tuple(classes[0]), bool(classes[1])) if classes else (found, numeric_found)
        missing_classes = sorted(set(found) - set(class_names))
        if missing_classes:
            raise InputError(f"labels {missing_classes[:10]} are not among the classes given {list(class_names)[:20]}")
        index_of = {n: i for i, n in enumerate(class_names)}
        class_of_code = np.array([index_of[found[k]] for k in remap], np.int64)  # provisional code -> class
        train_counts = np.zeros(len(class_names), np.int64)
        for codes, train in zip(provisional, training):
            train_counts += np.bincount(class_of_code[codes[train]], minlength=len(class_names))
        label_report = {"column": spec.label, "kind": "numbers" if numeric_labels else "texts",
                        "classes": list(class_names),
                        "training_class_counts": {n: int(c) for n, c in zip(class_names, train_counts)},
                        "missing": counts.missing_label}

    columns, reports, notes = [], [], []
    for name in table.columns:
        if name == spec.label:
            continue
        column, scan = _decide(name, scans.get(name), spec, ordinal_orders, medians, n_train)
        columns.append(column)
        reports.append(_column_report(column, scan))
        if scan is not None and scan.kind == "text" and column.kind == "one-hot":
            note = _numbers_as_text_note(name, scan)
            if note:
                notes.append(note)
    flagged = [c.name for c in columns if c.identifier]
    if flagged:
        kept = [n for n in flagged if n in spec.keep]
        notes.append(f"identifier-like columns {flagged}: " + ("kept as asked" if kept == flagged else
                     "dropped (keep them with keep=[...], --keep NAME)" + (f"; {kept} kept as asked" if kept else "")))
    encoding = Encoding(tuple(columns), spec.label, class_names, numeric_labels, spec.missing, spec.missing_markers)
    if encoding.n_features == 0:
        raise InputError(f"{table.name}: no input column is left to encode (see the data report: "
                         f"{json.dumps(reports)[:300]})")
    report = DataReport(
        source=table.name, reading=list(table.notes) + [f"missing markers: {list(spec.missing_markers)}"],
        rows={"read": counts.read, "kept": counts.kept, "dropped_missing_label": counts.missing_label,
              "dropped_missing_cells": counts.missing_cells, "training": n_train},
        missing_policy=_policy_text(spec), label=label_report, columns=reports,
        n_features=encoding.n_features, notes=notes)
    return encoding, report


def _decide(name, scan, spec, ordinal_orders, medians, n_train):
    """The ColumnEncoding of one input column from its training rows' statistics."""
    if name in spec.drop:
        return ColumnEncoding(name, "dropped", "none", dropped_by_user=True, note="dropped as asked"), scan
    if scan.count == 0:
        return ColumnEncoding(name, "dropped", "none", note="no value in the training rows"), scan
    if scan.kind == "number":
        counter = scan.counter and n_train >= 2 and scan.offset is not None
        if counter and name not in spec.keep and name not in spec.categorical:
            return ColumnEncoding(name, "dropped", "number", identifier=True,
                                  note=f"identifier-like: equals the row number + {scan.offset:g}"), scan
        fill = {"mean": lambda: _exact_mean(scan.total, scan.count), "median": lambda: medians[name],
                "constant": lambda: float(spec.fill_value), "drop": lambda: None}[spec.missing]()
        note = "kept as asked (identifier-like: equals the row number + {:g})".format(scan.offset) if counter else ""
        return ColumnEncoding(name, "numeric", "number", fill=fill, identifier=counter, note=note), scan
    values = "number" if _all_numbers(scan) else "text"
    identifier = scan.unique_per_row
    if identifier and name not in spec.keep:
        return ColumnEncoding(name, "dropped", values, identifier=True,
                              note=f"identifier-like: a different value in each of the {scan.count} training rows"), scan
    if scan.categories is None:
        raise InputError(f"column {name!r} has more than {spec.max_categories} distinct values in the training "
                         "rows; drop it (drop=[...], --drop NAME) or raise max_categories")
    missing_category = scan.missing > 0 and spec.missing != "drop"
    why = "kept as asked (identifier-like); " if identifier else ""
    if name in spec.ordinal:
        order = ordinal_orders.get(name)
        if order is None:
            order = tuple(sorted(scan.categories))
            why += "ordinal as asked (levels in sorted order)"
        else:
            unlisted = sorted(set(scan.categories) - set(order))
            if unlisted:
                raise InputError(f"ordinal column {name!r} holds {unlisted[:10]}, not among its levels {list(order)}")
            why += "ordinal as asked (levels in the order given)"
        return ColumnEncoding(name, "ordinal", values, order, identifier=identifier, note=why), scan
    why += "categorical as asked" if name in spec.categorical else "text values"
    return ColumnEncoding(name, "one-hot", values, tuple(sorted(scan.categories)), missing_category,
                          identifier=identifier, note=why), scan


def _all_numbers(scan):
    return scan.categories is not None and \
        pd.to_numeric(pd.Series(list(scan.categories), dtype=object), errors="coerce").notna().all()


# ---- conversion ----------------------------------------------------------------------------------------
def encoded_chunks(table, encoding, chunk=10000, report=None):
    """Pass 2 of a conversion: ``(X, y)`` per chunk of at most ``chunk`` kept rows -- X float64
    (rows x features, not standardised), y int64 class indices; counts are added to ``report``
    (a :class:`TransformReport`) if given. The rows are those of :func:`read_labels`, in order."""
    start = 0
    for frame in table.frames(chunk):
        encoded = encoding.transform(frame, labels=True, standardize=False,
                                     rows=np.arange(start, start + len(frame)))
        start += len(frame)
        if report is not None:
            report.add(encoded.report)
        if encoded.X.shape[0]:
            yield encoded.X, encoded.y


def read_encoded(path, chunk, encoding, header=None, delimiter=None, report=None):
    """A reader for ``admm_mpi.convert.reader``: the encoded ``(X, y)`` chunks of a table file."""
    return encoded_chunks(open_table(path, header=header, delimiter=delimiter), encoding, chunk, report)


def class_counts(y, classes):
    """``{class name: rows}`` of class indices ``y`` (a split's class balance for the report)."""
    counts = np.bincount(np.asarray(y, np.int64), minlength=len(classes))
    return {str(n): int(c) for n, c in zip(classes, counts)}


def missing_label_problem(table, spec, n_missing):
    """One line refusing ``n_missing`` rows without a label unless ``spec.missing == "drop"``
    (the command line never drops rows silently, and never fills a label), else None."""
    if not n_missing or spec.missing == "drop":
        return None
    label = _resolve(spec.label, table.columns, "label column")
    return (f"{table.name}: the label column {label!r} is empty in {n_missing} rows; labels are never filled: "
            "fill them, or drop those rows (and rows with any missing cell) with --missing drop")


# ---- the encoding in HDF5 files --------------------------------------------------------------------
def save_encoding(f, encoding, storage_dtype, report=None):
    """Store ``encoding`` in the group ``encoding`` of an open h5py file, with the dtype its
    features are stored in (a transform rounds to it, see :meth:`Encoding.transform`) and, for a
    converted data file, the data report (JSON)."""
    group = f.require_group(ENCODING_GROUP)
    encoding.save(group)
    group.attrs["storage_dtype"] = np.dtype(storage_dtype).name
    if report is not None:
        if "report" in group:
            del group["report"]
        group.create_dataset("report", data=json.dumps(report, allow_nan=False))


def read_encoding(path):
    """``(Encoding, storage dtype)`` kept in an HDF5 data or model file, or None if it has none."""
    import h5py

    from admm_mpi.files import hdf5_open_problem

    try:
        with h5py.File(path, "r") as f:
            if ENCODING_GROUP not in f:
                return None
            group = f[ENCODING_GROUP]
            return Encoding.load(group), np.dtype(str(group.attrs.get("storage_dtype", "float64")))
    except OSError as exc:
        raise InputError(hdf5_open_problem(path, exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: its table encoding is damaged ({exc})") from None


def open_raw_table(path, encoding, header=None, delimiter=None):
    """A raw table to predict or evaluate on with ``encoding``: columns are taken by name. A
    table fitted without a header row (columns named 0, 1, ...) is read without one too, and a
    headerless file one column narrower than that table (no label column) takes the names of
    the encoding's input columns, in order."""
    names = [c.name for c in encoding.columns] + ([encoding.label] if encoding.label is not None else [])
    positional = sorted(names, key=lambda n: (len(n), n)) == [str(i) for i in range(len(names))]
    if header is None and table_format(os.fspath(path)) == "csv":
        header = not positional
    table = open_table(path, header=header, delimiter=delimiter)
    inputs = [c.name for c in encoding.columns]
    if positional and not header and len(table.columns) == len(inputs) < len(names):
        mapping, read_file = dict(zip(inputs, table.columns)), table.read

        def read(chunk, columns):
            for frame in read_file(chunk, [mapping[c] for c in columns]):
                yield frame.set_axis(list(columns), axis=1)

        note = f"no label column: the {len(inputs)} columns are the encoding's input columns, in order"
        table = Table(table.name, tuple(inputs), table.notes + (note,), read)
    return table

