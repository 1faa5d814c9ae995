"""scikit-learn estimators: ``ADMMClassifier`` (and ``ADMMRegressor`` for the least-squares loss).

A thin adapter in the shape of scikit-learn's ``kernel_ridge.py``: ``__init__`` only stores its
arguments, ``fit`` validates through scikit-learn's own helpers and runs the same training loop
as the command line. Serial by default; pass ``comm`` (an mpi4py communicator) under ``mpiexec``
and give every rank its own rows: the sums over samples are then reduced over the ranks and the
fitted weights are identical everywhere.

Parameter names follow ``MLPClassifier`` (``hidden_layer_sizes``, ``activation``, ``max_iter``,
``tol``, ``random_state``); fitted attributes ``coefs_`` (``n_in x n_out``, as MLPClassifier),
``intercepts_``, ``n_iter_``, ``loss_curve_`` (the ADMM objective per iteration), ``classes_``.

Defaults: those of ``admm-mpi train`` for the solver (``minibatch_am``, its batch size scaled with
the rows: ``n // 20`` clipped to [100, 2000]) and the budget (``max_iter=60`` epochs), but no
validation split, early stopping or best-iterate selection: as in scikit-learn (``MLPClassifier``'s
``early_stopping=False``), ``fit`` trains on every row it is given and model selection is the
caller's (``GridSearchCV``, ``cross_val_score``).

A pandas DataFrame with text, categorical or boolean columns, or missing cells, is encoded as
``admm-mpi data convert --standardize`` encodes a table (:mod:`admm_mpi.tables`: text one-hot,
missing numbers filled with the training mean, identifier-like columns dropped, features
standardised), fitted on ``fit``'s rows and kept
as ``table_encoding_`` (its decisions in ``table_report_``); ``predict`` then takes a DataFrame
whose columns are found by name, in any order. Other inputs are used as given.
"""

import sys

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from admm_mpi.config import TrainConfig, make_params, validate
from admm_mpi.partition import block_range
from admm_mpi.data import Shard
from admm_mpi.grid import Grid
from admm_mpi.model import forward
from admm_mpi.ops.activations import ACTIVATIONS
from admm_mpi.ops.losses import softmax
from admm_mpi.solvers import DEFAULT_SOLVER
from admm_mpi.train import train


def _check_balanced_rows(grid, n_local, n_total):
    """ValueError unless every rank holds its balanced block of the rows: the mini-batch solvers
    draw their batches by global row index from those blocks."""
    counts = grid.gather_to_all(n_local)
    expected = [stop - start for start, stop in (block_range(n_total, grid.size, r) for r in range(grid.size))]
    if counts != expected:
        raise ValueError(f"the ranks hold {counts} rows; a distributed fit needs balanced blocks of {expected} "
                         "rows in rank order (the first n % P ranks one row more)")


def _mixed_frame(X):
    """Whether ``X`` is a pandas DataFrame that needs a table encoding: a column that is not of a
    numeric dtype (text, category, boolean), or a missing cell."""
    pd = sys.modules.get("pandas")  # not imported: X is no DataFrame
    if pd is None or not isinstance(X, pd.DataFrame):
        return False
    numeric = all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in X.dtypes)
    return not numeric or bool(X.isna().to_numpy().any())


