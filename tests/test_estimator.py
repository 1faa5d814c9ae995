"""The scikit-learn estimators: the estimator contract, CLI parity, and a data-parallel fit."""

import json

import h5py
import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from admm_mpi import ADMMClassifier, ADMMRegressor
from admm_mpi.data import resolve_path

from tests.helpers import NO_VALIDATION_FLAGS, run_admm


# the default solver with fewer epochs: the checks are about the interface (and in float32 the
# cross-entropy prox makes an epoch of minibatch_am slower than a Taylor iteration)
@parametrize_with_checks([ADMMClassifier(max_iter=10), ADMMRegressor(max_iter=10)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _digits():
    with h5py.File(resolve_path("digits"), "r") as f:
        return f["X"][...], f["y"][...], f["X_test"][...], f["y_test"][...]


def test_notebook_fit_matches_the_command_line(tmp_path):
    X, y, X_test, y_test = _digits()
    clf = ADMMClassifier(hidden_layer_sizes=(256, 256), max_iter=40, random_state=3).fit(X, y)
    score = clf.score(X_test, y_test)
    # the estimator trains on every row: the command line without its validation defaults
    proc = run_admm(1, "train", "--hidden", "256,256", "--iters", 40, "--seed", 3, *NO_VALIDATION_FLAGS, "--no-progress",
                    "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert score == pytest.approx(summary["test_accuracy"], abs=1e-12)
    with h5py.File(tmp_path / "model.h5", "r") as f:  # the saved network: minibatch_am's weight average
        for l, (W, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
            np.testing.assert_array_equal(W.T, f[f"layers/{l}/W"][...])
            np.testing.assert_array_equal(b, f[f"layers/{l}/b"][...])
    assert score > 0.95 and clf.n_iter_ == 40 and len(clf.loss_curve_) == 40
    assert clf.coefs_[0].shape == (64, 256) and clf.coefs_[-1].shape == (256, 10)


def test_defaults_are_the_command_lines_without_validation():
    """minibatch_am with its scaled batch size and 60 epochs, as `admm-mpi train`; every row trains
    (no validation split, no early stopping), as in scikit-learn."""
    X, y, X_test, y_test = _digits()
    clf = ADMMClassifier(hidden_layer_sizes=(32,), random_state=0)
    assert (clf.solver, clf.max_iter) == ("minibatch_am", 60)
    clf.fit(X[:300], y[:300])
    assert clf.n_iter_ == 60 and len(clf.loss_curve_) == 60
    assert clf.score(X_test, y_test) > 0.85


@pytest.mark.mpi(ranks=[2], timeout=60)
def test_a_distributed_fit_refuses_unbalanced_rows(comm):
    X, y, _, _ = _digits()
    rows = slice(0, 700) if comm.rank == 0 else slice(700, 1500)  # balanced would be 750 and 750
    with pytest.raises(ValueError, match=r"the ranks hold \[700, 800\] rows; .* balanced blocks of \[750, 750\]"):
        ADMMClassifier(hidden_layer_sizes=(8,), max_iter=2, comm=comm).fit(X[rows], y[rows])


def test_predict_proba_only_for_cross_entropy():
    X, y, X_test, _ = _digits()
    clf = ADMMClassifier(hidden_layer_sizes=(32,), loss="cross_entropy", solver="dladmm", max_iter=5,
                         random_state=0).fit(X[:300], y[:300])
    proba = clf.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=4 * np.finfo(proba.dtype).eps)
    np.testing.assert_array_equal(clf.classes_[np.argmax(proba, axis=1)], clf.predict(X_test))
    assert not hasattr(ADMMClassifier(loss="least_squares").fit(X[:100], y[:100]), "predict_proba")


@pytest.mark.mpi(ranks=[2, 3], timeout=120)
def test_each_rank_fits_its_own_rows(comm):
    X, y, X_test, _ = _digits()
    start, stop = [(r * len(y) // comm.size, (r + 1) * len(y) // comm.size) for r in range(comm.size)][comm.rank]
    kwargs = dict(hidden_layer_sizes=(32,), max_iter=10, random_state=1, dtype="float64")  # 1e-10: float64
    distributed = ADMMClassifier(comm=comm, **kwargs).fit(X[start:stop], y[start:stop])
    serial = ADMMClassifier(**kwargs).fit(X, y)
    assert len(distributed.coefs_) == len(serial.coefs_) == len(distributed.intercepts_) == len(serial.intercepts_)
    for W, W_ref in zip(distributed.coefs_, serial.coefs_):
        assert np.linalg.norm(W - W_ref) / np.linalg.norm(W_ref) < 1e-10
    for b, b_ref in zip(distributed.intercepts_, serial.intercepts_):
        # absolute scale: a bias near 0 would make a relative error measure rounding alone
        assert np.linalg.norm(b - b_ref) <= 1e-10 * max(np.linalg.norm(b_ref), 1.0)
    np.testing.assert_array_equal(distributed.predict(X_test), serial.predict(X_test))


def test_a_mixed_dataframe_is_encoded_as_a_converted_table():
    """Text one-hot, holes filled, the id dropped, features standardised: fitted on fit's rows,
    applied by column name at predict time (any order, extra columns ignored)."""
    pd = pytest.importorskip("pandas")
    from admm_mpi.tables import fit_encoding

    rng = np.random.default_rng(0)
    n = 200
    city = rng.choice(["Oslo", "Bergen", "Tromsø"], n).astype(object)
    score = rng.normal(0, 1, n)
    y = np.where(score + (city == "Oslo") * 1.5 > 0.5, "Yes", "No")
    score[[3, 9]] = np.nan
    city[5] = None
    X = pd.DataFrame({"id": [f"u{i}" for i in range(n)], "score": score, "city": city,
                      "visits": rng.integers(0, 9, n)})
    clf = ADMMClassifier(hidden_layer_sizes=(16,), max_iter=20, random_state=0).fit(X, y)
    assert clf.table_encoding_.columns == fit_encoding(X)[0].columns  # the decisions of data convert
    assert clf.table_encoding_.feature_names == ("score", "city=Bergen", "city=Oslo", "city=Tromsø",
                                                 "city=(missing)", "visits")
    encoded = clf.table_encoding_.transform(X).X
    np.testing.assert_allclose(encoded.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(encoded.std(axis=0), 1, atol=1e-12)
    plain = ADMMClassifier(hidden_layer_sizes=(16,), max_iter=20, random_state=0).fit(encoded, y)
    for W, W_plain in zip(clf.coefs_, plain.coefs_):
        np.testing.assert_array_equal(W, W_plain)
    shuffled = X[X.columns[::-1]].assign(extra=1.0)
    np.testing.assert_array_equal(clf.predict(shuffled), clf.predict(X))
    assert set(clf.predict(X)) == {"No", "Yes"} and clf.score(X, y) > 0.8
    with pytest.raises(ValueError, match="no column 'city'"):
        clf.predict(X.drop(columns="city"))
    numeric = ADMMClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X[["visits"]], y)
    assert numeric.table_encoding_ is None  # a numeric DataFrame is used as given
