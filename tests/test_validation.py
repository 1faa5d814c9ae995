"""Validation split, model selection, early stopping and when the test split is evaluated."""

import json

import h5py
import numpy as np
import pytest

from admm_mpi.config import TrainConfig, resolve
from admm_mpi.data import load_shard, validation_rows, write_dataset
from admm_mpi.errors import InputError
from admm_mpi.grid import Grid
from admm_mpi.model import forward, load_model
from admm_mpi.train import train

from tests.helpers import blobs, run_admm


def _noisy(path, n=300, seed=11, **kw):
    """Overlapping blobs: validation accuracy rises, then wanders (the best iterate is not the last)."""
    X, y = blobs(n, 6, 3, seed=seed, spread=2.5)
    Xt, yt = blobs(60, 6, 3, seed=seed + 1, spread=2.5)
    write_dataset(str(path), X, y, Xt, yt, name="noisy", n_classes=3, **kw)
    return X, y, Xt, yt


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _weights(path):
    with h5py.File(path, "r") as f:
        return [f[f"layers/{l}/{k}"][...] for l in range(len(f["layers"])) for k in "Wb"]


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    return len(wa) == len(wb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(wa, wb))


def _train(tmp_path, name, *args, ranks=2, data=None):
    out = tmp_path / name
    proc = run_admm(ranks, "train", "--data", data or tmp_path / "noisy.h5", "--hidden", "16,16", "--dtype",
                    "float64", "--no-progress", "--out", out, *args)
    assert proc.returncode == 0, proc.stderr
    return out, proc


# -- the split ---------------------------------------------------------------------------------------
def test_validation_rows_are_stratified_and_drawn_from_the_seed():
    y = np.repeat([0, 1, 2, 3], [50, 31, 2, 1])
    held = validation_rows(y, 0.2, seed=4)
    assert np.all(np.diff(held) > 0)  # sorted, no repeats
    # round(0.2 n_c) per class, but every class keeps a training row (the single row of class 3)
    assert list(np.bincount(y[held], minlength=4)) == [10, 6, 0, 0]
    assert np.array_equal(held, validation_rows(y, 0.2, seed=4))
    assert not np.array_equal(held, validation_rows(y, 0.2, seed=5))
    assert validation_rows(y, 0.0, seed=4).size == 0


@pytest.mark.mpi(ranks=[1, 2, 3, 4], timeout=60)
def test_every_rank_count_holds_out_the_same_rows(comm, shared_tmp):
    """Gathered in rank order, the validation and training columns are the serial run's, on any
    number of ranks; the training columns stay in contiguous balanced blocks."""
    path = shared_tmp / "d.h5"
    if comm.rank == 0:
        X, y = blobs(61, 4, 3, seed=2)
        write_dataset(str(path), X, y, name="d", n_classes=3)
    comm.Barrier()
    with h5py.File(path, "r") as f:
        X, y = f["X"][...], f["y"][...]
    held = validation_rows(y, 0.25, seed=3)
    kept = np.setdiff1d(np.arange(61), held)
    grid = Grid(comm)
    shard = load_shard(str(path), grid, validation_fraction=0.25, seed=3)
    assert (shard.n_total, shard.n_val_total, shard.validation_source) == (kept.size, held.size, "held_out")
    train_cols = np.concatenate(comm.allgather(shard.X.T))
    val_cols = np.concatenate(comm.allgather(shard.X_val.T))
    np.testing.assert_array_equal(train_cols, X[kept])
    np.testing.assert_array_equal(np.concatenate(comm.allgather(shard.y)), y[kept])
    np.testing.assert_array_equal(val_cols, X[held])
    np.testing.assert_array_equal(np.concatenate(comm.allgather(shard.y_val)), y[held])
    sizes = comm.allgather(shard.X.shape[1])
    assert max(sizes) - min(sizes) <= 1 and shard.start == sum(sizes[:comm.rank])
    grid.close()


