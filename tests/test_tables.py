"""Tables (CSV, TSV, Parquet, DataFrames) to float features: admm_mpi.tables."""

import gzip
import json
from fractions import Fraction

import h5py
import numpy as np
import pandas as pd
import pytest

from admm_mpi import tables
from admm_mpi.errors import InputError
from admm_mpi.tables import Encoding, TableSpec, encoded_chunks, fit_encoding, frame_table, open_table, read_labels


def _mixed(n=40, seed=0):
    """A mixed table: numbers with holes, text with holes, an ordinal text, an id, a row counter, a label."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    age[[3, 17]] = np.nan
    income = rng.normal(50_000, 9_000, n).round(2)
    income[5] = np.nan
    city = rng.choice(["Oslo", "Bergen", "Tromsø", "Bodø"], n).astype(object)
    city[[2, 9]] = None
    return pd.DataFrame({
        "customer": [f"c{i:04d}" for i in range(n)],
        "age": age,
        "income": income,
        "city": city,
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "visits": rng.integers(0, 9, n),
        "row": np.arange(1, n + 1),
        "churn": rng.choice(["No", "Yes"], n),
    })


@pytest.fixture
def mixed():
    return _mixed()


@pytest.fixture
def files(tmp_path, mixed):
    """The mixed table as CSV and as its Parquet twin."""
    mixed.to_csv(tmp_path / "t.csv", index=False)
    mixed.to_parquet(tmp_path / "t.parquet", index=False)
    return tmp_path / "t.csv", tmp_path / "t.parquet"


def _encode_all(table, encoding, chunk=7):
    blocks = list(encoded_chunks(table, encoding, chunk))
    return np.vstack([X for X, _ in blocks]), np.concatenate([y for _, y in blocks])


SPEC = TableSpec(label="churn", ordinal={"plan": ["basic", "plus", "pro"]})


# ---- CSV and Parquet ----------------------------------------------------------------------------
def test_csv_and_parquet_twins_encode_to_the_same_arrays(files):
    results = []
    for path in files:
        table = open_table(path)
        encoding, report = fit_encoding(table, SPEC, chunk=9)
        results.append((encoding, *_encode_all(table, encoding)))
    (enc_csv, X_csv, y_csv), (enc_pq, X_pq, y_pq) = results
    assert enc_csv.columns == enc_pq.columns and enc_csv.classes == enc_pq.classes == ("No", "Yes")
    np.testing.assert_array_equal(X_csv, X_pq)
    np.testing.assert_array_equal(y_csv, y_pq)
    assert X_csv.shape == (40, 1 + 1 + 5 + 1 + 1)  # age, income, city x 4 + (missing), plan, visits


def test_tsv_gzip_and_semicolon_files_read_as_the_csv(tmp_path, mixed, files):
    expected = _encode_all(open_table(files[0]), fit_encoding(open_table(files[0]), SPEC)[0])
    mixed.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    with gzip.open(tmp_path / "t.csv.gz", "wt") as f:
        mixed.to_csv(f, index=False)
    mixed.to_csv(tmp_path / "semi.txt", sep=";", index=False)
    for name, sep in (("t.tsv", "\t"), ("t.csv.gz", ","), ("semi.txt", ";")):
        table = open_table(tmp_path / name)
        assert f"delimiter {sep!r}" in table.notes[0]
        got = _encode_all(table, fit_encoding(table, SPEC)[0])
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_header_detected_or_forced(tmp_path):
    (tmp_path / "h.csv").write_text("age,city,y\n30,Oslo,a\n41,Bergen,b\n")
    (tmp_path / "n.csv").write_text("30,Oslo,a\n41,Bergen,b\n")
    (tmp_path / "t.csv").write_text("color,shape\nred,round\nblue,round\n")   # all text: names do not recur
    assert open_table(tmp_path / "h.csv").columns == ("age", "city", "y")
    assert "header row: yes (detected" in open_table(tmp_path / "h.csv").notes[1]
    assert open_table(tmp_path / "n.csv").columns == ("0", "1", "2")
    assert open_table(tmp_path / "t.csv").columns == ("color", "shape")
    forced = open_table(tmp_path / "h.csv", header=False)
    assert forced.columns == ("0", "1", "2") and "(given)" in forced.notes[1]
    assert open_table(tmp_path / "n.csv", header=True).columns == ("30", "Oslo", "a")


def test_headerless_columns_are_named_by_index_and_the_label_by_either(tmp_path):
    (tmp_path / "n.csv").write_text("".join(f"{i % 3},{'ab'[i % 2]},{'xy'[i % 2]}\n" for i in range(8)))
    table = open_table(tmp_path / "n.csv")
    by_name = fit_encoding(table, TableSpec(label="2"))[0]
    by_index = fit_encoding(table, TableSpec(label=-1))[0]
    assert by_name == by_index and by_name.label == "2" and by_name.classes == ("x", "y")
    assert by_name.feature_names == ("0", "1=a", "1=b")


# ---- categories, unknowns, columns ---------------------------------------------------------------
def test_categories_come_from_training_rows_only(mixed):
    mixed.loc[4, "city"] = "Narvik"            # only in a held-out row
    train = np.ones(len(mixed), bool)
    train[4] = False
    encoding, report = fit_encoding(mixed, SPEC, train_rows=train)
    city = next(c for c in encoding.columns if c.name == "city")
    assert "Narvik" not in city.categories and city.categories == ("Bergen", "Bodø", "Oslo", "Tromsø")
    assert report.rows["training"] == len(mixed) - 1
    encoded = encoding.transform(mixed)
    assert encoded.report.unknown == {"city": 1}
    names = encoding.feature_names
    city_features = [names.index(f"city={c}") for c in (*city.categories, tables.MISSING_CATEGORY)]
    np.testing.assert_array_equal(encoded.X[4, city_features], 0.0)


def test_unseen_category_gives_all_zero_one_hot_and_ordinal_minus_one(mixed):
    encoding, _ = fit_encoding(mixed, SPEC)
    new = mixed.head(3).copy()
    new["city"] = ["Oslo", "Atlantis", "Atlantis"]
    new["plan"] = ["pro", "enterprise", "basic"]
    encoded = encoding.transform(new)
    names = encoding.feature_names
    city = [i for i, n in enumerate(names) if n.startswith("city=")]
    np.testing.assert_array_equal(encoded.X[:, city].sum(axis=1), [1, 0, 0])
    np.testing.assert_array_equal(encoded.X[:, names.index("plan")], [2, -1, 0])
    assert encoded.report.unknown == {"city": 2, "plan": 1}


def test_missing_transform_column_is_one_line_naming_it(mixed):
    encoding, _ = fit_encoding(mixed, SPEC)
    with pytest.raises(InputError) as caught:
        encoding.transform(mixed.drop(columns=["income", "plan"]))
    message = str(caught.value)
    assert "'income'" in message and "'plan'" in message and "\n" not in message


def test_dropped_columns_are_not_needed_and_the_label_only_when_asked(mixed):
    encoding, _ = fit_encoding(mixed, SPEC)
    features = mixed.drop(columns=["customer", "row", "churn"])      # the identifiers were dropped
    assert encoding.transform(features).X.shape == (40, encoding.n_features)
    with pytest.raises(InputError, match="no column 'churn'"):
        encoding.transform(features, labels=True)


def test_shuffled_columns_and_extra_columns_transform_identically(mixed):
    encoding, _ = fit_encoding(mixed, SPEC)
    expected = encoding.transform(mixed, labels=True)
    shuffled = mixed[list(np.random.default_rng(1).permutation(mixed.columns))].assign(note="x", score=1.5)
    got = encoding.transform(shuffled, labels=True)
    np.testing.assert_array_equal(got.X, expected.X)
    np.testing.assert_array_equal(got.y, expected.y)
    assert got.report.ignored_columns == ["note", "score"] and expected.report.ignored_columns == []


def test_raw_rows_as_text_equal_typed_rows(mixed, files):
    """Predicting on a CSV read by pandas with its own dtypes, or as text, gives the same features."""
    encoding, _ = fit_encoding(open_table(files[0]), SPEC)
    typed = pd.read_csv(files[0])
    as_text = pd.read_csv(files[0], dtype=str)
    np.testing.assert_array_equal(encoding.transform(typed).X, encoding.transform(as_text).X)


# ---- labels ---------------------------------------------------------------------------------------
def test_string_labels_keep_their_names_sorted(mixed):
    mixed["churn"] = np.where(mixed["churn"] == "Yes", "left", "stayed")
    encoding, report = fit_encoding(mixed, SPEC)
    assert encoding.classes == ("left", "stayed") and report.label["classes"] == ["left", "stayed"]
    y = encoding.transform(mixed, labels=True).y
    np.testing.assert_array_equal(np.array(encoding.classes)[y], mixed["churn"])
    assert report.label["training_class_counts"] == mixed["churn"].value_counts().sort_index().to_dict()


def test_numeric_labels_are_classes_by_value(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 5, 3, 4, 2, 6], "y": ["10", "2", "2.0", "10", "-1", "2"]})
    encoding, _ = fit_encoding(frame, TableSpec(label="y"))
    assert encoding.classes == ("-1", "2", "10") and encoding.numeric_labels
    np.testing.assert_array_equal(encoding.transform(frame, labels=True).y, [2, 1, 1, 2, 0, 1])
    frame.assign(y=[10, 2, 2, 10, -1, 2]).to_parquet(tmp_path / "p.parquet")   # whole numbers in Parquet
    assert fit_encoding(open_table(tmp_path / "p.parquet"), TableSpec(label="y"))[0].classes == ("-1", "2", "10")


def test_missing_labels_are_dropped_and_counted_never_filled(mixed):
    mixed.loc[[1, 6], "churn"] = None
    mixed.loc[8, "churn"] = "?"
    encoding, report = fit_encoding(mixed, SPEC)
    assert report.rows["dropped_missing_label"] == 3 and report.rows["kept"] == 37
    encoded = encoding.transform(mixed, labels=True)
    assert encoded.report.missing_label == 3 and encoded.X.shape[0] == 37
    np.testing.assert_array_equal(encoded.rows, np.setdiff1d(np.arange(40), [1, 6, 8]))
    assert encoding.transform(mixed).X.shape[0] == 40       # features only: every row


def test_a_label_outside_the_classes_is_one_line(mixed):
    encoding, _ = fit_encoding(mixed, SPEC)
    with pytest.raises(InputError, match=r"label 'Maybe' \(data row 1\) is not one of the 2 classes"):
        encoding.transform(mixed.head(2).assign(churn=["Maybe", "No"]), labels=True)


def test_read_labels_gives_one_class_list_for_train_and_test_files(tmp_path, mixed):
    mixed.iloc[:30].to_csv(tmp_path / "train.csv", index=False)
    mixed.iloc[30:].assign(churn="Unsure").to_csv(tmp_path / "test.csv", index=False)
    labels = read_labels([open_table(tmp_path / "train.csv"), open_table(tmp_path / "test.csv")], SPEC, chunk=4)
    assert labels.classes == ("No", "Unsure", "Yes")
    np.testing.assert_array_equal(labels.codes[1], [1] * 10)
    np.testing.assert_array_equal(np.array(labels.classes)[labels.codes[0]], mixed["churn"][:30])
    encoding, _ = fit_encoding(open_table(tmp_path / "train.csv"), SPEC, classes=labels)
    assert encoding.classes == labels.classes
    _, y = _encode_all(open_table(tmp_path / "test.csv"), encoding)
    np.testing.assert_array_equal(y, labels.codes[1])


# ---- missing cells --------------------------------------------------------------------------------
def test_mean_is_the_exact_mean_of_training_values(mixed):
    train = np.arange(40) % 4 != 0
    encoding, report = fit_encoding(mixed, SPEC, train_rows=train)
    for name in ("age", "income"):
        values = mixed[name][train].dropna()
        fill = next(c.fill for c in encoding.columns if c.name == name)
        assert fill == float(sum(map(Fraction, values)) / len(values))
        assert fill == pytest.approx(values.mean(), rel=1e-15)
        assert next(c["missing"] for c in report.columns if c["name"] == name) == mixed[name][train].isna().sum()
    encoded = encoding.transform(mixed)
    age = encoded.X[:, encoding.feature_names.index("age")]
    np.testing.assert_array_equal(age[[3, 17]], next(c.fill for c in encoding.columns if c.name == "age"))
    assert encoded.report.missing == {"age": 2, "income": 1, "city": 2}


def test_median_equals_numpy_and_pandas(mixed):
    train = np.arange(40) % 3 != 1
    encoding, _ = fit_encoding(mixed, TableSpec(label="churn", missing="median"), train_rows=train, chunk=6)
    for name in ("age", "income", "visits"):
        fill = next(c.fill for c in encoding.columns if c.name == name)
        values = mixed[name][train]
        assert fill == np.median(values.dropna()) == values.median()


def test_constant_fill_and_text_missing_category(mixed):
    encoding, _ = fit_encoding(mixed, TableSpec(label="churn", missing="constant", fill_value=-7))
    encoded = encoding.transform(mixed)
    names = encoding.feature_names
    np.testing.assert_array_equal(encoded.X[[3, 17], names.index("age")], -7.0)
    np.testing.assert_array_equal(encoded.X[[2, 9], names.index("city=(missing)")], 1.0)
    assert encoded.X[:, names.index("city=(missing)")].sum() == 2


def test_text_missing_without_training_missing_is_all_zero(mixed):
    encoding, _ = fit_encoding(mixed, SPEC)
    plan = next(c for c in encoding.columns if c.name == "plan")
    assert not plan.missing_category
    mixed.loc[0, "plan"] = None
    mixed.loc[1, "visits"] = None
    encoded = encoding.transform(mixed)
    assert encoded.X[0, encoding.feature_names.index("plan")] == tables.ORDINAL_UNKNOWN
    assert encoded.report.missing["plan"] == 1 and encoded.report.missing["visits"] == 1


def test_drop_policy_drops_rows_with_a_missing_cell(mixed):
    spec = TableSpec(label="churn", missing="drop")
    encoding, report = fit_encoding(mixed, spec)
    holes = mixed.drop(columns="churn").isna().any(axis=1)
    assert report.rows["dropped_missing_cells"] == holes.sum() == 5
    assert report.rows["kept"] == report.rows["training"] == 35
    assert next(c.fill for c in encoding.columns if c.name == "age") is None
    assert "city=(missing)" not in encoding.feature_names
    encoded = encoding.transform(mixed, labels=True)
    np.testing.assert_array_equal(encoded.rows, np.flatnonzero(~holes))
    assert encoded.report.missing_cells == 5
    labels = read_labels(frame_table(mixed), spec)
    np.testing.assert_array_equal(labels.codes[0], encoded.y)


def test_missing_markers_of_uci_and_keel_files(tmp_path):
    (tmp_path / "k.dat").write_text("".join(f"{i}.5,{'?' if i == 2 else i},{'<null>' if i == 4 else 'ab'[i % 2]},"
                                            f"{'pn'[i % 2]}\n" for i in range(6)))
    encoding, report = fit_encoding(open_table(tmp_path / "k.dat"), TableSpec(label=3))
    assert [c["missing"] for c in report.columns] == [0, 1, 1]
    assert encoding.feature_names == ("0", "1", "2=a", "2=b", "2=(missing)")


def test_numbers_as_text_are_noted(mixed):
    mixed["visits"] = mixed["visits"].astype(str)
    mixed.loc[7, "visits"] = "unknown"
    report = fit_encoding(mixed, SPEC)[1]
    assert any("'visits' is text only because of ['unknown'] (1 training rows)" in n for n in report.notes)


# ---- identifiers ------------------------------------------------------------------------------------
def test_identifier_like_columns_are_flagged_and_dropped(mixed):
    encoding, report = fit_encoding(mixed, SPEC)
    flagged = {c["name"]: c for c in report.columns if c["identifier"]}
    assert set(flagged) == {"customer", "row"}
    assert flagged["row"]["note"] == "identifier-like: equals the row number + 1"
    assert all(c["encoding"] == "dropped" for c in flagged.values())
    assert "customer" not in " ".join(encoding.feature_names) and "row" not in encoding.feature_names
    assert any("dropped (keep them with keep=" in n for n in report.notes)


def test_identifier_columns_kept_when_asked(mixed):
    encoding, report = fit_encoding(mixed, TableSpec(label="churn", keep=["row"]))
    row = next(c for c in encoding.columns if c.name == "row")
    assert row.kind == "numeric" and row.identifier and "kept as asked" in row.note


def test_a_repeated_text_or_a_shifted_counter_is_no_identifier(mixed):
    mixed.loc[3, "customer"] = mixed.loc[2, "customer"]
    mixed.loc[5, "row"] = 99
    report = fit_encoding(mixed, SPEC)[1]
    assert not any(c["identifier"] for c in report.columns)


# ---- user options and bad input ------------------------------------------------------------------
def test_categorical_makes_a_numeric_column_one_hot(mixed, files):
    spec = TableSpec(label="churn", categorical=["visits"])
    encodings = [fit_encoding(open_table(p), spec)[0] for p in files]
    visits = [next(c for c in e.columns if c.name == "visits") for e in encodings]
    assert visits[0] == visits[1] and visits[0].kind == "one-hot" and visits[0].values == "number"
    assert visits[0].categories == tuple(sorted(str(v) for v in mixed["visits"].unique()))


def test_ordinal_levels_sorted_or_given_and_unlisted_levels_refused(mixed):
    sorted_levels = fit_encoding(mixed, TableSpec(label="churn", ordinal=["city"]))[0]
    assert next(c.categories for c in sorted_levels.columns if c.name == "city") == ("Bergen", "Bodø", "Oslo", "Tromsø")
    with pytest.raises(InputError, match=r"ordinal column 'plan' holds \['pro'\], not among its levels"):
        fit_encoding(mixed, TableSpec(label="churn", ordinal={"plan": ["basic", "plus"]}))


@pytest.mark.parametrize("spec, message", [
    (TableSpec(label="chrun"), "label column 'chrun' is neither a column name nor an index 0..7"),
    (TableSpec(label="churn", missing="mode"), "missing policy 'mode' is not one of"),
    (TableSpec(label="churn", categorical=["city"], ordinal=["city"]), r"columns \['city'\] are both categorical"),
    (TableSpec(label="churn", drop=["churn"]), "the label column 'churn' cannot also be drop"),
    (TableSpec(label="churn", max_categories=3), "column 'city' has more than 3 distinct values"),
])
def test_bad_options_are_one_line(mixed, spec, message):
    with pytest.raises(InputError, match=message) as caught:
        fit_encoding(mixed, spec)
    assert "\n" not in str(caught.value)


def test_text_in_a_numeric_column_at_transform_is_one_line(mixed):
    encoding, _ = fit_encoding(mixed, SPEC)
    with pytest.raises(InputError, match=r"column 'age' holds 'old' \(data row 2\), not a number"):
        encoding.transform(mixed.head(3).assign(age=["30", "old", "40"]))
    with pytest.raises(InputError, match=r"column 'income' holds inf \(data row 1\)"):
        encoding.transform(mixed.head(1).assign(income=np.inf))


def test_unreadable_files_are_one_line(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n")
    (tmp_path / "t.xlsx").write_text("")
    for path, message in ((tmp_path / "none.csv", "does not exist"), (tmp_path / "empty.csv", "is empty"),
                          (tmp_path / "t.xlsx", "cannot tell the table format")):
        with pytest.raises(InputError, match=message):
            open_table(path)
    with pytest.raises(InputError, match="cannot read .*ragged.csv: Error tokenizing data"):
        read_labels(open_table(tmp_path / "ragged.csv"), TableSpec(label="a"))


def test_a_training_mask_of_the_wrong_length_is_refused(mixed):
    with pytest.raises(InputError, match="the training-row mask has 39 entries but DataFrame has 40 kept rows"):
        fit_encoding(mixed, SPEC, train_rows=np.ones(39, bool))


# ---- chunks, HDF5, standardisation ------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["mean", "median", "drop"])
def test_chunked_fit_and_encoding_equal_the_one_shot(files, missing):
    table = open_table(files[0])
    spec = TableSpec(label="churn", missing=missing, ordinal=["plan"])
    one_shot, _ = fit_encoding(table, spec, chunk=None)
    X, y = _encode_all(table, one_shot, chunk=None)
    for chunk in (1, 2, 3, 7, 39):
        encoding, _ = fit_encoding(table, spec, chunk=chunk)
        assert encoding == one_shot
        got = _encode_all(table, encoding, chunk=chunk)
        np.testing.assert_array_equal(got[0], X)
        np.testing.assert_array_equal(got[1], y)


def test_a_column_turning_to_text_in_a_later_chunk_is_scanned_again(tmp_path, mixed):
    mixed["visits"] = mixed["visits"].astype(object)
    mixed.loc[33, "visits"] = "many"
    mixed.to_csv(tmp_path / "late.csv", index=False)
    table = open_table(tmp_path / "late.csv")
    whole, _ = fit_encoding(table, SPEC, chunk=None)
    chunked, report = fit_encoding(table, SPEC, chunk=5)
    visits = next(c for c in chunked.columns if c.name == "visits")
    assert chunked == whole and visits.kind == "one-hot" and "many" in visits.categories


def test_hdf5_round_trip_is_exact_and_the_group_copies(tmp_path, mixed):
    encoding, _ = fit_encoding(mixed, TableSpec(label="churn", missing="median", ordinal={"plan": ["pro", "plus", "basic"]}))
    X = encoding.transform(mixed).X
    encoding = encoding.with_standardization(X.mean(axis=0), X.std(axis=0) + 0.1)
    with h5py.File(tmp_path / "data.h5", "w") as f:
        encoding.save(f.create_group(tables.ENCODING_GROUP))
    with h5py.File(tmp_path / "data.h5", "r") as src, h5py.File(tmp_path / "model.h5", "w") as dst:
        src.copy(src[tables.ENCODING_GROUP], dst, tables.ENCODING_GROUP)
    with h5py.File(tmp_path / "model.h5", "r") as f:
        loaded = Encoding.load(f[tables.ENCODING_GROUP])
    assert loaded == encoding
    np.testing.assert_array_equal(loaded.transform(mixed).X, encoding.transform(mixed).X)


def test_loading_a_group_without_an_encoding_is_one_line(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        with pytest.raises(InputError, match="holds no table encoding"):
            Encoding.load(f.create_group("encoding"))


def test_storage_dtype_reproduces_a_converted_files_standardised_rows(mixed):
    """convert writes float32 rows, then rescales them in place: (x32 - mean) / std, stored as float32."""
    encoding, _ = fit_encoding(mixed, SPEC)
    X = encoding.transform(mixed).X
    mean, std = X.mean(axis=0), X.std(axis=0)
    stored = ((X.astype(np.float32) - mean) / std).astype(np.float32)
    shuffled = mixed[mixed.columns[::-1]]
    got = encoding.with_standardization(mean, std).transform(shuffled, storage_dtype=np.float32).X
    np.testing.assert_array_equal(got, stored)


def test_data_report_is_json(files):
    report = fit_encoding(open_table(files[0]), SPEC)[1].as_dict()
    text = json.dumps(report)
    assert json.loads(text)["label"]["classes"] == ["No", "Yes"]
    columns = {c["name"]: c for c in report["columns"]}
    assert columns["city"] == {"name": "city", "type": "text", "encoding": "one-hot", "missing": 2,
                               "identifier": False, "n_categories": 4,
                               "categories": ["Bergen", "Bodø", "Oslo", "Tromsø"], "note": "text values"}
    assert columns["plan"]["encoding"] == "ordinal" and columns["age"]["fill"] is not None
    assert tables.class_counts([0, 1, 1], ("No", "Yes")) == {"No": 1, "Yes": 2}


# ---- exact statistics ---------------------------------------------------------------------------------
def test_exact_sum_is_exact():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1e6, 500), [5e-324, -5e-324 * 3, 1e308, -1e308, 0.1, -0.0],
                             rng.normal(0, 1e-300, 50)])
    assert tables._exact_sum(values) == sum(Fraction(v) for v in values) * 2 ** 1074


def test_radix_median_selection_with_small_groups(monkeypatch):
    """Force histogram rounds (at most 3 values collected) on ties, signs, zeros and subnormals."""
    monkeypatch.setattr(tables, "MEDIAN_SELECT_VALUES", 3)
    rng = np.random.default_rng(4)
    cases = [rng.normal(size=101), rng.integers(-3, 3, 200).astype(float), np.array([-0.0, 0.0, 0.0, -1.0]),
             np.array([5e-324, 1e-320, -5e-324, 2.0, 3.0, 7.0]), np.full(9, 2.5), rng.normal(size=1000) * 1e-300]
    for values in cases:
        frame = pd.DataFrame({"x": np.r_[values, np.nan], "y": 0})
        encoding, _ = fit_encoding(frame, TableSpec(label="y", missing="median"), chunk=17)
        assert encoding.columns[0].fill == np.median(values)
