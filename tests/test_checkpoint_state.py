"""``--checkpoint-state global``: weights and schedules only; a resumed full-batch solver rebuilds
its per-sample state from a forward pass, the mini-batch solvers (which keep none) stay bit-exact."""

import json
import shutil

import h5py
import numpy as np
import pytest

from admm_mpi.grid import Grid
from tests.helpers import NO_VALIDATION_FLAGS, blobs, run_admm

# Taylor, every iteration, the last iterate kept (a --solver in a test's own arguments overrides it)
COMMON = ["--solver", "taylor", *NO_VALIDATION_FLAGS, "--hidden", "32,32", "--no-progress", "--dtype", "float64"]
BATCHES = ["--batch-size", "300"]


def _train(ranks, out, *args):
    proc = run_admm(ranks, "train", *COMMON, "--out", out, *args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "summary.json").read_text())


def _weights(run):
    with h5py.File(run / "model.h5", "r") as f:
        return [f[f"layers/{l}/{k}"][...] for l in range(3) for k in ("W", "b")]


def _part_datasets(directory, group):
    names = []
    for part in sorted(directory.glob("part-*.h5")):
        with h5py.File(part, "r") as f:
            f[group].visit(names.append)
    return names


@pytest.mark.parametrize("solver", ["taylor", "dladmm", "mdlam", "sigmoid_admm", "pdadmm"])
def test_a_global_checkpoint_holds_no_per_sample_state_and_resumes(tmp_path, solver):
    run, full = tmp_path / "run", tmp_path / "full"
    _train(2, run, "--solver", solver, "--iters", 4, "--checkpoint-every", 4, "--checkpoint-state", "global")
    _train(2, full, "--solver", solver, "--iters", 4, "--checkpoint-every", 4)
    directory = run / "checkpoints" / "ckpt-000004"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["state"] == "global"
    assert all(part["samples"] == [] and part["data"] == [] for part in manifest["parts"])
    assert _part_datasets(directory, "samples") == []                   # no per-sample dataset at all
    assert _part_datasets(directory, "global")                          # the weights are there
    assert _part_datasets(full / "checkpoints" / "ckpt-000004", "samples")  # the full one has them
    summary = _train(2, run, "--solver", solver, "--iters", 7, "--resume", "auto")
    assert summary["first_iteration"] == 5 and summary["resumed_from"].endswith("ckpt-000004"), summary
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 8))
    assert all(np.isfinite(r["objective"]) for r in rows)


def test_a_global_resume_restarts_from_forward_pass_codes_not_from_the_saved_ones(tmp_path):
    """Taylor: the resumed run differs from the uninterrupted one (codes and multipliers rebuilt),
    while the full checkpoint's resume equals it bit for bit."""
    whole, full, light = tmp_path / "whole", tmp_path / "full", tmp_path / "light"
    args = ["--iters", 8, "--warm-start", 2]
    _train(2, whole, *args)
    for run, state in ((full, "full"), (light, "global")):
        _train(2, run, "--iters", 4, "--warm-start", 2, "--checkpoint-every", 4, "--checkpoint-state", state)
        _train(2, run, *args, "--resume", "auto")
    assert all(np.array_equal(a, b) for a, b in zip(_weights(whole), _weights(full)))
    assert not all(np.array_equal(a, b) for a, b in zip(_weights(whole), _weights(light)))


@pytest.mark.parametrize("solver, extra", [("minibatch_am", BATCHES),
                                           ("mdlam", [*BATCHES, "--batch-sweeps", "3", "--eps", "1"])])
def test_the_mini_batch_solvers_resume_bit_exactly_from_a_global_checkpoint(tmp_path, solver, extra):
    whole, run = tmp_path / "whole", tmp_path / "run"
    args = ["--solver", solver, *extra]
    _train(2, whole, *args, "--iters", 6)
    _train(2, run, *args, "--iters", 3, "--checkpoint-every", 3, "--checkpoint-state", "global")
    assert json.loads((run / "checkpoints" / "ckpt-000003" / "manifest.json").read_text())["state"] == "global"
    elastic = tmp_path / "elastic"
    shutil.copytree(run, elastic)
    summary = _train(2, run, *args, "--iters", 6, "--resume", "auto")
    assert summary["first_iteration"] == 4 and summary["resumed_from"].endswith("ckpt-000003"), summary
    for W, W_ref in zip(_weights(whole), _weights(run)):
        assert np.array_equal(W, W_ref)
    summary = _train(3, elastic, *args, "--iters", 6, "--resume", "auto")
    assert summary["first_iteration"] == 4
    for W, W_ref in zip(_weights(whole), _weights(elastic)):
        assert np.linalg.norm(W - W_ref) <= 1e-10 * np.linalg.norm(W_ref)


def test_a_bad_checkpoint_state_is_one_line(tmp_path):
    proc = run_admm(1, "train", *COMMON, "--iters", 2, "--checkpoint-state", "weights", "--out", tmp_path / "r")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "admm-mpi: error: unknown checkpoint_state 'weights'; choose from ['full', 'global']"]


def test_taylor_fresh_codes_rebuild_the_per_sample_state_from_the_forward_pass():
    from admm_mpi.model import ModelSpec
    from admm_mpi.solvers.common import forward_states
    from admm_mpi.solvers.taylor import TaylorADMM

    X, y = blobs(60, 5, 3, seed=1)
    X = X.T.copy()
    Y = np.eye(3)[y].T
    spec = ModelSpec(widths=(5, 7, 6, 3), activation="relu", loss="least_squares", n_classes=3)
    solver = TaylorADMM(spec, Grid.serial(), 60, beta=1.0, gamma=1.0, ridge=1e-3, warm_start=0)
    state = solver.init_state(X, Y, np.random.default_rng(0))
    for iteration in range(1, 4):
        solver.step(state, Y, iteration)
    assert np.abs(state.lam).max() > 0 and not np.allclose(state.m[0], state.z[0])  # ADMM moved them apart
    solver.fresh_codes(state, X)
    a, z = forward_states(state.weights, state.biases, X, spec.h.apply)
    assert all(np.array_equal(u, v) for u, v in zip(state.a, a)) and state.a[0] is X
    assert all(np.array_equal(u, v) for u, v in zip(state.z, z))
    assert all(np.array_equal(u, v) and u is not v for u, v in zip(state.m, state.z))
    assert state.lam.shape == z[-1].shape and not state.lam.any()


def test_a_global_checkpoint_of_a_layer_grid_resumes_on_a_hybrid_grid(tmp_path):
    """Each layer group wrote its own layers' weights; the codes are rebuilt by pdADMM's pipelined
    forward pass (a collective over the groups) on the new grid."""
    run = tmp_path / "run"
    layer = ["--solver", "pdadmm", "--layout", "layer"]
    proc = run_admm(3, "train", *COMMON, *layer, "--iters", 4, "--checkpoint-every", 4, "--checkpoint-state",
                    "global", "--out", run, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((run / "checkpoints" / "ckpt-000004" / "manifest.json").read_text())
    assert sorted(k for p in manifest["parts"] for k in p["global"] if k.startswith("weights/")) == \
        ["weights/0", "weights/1", "weights/2"]
    assert all(p["samples"] == [] for p in manifest["parts"])
    summary = _train(4, run, "--solver", "pdadmm", "--layout", "hybrid", "--layer-groups", 2, "--iters", 6,
                     "--resume", "auto")
    assert summary["first_iteration"] == 5 and summary["resumed_from"].endswith("ckpt-000004"), summary
    assert summary["layout"] == "hybrid" and np.isfinite(summary["objective"])
