"""A solver defined outside the package, with its own setting, trains from the command line.

The script below is all a newcomer writes: a ``Params`` dataclass with a new setting
(``damping``), a ``Solver`` subclass with the loop's hooks, ``register`` - and ``admm-mpi train
--solver ridge_features --damping 0.5`` runs it under ``mpiexec``, with ``--damping`` in ``--help``
and checked by the solver's own ``validate``. No file of the package is touched.

The solver fits only the output layer, by ridge regression on fixed random ReLU features of the
inputs: the sums over samples are reduced over the ranks, so the weights it saves are the
closed-form solution over all the data, which the test recomputes from the saved hidden layer.
"""

import json
import sys
import textwrap

import numpy as np
import pytest

from admm_mpi.data import load_shard
from admm_mpi.grid import Grid
from admm_mpi.model import load_model
from tests.helpers import NO_VALIDATION_FLAGS, child_env, mpiexec, run_admm

SCRIPT = textwrap.dedent('''
    import sys
    from dataclasses import dataclass
    from typing import ClassVar

    import numpy as np

    from admm_mpi.cli import main
    from admm_mpi.errors import InputError
    from admm_mpi.solvers import Solver, SolverParams, register, setting


    @dataclass(frozen=True)
    class RidgeFeaturesParams(SolverParams):
        damping: float = setting(1e-3, "ridge penalty per sample on the output weights")

        def validate(self):
            if not self.damping > 0:
                raise InputError(f"damping must be positive, got {self.damping}")


    @dataclass
    class RidgeFeaturesState:
        sample_fields: ClassVar[tuple] = ("features",)
        weights: list
        biases: list
        features: object  # h(W_1 X + b_1) with [1] appended, this rank's columns


    @register
    class RidgeFeatures(Solver):
        name = "ridge_features"
        Params = RidgeFeaturesParams
        default_loss = "least_squares"

        def __init__(self, spec, grid, n_total, *, damping):
            self.spec, self.grid, self.n_total, self.damping = spec, grid, n_total, damping

        def init_state(self, X, Y, rng):
            n_in, width, n_out = self.spec.widths
            W1, b1 = rng.standard_normal((width, n_in)) / np.sqrt(n_in), rng.standard_normal(width)
            H = self.spec.h.apply(W1 @ X + b1[:, None])
            features = np.vstack([H, np.ones((1, X.shape[1]))])
            weights = [W1.astype(X.dtype), np.zeros((n_out, width), X.dtype)]
            return RidgeFeaturesState(weights, [b1.astype(X.dtype), np.zeros(n_out, X.dtype)], features)

        def step(self, state, Y, iteration):
            F = state.features
            penalty = np.diag(np.r_[np.full(F.shape[0] - 1, self.damping * self.n_total), 0.0])
            gram = self.grid.allsum(F @ F.T)
            cross = self.grid.allsum(Y @ F.T)
            Wb = np.linalg.solve(gram + penalty, cross.T).T
            state.weights[1], state.biases[1] = Wb[:, :-1], Wb[:, -1]

        def local_metrics(self, state, Y):
            r = state.weights[1] @ state.features[:-1] + state.biases[1][:, None] - Y
            penalty = self.damping * self.n_total * np.sum(state.weights[1] ** 2) if self.grid.is_root else 0.0
            return {"objective": float(np.sum(r * r) + penalty), "residual_sq": float(np.sum(r * r))}


    if __name__ == "__main__":
        raise SystemExit(main(sys.argv[1:]))
''')


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "ridge_features.py"
    path.write_text(SCRIPT)
    return path


def _run(script, ranks, *args, timeout=300):
    import subprocess

    cmd = [mpiexec(), "-n", str(ranks), sys.executable, str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env())


def _ridge(F, Y, penalty):
    """The closed-form output layer: argmin ||W H + b - Y||^2 + penalty ||W||^2, F = [H; 1]."""
    reg = np.diag(np.r_[np.full(F.shape[0] - 1, penalty), 0.0])
    return np.linalg.solve(F @ F.T + reg, (Y @ F.T).T).T


def test_a_solver_registered_outside_the_package_trains_with_its_own_flag_on_two_ranks(script, tmp_path):
    run = tmp_path / "run"
    done = _run(script, 2, "train", "--solver", "ridge_features", "--damping", "0.5", "--hidden", "96",
                "--iters", "2", "--dtype", "float64", *NO_VALIDATION_FLAGS, "--no-progress", "--out", run)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["iterations"] == 2
    assert summary["config"]["solver"] == "ridge_features" and summary["config"]["damping"] == 0.5
    assert summary["config"]["loss"] == "least_squares"  # the solver's default
    assert summary["test_accuracy"] > 0.8

    # the saved output layer is the ridge solution over both ranks' rows with damping 0.5 (not the
    # default 1e-3): the flag reached the solver, and the ranks' sums were combined
    spec, weights, biases = load_model(run / "model.h5")
    shard = load_shard("digits", Grid.serial(), np.float64)
    H = np.maximum(weights[0] @ shard.X + biases[0][:, None], 0.0)
    F, Y = np.vstack([H, np.ones((1, H.shape[1]))]), spec.loss_fn.targets(shard.y, shard.n_classes, np.float64)
    saved = np.hstack([weights[1], biases[1][:, None]])
    expected, default = _ridge(F, Y, 0.5 * shard.n_total), _ridge(F, Y, 1e-3 * shard.n_total)
    assert np.max(np.abs(saved - expected)) < 1e-8 * np.max(np.abs(expected))
    assert np.max(np.abs(default - expected)) > 1e-3 * np.max(np.abs(expected))


def test_help_lists_the_new_flag_and_its_rule_and_owner_are_enforced(script, tmp_path):
    helped = _run(script, 1, "train", "--solver", "ridge_features", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--damping DAMPING ridge penalty per sample on the output weights (default: 0.001)" in \
        " ".join(helped.stdout.split())
    other = _run(script, 1, "train", "--help")  # the default solver's help shows only its own settings
    assert other.returncode == 0 and "--damping" not in other.stdout
    plain = run_admm(1, "train", "--solver", "ridge_features", "--help")  # the package alone does not know it
    assert plain.returncode == 0 and "--damping" not in plain.stdout

    bad = _run(script, 1, "train", "--solver", "ridge_features", "--damping", "-1", "--out", tmp_path / "o")
    assert bad.returncode == 2 and "admm-mpi: error: damping must be positive, got -1.0" in bad.stderr
    other = _run(script, 1, "train", "--solver", "taylor", "--damping", "0.5", "--out", tmp_path / "o")
    assert other.returncode == 2 and "solver 'taylor' has no setting damping" in other.stderr
    text = _run(script, 1, "train", "--solver", "ridge_features", "--damping", "lots", "--out", tmp_path / "o")
    assert text.returncode == 2 and "damping must be of type float, got 'lots'" in text.stderr
