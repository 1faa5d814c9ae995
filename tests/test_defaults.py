"""The defaults chosen on the public suite (bench/results/suite.md): minibatch_am with a batch size
scaled to the data, a validation split, early stopping, keep best; each can be turned off."""

import json

import numpy as np
import pytest

from admm_mpi.config import TrainConfig, resolve, without_validation
from admm_mpi.data import write_dataset
from admm_mpi.errors import InputError
from admm_mpi.grid import Grid
from admm_mpi.solvers.batches import scaled_batch_size
from admm_mpi.train import feature_scale_problem, train

from tests.helpers import blobs, run_admm


# -- the batch-size rule -------------------------------------------------------------------------------
@pytest.mark.parametrize("n_train, batch", [
    (1, 100), (150, 100), (1999, 100), (2000, 100), (2019, 100),  # below the floor: 100
    (2020, 101), (2039, 101), (2253, 112), (39999, 1999),          # a twentieth of the rows, rounded down
    (40000, 2000), (40019, 2000), (40020, 2000), (10**7, 2000),    # above the ceiling: 2000
])
def test_scaled_batch_size_is_a_twentieth_of_the_rows_clipped_to_100_2000(n_train, batch):
    assert scaled_batch_size(n_train) == batch


def test_minibatch_am_batch_size_auto_is_the_rule_and_an_explicit_one_wins():
    from admm_mpi.solvers.minibatch_am import MiniBatchAM

    params = TrainConfig().params
    assert (TrainConfig().solver, type(params)) == ("minibatch_am", MiniBatchAM.Params) and params.batch_size == "auto"
    settings = dict(beta=0.1, gamma=1.0, rho=1e-2, ridge=1e-4, average=1.0)
    assert MiniBatchAM(None, Grid.serial(), 5432, batch_size="auto", **settings).batch_size == 271
    assert MiniBatchAM(None, Grid.serial(), 5432, batch_size="full", **settings).batch_size == 5432
    assert MiniBatchAM(None, Grid.serial(), 5432, batch_size=64, **settings).batch_size == 64


def _blob_file(path, n, d=6, classes=3, seed=5, scale=1.0, test=True):
    X, y = blobs(n, d, classes, seed=seed)
    Xt, yt = blobs(40, d, classes, seed=seed + 1)
    write_dataset(str(path), X * scale, y, Xt * scale if test else None, yt if test else None, name="blobs",
                  n_classes=classes)
    return str(path)


@pytest.mark.mpi(ranks=[1, 2, 3], timeout=180)
def test_scaled_batches_distributed_equal_serial(comm, shared_tmp):
    """The rule reads the global training rows (after the validation rows are held out), so every
    rank count runs the same batches: 2503 rows, 250 held out, batches of 2253 // 20 = 112."""
    path = shared_tmp / "rule.h5"
    if comm.rank == 0:
        _blob_file(path, 2503)
    comm.Barrier()
    config = TrainConfig.from_settings(data=str(path), hidden=(12, 8), iters=3, dtype="float64", progress=False)
    distributed = train(config, Grid(comm), out=False)
    serial = train(config, Grid.serial(), out=False)
    assert (distributed.summary["n_train"], distributed.summary["n_validation"]) == (2253, 250)
    assert distributed.summary["batch_size"] == serial.summary["batch_size"] == 112
    assert distributed.summary["config"]["batch_size"] == "auto"  # the setting: the rule
    for key in ("iterations", "kept_iteration", "validation_accuracy", "train_accuracy"):
        assert distributed.summary[key] == serial.summary[key], key
    for W, b, W_ref, b_ref in zip(*distributed.model, *serial.model):
        layer, ref = np.column_stack([W, b]), np.column_stack([W_ref, b_ref])
        assert np.linalg.norm(layer - ref) <= 1e-10 * np.linalg.norm(ref)
    assert comm.allgather(distributed.summary["batch_size"]) == [112] * comm.size


# -- the defaults are visible ------------------------------------------------------------------------------
def test_config_defaults_and_help_show_the_new_defaults():
    defaults = run_admm(1, "config", "--defaults")
    assert defaults.returncode == 0, defaults.stderr
    for line in ('solver = "minibatch_am"', "iters = 60", "validation_fraction = 0.1", "early_stopping = true",
                 "patience = 10", 'keep = "best"'):
        assert f"\n{line}\n" in defaults.stdout, line
    minibatch_am = defaults.stdout.split("# minibatch_am")[1]
    assert '#   batch_size = "auto"  # ' in minibatch_am and "n_train // 20 clipped to [100, 2000]" in minibatch_am
    helped = run_admm(1, "train", "--help")
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())  # argparse wraps lines
    for fragment in ("(default: minibatch_am)", "--no-early-stopping", "(default: 0.1)", "(default: on)",
                     "(default: best)", "n_train // 20 clipped to [100, 2000]", "(default: 60)", "(default: auto)"):
        assert fragment in text, fragment