class _ADMMBase(BaseEstimator):
    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "solver": [str],  # a registered solver's name (checked when fitting: solvers may register later)
        "activation": [StrOptions(set(ACTIVATIONS)), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state", Interval(Integral, 0, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
        "solver_params": [dict, None],
        "comm": "no_validation",
    }

    def __init__(self, hidden_layer_sizes=(100,), *, solver=DEFAULT_SOLVER, activation=None, max_iter=60, tol=0.0,
                 random_state=None, dtype="float32", solver_params=None, comm=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.solver = solver
        self.activation = activation
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.dtype = dtype
        self.solver_params = solver_params
        self.comm = comm

    def _config(self, loss):
        hidden = self.hidden_layer_sizes
        hidden = [hidden] if np.isscalar(hidden) else list(hidden)
        if not hidden or not all(isinstance(h, Integral) and not isinstance(h, (bool, np.bool_)) and h >= 1
                                 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        hidden = tuple(int(h) for h in hidden)
        # the solver's own Params; a setting it does not have is an InputError (a ValueError)
        params = make_params(self.solver, dict(self.solver_params or {}))
        if isinstance(self.random_state, Integral):  # the same seed as `admm-mpi train --seed`
            seed = int(self.random_state)
        else:
            seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        # every given row trains (no validation split, early stopping or best-iterate selection)
        config = TrainConfig(solver=self.solver, hidden=hidden, activation=self.activation or "", loss=loss,
                             iters=self.max_iter, tol=self.tol, dtype=self.dtype, seed=seed, progress=False,
                             validation_fraction=0.0, early_stopping=False, keep="last", params=params)
        validate(config)
        return config

    def _grid(self):
        return Grid(self.comm) if self.comm is not None else Grid.serial()

    def _fit_targets(self, X, labels, n_classes, loss, Y=None):
        """Train on rows ``X`` with class indices ``labels``, or real targets ``Y`` (regression)."""
        grid = self._grid()
        try:
            n_total = int(grid.allsum(np.array([X.shape[0]], dtype=np.int64))[0])
            _check_balanced_rows(grid, X.shape[0], n_total)
            dtype = np.dtype(self.dtype).type
            shard = Shard(X=np.ascontiguousarray(X.T, dtype=dtype), y=labels, X_test=np.empty((X.shape[1], 0), dtype),
                          y_test=np.empty(0, np.int64), n_total=n_total, n_test_total=0, n_features=X.shape[1],
                          n_classes=n_classes, name="in-memory", start=0,
                          Y=None if Y is None else np.ascontiguousarray(Y.T, dtype=dtype))
            result = train(self._config(loss), grid, out=False, shard=shard)
        finally:
            grid.close()
        self._spec, summary = result.spec, result.summary
        # the network the loop evaluated and would save (minibatch_am: the running average of its
        # iterates, not the last iterate), every layer on every rank of a data-parallel fit
        weights, biases = result.model
        self.coefs_ = [W.T.copy() for W in weights]
        self.intercepts_ = [b.copy() for b in biases]
        self.n_iter_ = summary["iterations"]
        self.loss_curve_ = list(result.objective_history)
        if self.tol > 0 and not summary["converged"]:
            warnings.warn(f"ADMM did not reach tol={self.tol} within max_iter={self.max_iter} iterations",
                          ConvergenceWarning, stacklevel=3)
        return self

    def _encoded(self, X, fit=False):
        """``X``, or its encoding when it is a mixed-type DataFrame (fitted here if ``fit``)."""
        if fit:
            self.table_encoding_ = self.table_report_ = None
            if _mixed_frame(X):
                if self.comm is not None:
                    raise ValueError("a mixed-type DataFrame is encoded from the rows fit is given, and each rank "
                                     "holds other rows: encode it once (admm-mpi data convert) for a distributed fit")
                from admm_mpi.tables import fit_encoding

                encoding, self.table_report_ = fit_encoding(X)
                encoded = encoding.transform(X).X  # standardised as by convert --standardize
                std = encoded.std(axis=0)
                self.table_encoding_ = encoding.with_standardization(encoded.mean(axis=0), np.where(std > 0, std, 1.0))
        if getattr(self, "table_encoding_", None) is not None:
            return self.table_encoding_.transform(X).X
        return X

    def _outputs(self, X):
        check_is_fitted(self)
        X = validate_data(self, self._encoded(X), reset=False, dtype=[np.float64, np.float32])
        weights = [W.T for W in self.coefs_]
        return forward(self._spec, weights, self.intercepts_, np.ascontiguousarray(X.T)).T


class ADMMClassifier(ClassifierMixin, _ADMMBase):
    """Multi-layer perceptron classifier trained by ADMM (no backpropagation).

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(100,)
    solver : {"minibatch_am", "taylor", "dladmm", "mdlam", "sigmoid_admm"}, default="minibatch_am"
    activation : str or None
        Hidden activation; None takes the solver's default (relu; sigmoid for sigmoid_admm).
    loss : {"least_squares", "cross_entropy", "ova_hinge"} or None
        None takes the solver's default. ``predict_proba`` needs ``cross_entropy``.
    max_iter : int, default=60
        Iterations; epochs for ``minibatch_am`` and the mini-batch mode.
    tol : float, default=0
        Stop when the output residual falls below ``tol * sqrt(n_samples)``; 0 runs max_iter.
    random_state : int, RandomState or None
    dtype : {"float32", "float64"}, default "float32"
    solver_params : dict or None
        Settings of the chosen solver by the names of the command line (``{"ridge": 1e-4}``,
        ``{"rho": 0.1}``; the fields of its ``Params``, listed by ``admm-mpi train --help``;
        ``{"batch_size": 2000}`` runs dladmm, mdlam or sigmoid_admm in mini-batch mode, where
        ``max_iter`` counts epochs). A setting the solver does not have raises ValueError.
    comm : mpi4py communicator or None
        Data-parallel fit: every rank calls ``fit`` with its own rows, a balanced contiguous block
        (the first ``n % P`` ranks one row more), as ``admm-mpi train`` splits a file's rows.

    Examples
    --------
    >>> from admm_mpi import ADMMClassifier
    >>> clf = ADMMClassifier(hidden_layer_sizes=(64,), random_state=0).fit(X, y)  # doctest: +SKIP
    """

    _parameter_constraints = {
        **_ADMMBase._parameter_constraints,
        "loss": [StrOptions({"least_squares", "cross_entropy", "ova_hinge"}), None],
    }

    def __init__(self, hidden_layer_sizes=(100,), *, solver=DEFAULT_SOLVER, activation=None, loss=None, max_iter=60,
                 tol=0.0, random_state=None, dtype="float32", solver_params=None, comm=None):
        super().__init__(hidden_layer_sizes, solver=solver, activation=activation, max_iter=max_iter, tol=tol,
                         random_state=random_state, dtype=dtype, solver_params=solver_params, comm=comm)
        self.loss = loss

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        X, y = validate_data(self, self._encoded(X, fit=True), y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes = np.unique(y)
        grid = self._grid()
        try:  # the classes of all ranks' rows
            classes = np.unique(np.concatenate(grid.gather_to_all(classes)))
        finally:
            grid.close()
        if classes.size < 2:
            raise ValueError(f"ADMMClassifier needs samples of at least 2 classes; got 1 class ({classes[0]!r})")
        self.classes_ = classes
        return self._fit_targets(X, np.searchsorted(classes, y), classes.size, self.loss or "")

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[self._spec.loss_fn.predict(self._outputs(X).T)]

    def _has_proba(self):
        return (getattr(self, "_spec", None) is not None and self._spec.loss == "cross_entropy") or (
            not hasattr(self, "_spec") and self.loss == "cross_entropy")

    @available_if(_has_proba)
    def predict_proba(self, X):
        """Class probabilities: the softmax of the outputs (cross-entropy loss only)."""
        return softmax(self._outputs(X).T).T


class ADMMRegressor(RegressorMixin, _ADMMBase):
    """Multi-layer perceptron regressor trained by ADMM with the least-squares loss.

    Same parameters as :class:`ADMMClassifier` (without ``loss``); ``y`` may be 1-D or 2-D.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # several least-squares outputs
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        X, y = validate_data(self, self._encoded(X, fit=True), y, dtype=[np.float64, np.float32], multi_output=True,
                             y_numeric=True)
        self._y_1d = y.ndim == 1
        Y = y.reshape(y.shape[0], -1)
        return self._fit_targets(X, None, Y.shape[1], "least_squares", Y=Y)

    def predict(self, X):
        out = self._outputs(X)
        return out[:, 0] if self._y_1d else out
