"""Every solver's package defaults on digits stay within one point of its recipe.

The run settings that monitor a run (validation, early stopping, the kept iterate) have defaults
per solver (``Solver.run_defaults``). Chosen for one solver, they once cost another three points
(dlADMM kept a lucky early iterate). The recipe figure of each solver is the ``defaults`` table of
``bench/results/digits.json``: 64-1000-1000-10, every training row, the last of 60 iterations;
the default run here is the same command with nothing but the width and dtype given.
"""

import json
from pathlib import Path

import pytest

from tests.helpers import run_admm

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "digits.json"


def _recipes():
    rows = json.loads(RESULTS.read_text())["rows"]
    return {r["name"][: -len("-recipe")]: r for r in rows if r["table"] == "defaults" and r["name"].endswith("-recipe")}


RECIPES = _recipes()


def test_every_solver_has_a_recorded_recipe():
    from admm_mpi.solvers import SOLVERS

    assert sorted(RECIPES) == sorted(SOLVERS)


@pytest.mark.parametrize("solver", sorted(RECIPES))
def test_the_default_run_of_each_solver_is_within_a_point_of_its_recipe(tmp_path, solver):
    out = tmp_path / "run"
    done = run_admm(2, "train", "--solver", solver, "--hidden", "1000,1000", "--dtype", "float64", "--no-progress",
                    "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    recipe = RECIPES[solver]["test_accuracy"]
    assert summary["test_accuracy"] >= recipe - 0.01, (solver, summary["test_accuracy"], recipe)
