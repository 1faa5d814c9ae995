"""Every solver on the bundled digits, 64-1000-1000-10, 60 iterations, under mpiexec -n 2.

dlADMM must reach 0.975 (the published code's 0.976 on this split); mDLAM and sigmoid-ADMM
must reach 0.93 by the issue, and the bars here sit a little below what they measured (README,
Solvers) so that a regression is caught.
"""

import json

import pytest

from tests.helpers import NO_VALIDATION_FLAGS, run_admm

BARS = {"dladmm": 0.975, "mdlam": 0.95, "sigmoid_admm": 0.975, "minibatch_am": 0.985}
# the solvers' own recipes on every training row for 60 iterations (no validation split, no early
# stopping); minibatch_am in batches of 2000 (its README figure), not the batch size scaled to the data
OWN = {"minibatch_am": ("--batch-size", 2000)}


@pytest.mark.slow
@pytest.mark.parametrize("solver", sorted(BARS))
def test_solver_accuracy_on_digits(tmp_path, solver):
    out = tmp_path / solver
    proc = run_admm(2, "train", "--solver", solver, *OWN.get(solver, ()), *NO_VALIDATION_FLAGS, "--hidden",
                    "1000,1000", "--iters", 60, "--dtype", "float64", "--no-progress", "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    print(f"{solver}: test accuracy {summary['test_accuracy']:.4f} after {summary['iterations']} iterations, "
          f"{summary['seconds_per_iteration']:.2f} s/iteration on 2 ranks")
    assert summary["iterations"] == 60
    assert summary["test_accuracy"] >= BARS[solver]


@pytest.mark.slow
def test_layer_parallel_pdadmm_on_digits_and_its_8bit_exchange(tmp_path):
    """64-500-500-500-500-10 ReLU on 2 layer groups: >= 0.92 (the published code: 0.902 in 50
    iterations), and 8-bit boundary codes cost at most 1 point of test accuracy."""
    results = {}
    for bits in (0, 8):
        out = tmp_path / f"q{bits}"
        proc = run_admm(2, "train", "--solver", "pdadmm", *NO_VALIDATION_FLAGS, "--layout", "layer",
                        "--hidden", "500,500,500,500",
                        "--iters", 30, "--quantize", bits, "--dtype", "float32", "--no-progress", "--out", out,
                        timeout=900)
        assert proc.returncode == 0, proc.stderr
        results[bits] = json.loads((out / "summary.json").read_text())
    print({b: (s["test_accuracy"], s["bytes_per_iteration"]) for b, s in results.items()})
    assert results[0]["test_accuracy"] >= 0.92
    assert abs(results[8]["test_accuracy"] - results[0]["test_accuracy"]) <= 0.01
    # float32 values -> 8-bit codes: 4x fewer bytes but for (offset, scale), 8 bytes per message
    assert results[0]["bytes_per_iteration"] == 4 * (results[8]["bytes_per_iteration"] - 2 * 8)


# The mini-batch mode of the committed MNIST recipes, on digits (256-256, batches of 250, 8 epochs,
# 2 ranks): measured dladmm 0.966, mdlam 0.980, sigmoid_admm 0.976 (anchored output solve; 0.902
# without), pdadmm (layer layout) 0.966.
BATCH_BARS = {"dladmm": 0.95, "mdlam": 0.96, "sigmoid_admm": 0.95, "pdadmm": 0.95}


@pytest.mark.slow
@pytest.mark.parametrize("solver", sorted(BATCH_BARS))
def test_committed_mnist_recipe_in_mini_batch_mode_on_digits(tmp_path, solver):
    from tests.helpers import REPO

    out = tmp_path / solver
    proc = run_admm(2, "train", "--config", REPO / "configs" / f"mnist-{solver}.toml", "--data", "digits",
                    *NO_VALIDATION_FLAGS, "--batch-size", 250, "--iters", 8, "--hidden", "256,256", "--no-progress", "--out", out,
                    timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["batch_size"] == 250 and summary["iterations"] == 8
    assert summary["test_accuracy"] >= BATCH_BARS[solver]