def test_a_files_own_validation_split_is_used_instead_of_holding_out(tmp_path, capsys):
    X, y = blobs(80, 5, 3, seed=1)
    Xv, yv = blobs(20, 5, 3, seed=2)
    path = tmp_path / "val.h5"
    write_dataset(str(path), X, y, name="v", n_classes=3, X_val=Xv, y_val=yv)
    shard = load_shard(str(path), Grid.serial(), validation_fraction=0.3, seed=0)
    assert (shard.n_total, shard.n_val_total, shard.validation_source) == (80, 20, "file")
    np.testing.assert_array_equal(shard.X_val, Xv.T)
    np.testing.assert_array_equal(shard.X, X.T)
    summary = train(TrainConfig.from_settings(data=str(path), hidden=(8,), iters=3, progress=False, keep="best"),
                    Grid.serial(), out=False).summary
    assert (summary["n_train"], summary["n_validation"], summary["validation_source"]) == (80, 20, "file")
    assert summary["validation_accuracy"] is not None
    # a fraction given explicitly holds nothing out beside the file's split, and the run says so
    summary = train(TrainConfig.from_settings(data=str(path), hidden=(8,), iters=3, progress=False,
                                              validation_fraction=0.3), Grid.serial(), out=False).summary
    assert (summary["n_train"], summary["n_validation"], summary["validation_source"]) == (80, 20, "file")
    assert "has its own validation split (X_val, y_val), which is used" in capsys.readouterr().err


def test_a_validation_label_no_training_row_has_is_refused(tmp_path):
    X, y = blobs(80, 5, 2, seed=1)
    Xv, _ = blobs(6, 5, 2, seed=2)
    path = tmp_path / "val.h5"
    write_dataset(str(path), X, y, name="v", X_val=Xv, y_val=np.array([0, 1, 2, 0, 1, 0]))
    with pytest.raises(InputError, match="y_val has label 2 outside 0..1"):
        load_shard(str(path), Grid.serial())
    assert load_shard(str(path), Grid.serial(), read_validation=False).n_classes == 2  # evaluate, predict


def test_an_empty_file_validation_split_is_refused(tmp_path):
    X, y = blobs(80, 5, 2, seed=1)
    path = tmp_path / "val.h5"
    write_dataset(str(path), X, y, name="v", X_val=np.empty((0, 5)), y_val=np.empty(0, np.int64))
    with pytest.raises(InputError, match="X_val and y_val hold no rows"):
        load_shard(str(path), Grid.serial(), validation_fraction=0.1)
    assert load_shard(str(path), Grid.serial(), read_validation=False).n_val_total == 0  # evaluate, predict


def test_a_new_best_never_pairs_its_row_with_another_iterates_weights():
    """With keep last (no copy) a new best drops the copy of an earlier best, which a resumed
    --keep best run would otherwise save under the new best's iteration."""
    from types import SimpleNamespace

    from admm_mpi.train import Selection

    selection = Selection()
    selection.update(3, 0.5, SimpleNamespace(weights=[np.ones(2)], biases=[np.zeros(1)]), keep_copy=True)
    assert selection.best_iteration == 3 and selection.model is not None
    selection.update(4, 0.4, SimpleNamespace(weights=[2 * np.ones(2)], biases=[np.zeros(1)]), keep_copy=False)
    assert selection.best_iteration == 3 and selection.model.weights[0][0] == 1.0  # not better: kept
    selection.update(5, 0.6, SimpleNamespace(weights=[3 * np.ones(2)], biases=[np.zeros(1)]), keep_copy=False)
    assert (selection.best_iteration, selection.model, selection.evaluations_since_best) == (5, None, 0)


def test_resuming_with_keep_best_from_a_keep_last_run_restarts_the_search_and_says_so(tmp_path):
    _noisy(tmp_path / "noisy.h5")
    flags = ["--solver", "taylor", "--validation-fraction", 0.3, "--no-early-stopping"]
    _train(tmp_path, "run", *flags, "--keep", "last", "--iters", 4, "--checkpoint-every", 4)
    out, proc = _train(tmp_path, "run", *flags, "--keep", "best", "--iters", 8, "--resume", "auto")
    assert "the search for the best iterate starts again at iteration 5" in proc.stderr
    summary, rows = _summary(out), _rows(out)
    later = [r["validation_accuracy"] for r in rows if r["iteration"] >= 5]
    assert summary["kept"] == "best" and summary["kept_iteration"] == 5 + int(np.argmax(later))