# -- without validation rows -----------------------------------------------------------------------------
def test_validation_defaults_give_way_but_explicit_ones_are_errors():
    fallback = without_validation(TrainConfig())
    assert (fallback.early_stopping, fallback.keep) == (False, "last")
    assert fallback.solver == "minibatch_am" and fallback.patience == 10
    with pytest.raises(InputError, match="--early-stopping needs a validation split.*--no-early-stopping"):
        without_validation(resolve(cli={"early_stopping": True}, environ={}))
    with pytest.raises(InputError, match="--keep best needs a validation split.*--keep last"):
        without_validation(resolve(environ={"ADMM_MPI_KEEP": "best"}))
    given_off = without_validation(resolve(cli={"early_stopping": False, "keep": "last"}, environ={}))
    assert (given_off.early_stopping, given_off.keep) == (False, "last")


def _run(tmp_path, name, data, *args, ranks=2):
    out = tmp_path / name
    proc = run_admm(ranks, "train", "--data", data, "--hidden", "16,16", "--iters", 15, "--no-progress",
                    "--out", out, *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "summary.json").read_text()), proc


def test_each_default_can_be_turned_off(tmp_path):
    data = _blob_file(tmp_path / "b.h5", 400)
    on, _ = _run(tmp_path, "defaults", data, "--patience", 2)
    assert (on["solver"], on["n_validation"], on["kept"], on["batch_size"]) == ("minibatch_am", 40, "best", 100)
    assert on["stopped"] == "early_stopping" and on["iterations"] < 15  # blobs separate at once: stops
    config = on["config"]
    assert (config["validation_fraction"], config["early_stopping"], config["keep"]) == (0.1, True, "best")

    no_split, _ = _run(tmp_path, "no-split", data, "--patience", 2, "--validation-fraction", 0)
    assert (no_split["n_train"], no_split["n_validation"], no_split["validation_accuracy"]) == (400, 0, None)
    assert no_split["iterations"] == no_split["kept_iteration"] == 15 and no_split["stopped"] == "iterations"
    assert (no_split["config"]["early_stopping"], no_split["config"]["keep"]) == (False, "last")  # gave way

    no_stop, _ = _run(tmp_path, "no-stop", data, "--patience", 2, "--no-early-stopping")
    assert no_stop["iterations"] == 15 and no_stop["n_validation"] == 40 and no_stop["kept"] == "best"
    assert no_stop["kept_iteration"] == no_stop["best_validation_iteration"] < 15

    last, _ = _run(tmp_path, "last", data, "--patience", 2, "--keep", "last")
    assert last["kept_iteration"] == last["iterations"] == on["iterations"] and last["kept"] == "last"

    taylor, _ = _run(tmp_path, "taylor", data, "--solver", "taylor", "--no-early-stopping", "--keep", "last")
    assert (taylor["solver"], taylor["batch_size"], taylor["iterations"]) == ("taylor", None, 15)
    batch, _ = _run(tmp_path, "batch", data, "--batch-size", 50, "--no-early-stopping")
    assert batch["batch_size"] == 50 and batch["config"]["batch_size"] == 50


def test_the_default_fraction_gives_way_on_a_tiny_data_set_an_explicit_one_does_not(tmp_path):
    """0.1 of 4 rows per class rounds to none: by default the run goes on without validation."""
    path = tmp_path / "tiny.h5"
    write_dataset(str(path), np.random.default_rng(0).standard_normal((12, 3)), np.repeat([0, 1, 2], 4),
                  name="tiny", n_classes=3)
    summary, _ = _run(tmp_path, "tiny", path)
    assert (summary["n_train"], summary["n_validation"], summary["kept"]) == (12, 0, "last")
    refused = run_admm(2, "train", "--data", path, "--validation-fraction", 0.1, "--no-progress",
                       "--out", tmp_path / "refused")
    assert refused.returncode == 2 and "holds out no row" in refused.stderr


# -- features far from standardised ---------------------------------------------------------------------------
def _scale_problem(X):
    X = np.asarray(X, dtype=np.float64)
    return feature_scale_problem(X.sum(axis=0), (X**2).sum(axis=0), X.shape[0])


def test_feature_scale_thresholds():
    import h5py

    from admm_mpi.data import resolve_path

    with h5py.File(resolve_path("digits"), "r") as f:
        digits = f["X"][...]
    assert _scale_problem(digits) is None  # pixels / 16 in [0, 1], constant columns among them
    assert "far from standardised" in _scale_problem(digits * 255)  # raw pixels in [0, 255]
    signs = np.resize([-1.0, 1.0], (500, 1))  # a column of mean 0 and std 1, exactly
    assert _scale_problem(signs * [1, 2, 0.5]) is None
    assert "|mean| 20, std 1)" in _scale_problem(signs * [1, 1] + [0, 20])
    assert "|mean| 0, std 30)" in _scale_problem(signs * [1, 30])
    assert "largest column std 0.01)" in _scale_problem(signs * [0.01, 0.001])


def test_one_warning_line_on_unscaled_features(tmp_path):
    data = _blob_file(tmp_path / "raw.h5", 200, scale=100.0)
    _, proc = _run(tmp_path, "raw", data, "--iters", 2)
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("admm-mpi: warning: training features are far from "
                                                         "standardised"), proc.stderr
    _, quiet = _run(tmp_path, "scaled", _blob_file(tmp_path / "scaled.h5", 200), "--iters", 2)
    assert "warning" not in quiet.stderr, quiet.stderr