# -- selection and stopping ----------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [["--solver", "taylor"], ["--solver", "pdadmm", "--layout", "layer"]])
def test_keep_best_saves_the_best_validation_iterate(tmp_path, solver):
    """model.h5 is the first iterate with the highest validation accuracy in metrics.jsonl: its
    accuracy recomputed from model.h5 matches, and training only up to it gives the same bits."""
    _, y, _, _ = _noisy(tmp_path / "noisy.h5")
    best, _ = _train(tmp_path, "best", *solver, "--iters", 25, "--validation-fraction", 0.3, "--keep", "best",
                     "--no-early-stopping", "--eval-train", "every")
    rows, summary = _rows(best), _summary(best)
    accuracies = [r["validation_accuracy"] for r in rows]
    k = int(np.argmax(accuracies)) + 1
    assert summary["kept_iteration"] == summary["best_validation_iteration"] == k
    assert k < 25, "the setting must leave the best iterate before the last, or the test shows nothing"
    assert summary["validation_accuracy"] == accuracies[k - 1]
    assert summary["train_accuracy"] == rows[k - 1]["train_accuracy"]

    spec, weights, biases = load_model(best / "model.h5")
    with h5py.File(tmp_path / "noisy.h5", "r") as f:
        X = f["X"][...]
    held = validation_rows(y, 0.3, seed=0)
    predicted = spec.loss_fn.predict(forward(spec, weights, biases, X[held].T))
    assert np.mean(predicted == y[held]) == accuracies[k - 1]

    upto, _ = _train(tmp_path, "upto", *solver, "--iters", k, "--validation-fraction", 0.3, "--keep", "last",
                     "--no-early-stopping")
    assert _same_weights(best / "model.h5", upto / "model.h5")
    last, _ = _train(tmp_path, "last", *solver, "--iters", 25, "--validation-fraction", 0.3, "--keep", "last",
                     "--no-early-stopping")
    assert not _same_weights(best / "model.h5", last / "model.h5")
    assert _summary(last)["kept_iteration"] == 25


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path):
    _noisy(tmp_path / "noisy.h5")
    out, proc = _train(tmp_path, "early", "--iters", 60, "--validation-fraction", 0.3, "--early-stopping",
                       "--patience", 3, "--eval-every", 2, "--keep", "best")
    rows, summary = _rows(out), _summary(out)
    evaluated = [(r["iteration"], r["validation_accuracy"]) for r in rows if r["validation_accuracy"] is not None]
    assert [i for i, _ in evaluated] == list(range(2, rows[-1]["iteration"] + 1, 2))
    best, stale, stop = -1.0, 0, None
    for iteration, accuracy in evaluated:
        best, stale = (accuracy, 0) if accuracy > best else (best, stale + 1)
        if stale == 3:
            stop = iteration
            break
    assert stop is not None and stop == rows[-1]["iteration"] == summary["iterations"] < 60
    assert summary["stopped"] == "early_stopping" and "early stopping" in proc.stdout
    assert summary["validation_accuracy"] == best


@pytest.mark.parametrize("solver", [["--solver", "taylor"], ["--solver", "pdadmm", "--layout", "layer"]])
def test_a_resumed_run_keeps_the_best_iterate_and_stops_as_the_uninterrupted_run(tmp_path, solver):
    """The selection is checkpointed: a run stopped after its best iterate and resumed keeps that
    iterate (not the best since the resume), stops at the same evaluation, and saves the same model."""
    _noisy(tmp_path / "noisy.h5")
    flags = [*solver, "--validation-fraction", 0.3, "--keep", "best", "--early-stopping", "--patience", 4]
    whole, _ = _train(tmp_path, "whole", *flags, "--iters", 40)
    summary = _summary(whole)
    best, stop = summary["kept_iteration"], summary["iterations"]
    assert summary["stopped"] == "early_stopping" and stop == best + 4
    paused = best + 2  # after the best iterate, before the stop: the selection must survive the resume
    split, _ = _train(tmp_path, "split", *flags, "--iters", paused, "--checkpoint-every", paused)
    assert _summary(split)["kept_iteration"] == best
    _train(tmp_path, "split", *flags, "--iters", 40, "--resume", "auto")
    resumed = _summary(split)
    assert resumed["first_iteration"] == paused + 1
    for key in ("iterations", "stopped", "kept", "kept_iteration", "best_validation_iteration",
                "train_accuracy", "validation_accuracy", "test_accuracy"):
        assert resumed[key] == summary[key], key
    curve = [(r["iteration"], r["validation_accuracy"], r["objective"]) for r in _rows(whole)]
    assert [(r["iteration"], r["validation_accuracy"], r["objective"]) for r in _rows(split)] == curve
    assert _same_weights(whole / "model.h5", split / "model.h5")


@pytest.mark.parametrize("keep", ["best", "last"])
def test_eval_train_end_scores_the_kept_model_once_and_changes_no_weight(tmp_path, keep):
    _noisy(tmp_path / "noisy.h5")
    flags = ("--solver", "taylor", "--iters", 12, "--validation-fraction", 0.3, "--no-early-stopping", "--keep", keep)
    every, _ = _train(tmp_path, "every", *flags, "--eval-train", "every")
    end, _ = _train(tmp_path, "end", *flags, "--eval-train", "end")
    never, _ = _train(tmp_path, "never", *flags, "--eval-train", "never")
    assert _same_weights(every / "model.h5", end / "model.h5") and _same_weights(every / "model.h5", never / "model.h5")
    kept = _summary(every)["kept_iteration"]
    assert _summary(end)["kept_iteration"] == kept
    assert _summary(end)["train_accuracy"] == _rows(every)[kept - 1]["train_accuracy"] == \
        _summary(every)["train_accuracy"] is not None
    scored = [r["iteration"] for r in _rows(end) if r["train_accuracy"] is not None]
    assert scored == ([12] if keep == "last" else [])  # the last iterate kept: its own row
    assert _summary(never)["train_accuracy"] is None and all(r["train_accuracy"] is None for r in _rows(never))
    assert [r["validation_accuracy"] for r in _rows(end)] == [r["validation_accuracy"] for r in _rows(every)]


def test_a_kept_row_scored_before_a_resume_under_end_gets_its_training_accuracy_under_every(tmp_path):
    """The best row restored from a checkpoint written with ``--eval-train end`` has no training
    accuracy; resumed with ``every``, the summary still gives the kept model's, the same figure."""
    _noisy(tmp_path / "noisy.h5")
    flags = ["--solver", "taylor", "--validation-fraction", 0.3, "--keep", "best", "--early-stopping",
             "--patience", 4]
    whole, _ = _train(tmp_path, "whole", *flags, "--iters", 40, "--eval-train", "every")
    best = _summary(whole)["kept_iteration"]
    paused = best + 2  # the best row is scored, and checkpointed, before the resume
    split, _ = _train(tmp_path, "split", *flags, "--iters", paused, "--checkpoint-every", paused,
                      "--eval-train", "end")
    _train(tmp_path, "split", *flags, "--iters", 40, "--resume", "auto", "--eval-train", "every")
    resumed = _summary(split)
    assert resumed["first_iteration"] == paused + 1 and resumed["kept_iteration"] == best
    assert _rows(split)[best - 1]["train_accuracy"] is None  # scored under end: not in its row
    assert resumed["train_accuracy"] == _summary(whole)["train_accuracy"] is not None
    assert _same_weights(whole / "model.h5", split / "model.h5")


def test_eval_every_and_eval_test_change_no_weight(tmp_path):
    _noisy(tmp_path / "noisy.h5")
    for solver in (["--solver", "taylor"], ["--solver", "pdadmm", "--layout", "layer"]):
        name = solver[1]
        every, _ = _train(tmp_path, f"{name}-every", *solver, "--iters", 10, "--validation-fraction", 0.3,
                          "--no-early-stopping", "--keep", "last", "--eval-every", 1, "--eval-test", "every")
        sparse, _ = _train(tmp_path, f"{name}-sparse", *solver, "--iters", 10, "--validation-fraction", 0.3,
                           "--no-early-stopping", "--keep", "last", "--eval-every", 4, "--eval-test", "never",
                           "--eval-train", "every")
        assert _same_weights(every / "model.h5", sparse / "model.h5"), name
        rows = _rows(sparse)
        assert [r["iteration"] for r in rows if r["train_accuracy"] is not None] == [4, 8, 10]
        # eval_train end (the default): the kept model's training accuracy once, the same figure
        assert all(r["train_accuracy"] is None for r in _rows(every)[:-1])
        assert _rows(every)[-1]["train_accuracy"] == rows[-1]["train_accuracy"] == _summary(every)["train_accuracy"]
        assert [r["iteration"] for r in rows if r["validation_loss"] is not None] == [4, 8, 10]
        assert all(r["test_accuracy"] is None for r in rows) and _summary(sparse)["test_accuracy"] is None
        assert all(r["test_accuracy"] is not None for r in _rows(every))
        assert _rows(every)[9]["validation_accuracy"] == rows[9]["validation_accuracy"]


def test_the_test_split_never_influences_training(tmp_path):
    """Permuted test labels and other test features: the same weights bit for bit, under every
    setting that reads the test split while training (each evaluation, early stopping, keep best)."""
    X, y, Xt, yt = _noisy(tmp_path / "noisy.h5")
    other = tmp_path / "other.h5"
    rng = np.random.default_rng(0)
    write_dataset(str(other), X, y, rng.standard_normal(Xt.shape) * 5, rng.permutation(yt), name="noisy", n_classes=3)
    args = ("--iters", 30, "--validation-fraction", 0.3, "--eval-test", "every", "--keep", "best",
            "--early-stopping", "--patience", 4)
    a, _ = _train(tmp_path, "a", *args)
    b, _ = _train(tmp_path, "b", *args, data=other)
    assert _same_weights(a / "model.h5", b / "model.h5")
    ra, rb = _rows(a), _rows(b)
    assert [r["validation_accuracy"] for r in ra] == [r["validation_accuracy"] for r in rb]
    assert [r["test_accuracy"] for r in ra] != [r["test_accuracy"] for r in rb]  # the test split was read


def test_eval_test_never_does_not_read_the_test_split(tmp_path):
    X, y = blobs(120, 5, 3, seed=3)
    Xt, yt = blobs(30, 5, 3, seed=4)
    Xt[4, 2] = np.nan  # a test split that would be refused if it were read
    path = tmp_path / "nan_test.h5"
    write_dataset(str(path), X, y, Xt, yt, name="t", n_classes=3)
    out, proc = _train(tmp_path, "never", "--iters", 3, "--eval-test", "never", data=path)
    assert all(r["test_accuracy"] is None for r in _rows(out))
    assert _summary(out)["test_accuracy"] is None and "test accuracy" not in proc.stdout
    refused = run_admm(1, "train", "--data", path, "--iters", 3, "--no-progress", "--out", tmp_path / "end")
    assert refused.returncode == 2 and "X_test contains NaN" in refused.stderr


# -- distributed == serial -------------------------------------------------------------------------------
@pytest.mark.mpi(ranks=[2, 3, 4], timeout=120)
def test_selection_and_stopping_distributed_equals_serial(comm, shared_tmp):
    path = shared_tmp / "noisy.h5"
    if comm.rank == 0:
        _noisy(path)
    comm.Barrier()
    config = TrainConfig.from_settings(data=str(path), hidden=(12, 8), iters=40, dtype="float64", progress=False,
                         validation_fraction=0.3, keep="best", early_stopping=True, patience=4, eval_every=2)
    distributed = train(config, Grid(comm), out=False)
    serial = train(config, Grid.serial(), out=False)
    for key in ("iterations", "kept_iteration", "stopped", "validation_accuracy", "train_accuracy", "test_accuracy"):
        assert distributed.summary[key] == serial.summary[key], key
    assert distributed.summary["validation_loss"] == pytest.approx(serial.summary["validation_loss"], rel=1e-10)
    for W, b, W_ref, b_ref in zip(*distributed.model, *serial.model):
        # [W | b] together: a layer's bias is solved with its weights (alone it can be ~1e-4 in norm,
        # where a rounding difference of 3e-14 would already be 1e-10 of it)
        layer, ref = np.column_stack([W, b]), np.column_stack([W_ref, b_ref])
        assert np.linalg.norm(layer - ref) <= 1e-10 * np.linalg.norm(ref)


# -- bad settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, message", [
    ({"validation_fraction": 1.0}, "validation_fraction must lie in \\[0, 1\\)"),
    ({"validation_fraction": -0.1}, "validation_fraction must lie in \\[0, 1\\)"),
    ({"validation_fraction": "nan"}, "validation_fraction must lie in \\[0, 1\\)"),
    ({"patience": 0}, "patience must be at least 1"),
    ({"keep": "worst"}, "unknown keep 'worst'"),
    ({"eval_test": "sometimes"}, "unknown eval_test 'sometimes'"),
    ({"eval_every": 0}, "eval_every must be at least 1"),
    ({"early_stopping": "perhaps"}, "early_stopping"),
])
def test_bad_settings_are_refused(setting, message):
    with pytest.raises(InputError, match=message):
        resolve(cli=setting)


@pytest.mark.parametrize("args, message", [
    # asked for explicitly, keep best and early stopping without validation rows are errors
    (["--validation-fraction", "0", "--keep", "best"], "--keep best needs a validation split"),
    (["--validation-fraction", "0", "--early-stopping"], "--early-stopping needs a validation split"),
    (["--validation-fraction", "0", "--no-early-stopping", "--keep", "best"], "--keep best needs a validation split"),
    (["--validation-fraction", "0.001"], "holds out no row"),
    (["--validation-fraction", "1.5"], "validation_fraction must lie in [0, 1)"),
    (["--eval-test", "always"], "unknown eval_test 'always'"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, args, message):
    _noisy(tmp_path / "noisy.h5", n=60)
    proc = run_admm(2, "train", "--data", tmp_path / "noisy.h5", "--iters", 2, "--no-progress",
                    "--out", tmp_path / "run", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("admm-mpi: error: ") and message in lines[0], proc.stderr
