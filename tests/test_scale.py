"""Correctness at 8 and 16 ranks: every solver data-parallel, pdADMM with 8 layers on 8 ranks
(and 16 on 16), hybrid 2 x 4 and 4 x 4 grids, and node-aware sums over faked nodes, each equal to the serial run.

On a 2-core machine 8 and 16 ranks are oversubscribed, so the problems are tiny (203 samples,
widths <= 12, a few iterations, float64). Each case runs ``mpiexec -n P admm-mpi train`` for
real (with a timeout) and compares its model.h5 and summary.json with the same command on one
process to 1e-9.

A representative subset runs in CI (one of each kind: data-parallel Taylor and mini-batch AM at
8 ranks, the 8-layer layer grid, hybrid 2 x 4 and 4 x 4, node-aware at 8 ranks). The rest are
marked ``scale`` and run only when ADMM_MPI_SCALE_TESTS=1 is set:

    ADMM_MPI_SCALE_TESTS=1 python -m pytest -q tests/test_scale.py
"""

import json
import os

import h5py
import numpy as np
import pytest

from admm_mpi.data import write_dataset

from tests.helpers import NO_VALIDATION_FLAGS, blobs, child_env, run_admm

FULL = os.environ.get("ADMM_MPI_SCALE_TESTS", "") not in ("", "0")
scale_only = pytest.mark.skipif(not FULL, reason="set ADMM_MPI_SCALE_TESTS=1 to run every 8/16-rank case")

COMMON = ("--dtype", "float64", "--no-progress", "--seed", "3", *NO_VALIDATION_FLAGS)
# name -> command-line settings (the test_distributed settings, fewer iterations)
DATA_PARALLEL = {
    "taylor": ("--solver", "taylor", "--hidden", "12,8", "--iters", 8, "--warm-start", 3),
    "dladmm": ("--solver", "dladmm", "--hidden", "12,8", "--iters", 6, "--rho", 0.1, "--rho-max", 1.0),
    "mdlam": ("--solver", "mdlam", "--hidden", "12,8", "--iters", 6),
    "sigmoid_admm": ("--solver", "sigmoid_admm", "--hidden", "12,8", "--iters", 6),
    "minibatch_am": ("--solver", "minibatch_am", "--hidden", "12,8", "--iters", 3, "--batch-size", 29),
    "pdadmm": ("--solver", "pdadmm", "--hidden", "12,8", "--iters", 6),
    "dladmm-batches": ("--solver", "dladmm", "--hidden", "12,8", "--iters", 2, "--batch-size", 29,
                       "--batch-sweeps", 2),
}
LAYER_8 = ("--solver", "pdadmm", "--layout", "layer", "--hidden", "12,11,10,9,9,8,7", "--iters", 6)
LAYER_16 = ("--solver", "pdadmm", "--layout", "layer", "--hidden", "12,11,11,10,10,9,9,9,8,8,8,7,7,7,6",
            "--iters", 6)  # 16 layers: one per rank at 16 ranks
HYBRID = ("--solver", "pdadmm", "--layout", "hybrid", "--hidden", "12,10,9,8", "--iters", 6)

CI_CASES = [  # (ranks, case, extra environment)
    (8, "taylor", {}),
    (8, "minibatch_am", {}),
    (8, "layer-8", {}),
    (8, "hybrid-2", {}),
    (16, "hybrid-4", {}),
    (8, "taylor", {"ADMM_MPI_PSEUDO_NODES": 2}),
]
SCALE_CASES = ([(8, name, {}) for name in DATA_PARALLEL if name not in ("taylor", "minibatch_am")]
               + [(16, name, {}) for name in DATA_PARALLEL]
               + [(16, "layer-16", {}), (16, "taylor", {"ADMM_MPI_PSEUDO_NODES": 4}),
                  (16, "minibatch_am", {"ADMM_MPI_PSEUDO_NODES": 3}), (8, "hybrid-2-8bit", {})])


def _arguments(case):
    if case in DATA_PARALLEL:
        return DATA_PARALLEL[case]
    if case.startswith("layer-"):
        return {"layer-8": LAYER_8, "layer-16": LAYER_16}[case]
    groups = int(case.split("-")[1])
    extra = ("--quantize", 8) if case.endswith("8bit") else ()
    return HYBRID + ("--layer-groups", groups) + extra


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "blobs.h5"
    X, y = blobs(203, 10, 3, seed=5)
    Xt, yt = blobs(31, 10, 3, seed=6)
    write_dataset(str(path), X, y, Xt, yt, name="blobs", n_classes=3)
    return path


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory, dataset):
    """The serial run of a case (data layout, one process), made once per case."""
    made = {}

    def run(case):
        if case not in made:
            out = tmp_path_factory.mktemp(f"serial-{case}") / "run"
            args = [a for a in _arguments(case)]
            if "--layout" in args:  # the serial run of a layer or hybrid grid is the data layout on one rank
                i = args.index("--layout")
                del args[i:i + 2]
                if "--layer-groups" in args:
                    i = args.index("--layer-groups")
                    del args[i:i + 2]
            proc = run_admm(1, "train", "--data", dataset, *COMMON, *args, "--out", out, timeout=300)
            assert proc.returncode == 0, proc.stderr
            made[case] = out
        return made[case]

    return run


def _layers(run):
    with h5py.File(run / "model.h5", "r") as f:
        count = len(f["layers"])
        return [np.column_stack([f[f"layers/{l}/W"][...], f[f"layers/{l}/b"][...]]) for l in range(count)]


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def check_equals_serial(ranks, case, env, dataset, serial_runs, tmp_path):
    out = tmp_path / "run"
    proc = run_admm(ranks, "train", "--data", dataset, *COMMON, *_arguments(case), "--out", out, timeout=900,
                    env=child_env(**env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = serial_runs(case)
    summary, serial = _summary(out), _summary(reference)
    assert summary["ranks"] == ranks
    if case.startswith("layer-"):
        assert summary["layer_groups"] == int(case.split("-")[1])
    if case.startswith("hybrid"):
        groups = int(case.split("-")[1])
        assert (summary["layer_groups"], summary["data_shards"]) == (groups, ranks // groups)
    if "ADMM_MPI_PSEUDO_NODES" in env:  # the node leaders also send their node's sum on: more bytes
        # (in the metrics' allsum: the spread weight solve's reduce-scatter is not node-aware)
        per_rank = summary["evaluation_bytes_per_iteration_per_rank"]
        second_leader = -(-ranks // env["ADMM_MPI_PSEUDO_NODES"])
        assert per_rank[second_leader] > per_rank[1], per_rank
    layers, reference_layers = _layers(out), _layers(reference)
    assert len(layers) == len(reference_layers)
    for layer, ref in zip(layers, reference_layers):
        assert np.linalg.norm(layer - ref) / np.linalg.norm(ref) < 1e-9
    assert summary["objective"] == pytest.approx(serial["objective"], rel=1e-9)
    assert summary["train_accuracy"] == serial["train_accuracy"]
    assert summary["test_accuracy"] == serial["test_accuracy"]


@pytest.mark.parametrize("ranks, case, env", CI_CASES, ids=lambda v: str(v) if not isinstance(v, dict) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "flat")
def test_scale_equals_serial(ranks, case, env, dataset, serial_runs, tmp_path):
    check_equals_serial(ranks, case, env, dataset, serial_runs, tmp_path)


@pytest.mark.scale
@scale_only
@pytest.mark.parametrize("ranks, case, env", SCALE_CASES, ids=lambda v: str(v) if not isinstance(v, dict) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "flat")
def test_scale_equals_serial_full(ranks, case, env, dataset, serial_runs, tmp_path):
    check_equals_serial(ranks, case, env, dataset, serial_runs, tmp_path)


NODE_AWARE_SCRIPT = """
import json, sys
import numpy as np
from mpi4py import MPI
from admm_mpi.grid import Grid

comm = MPI.COMM_WORLD
rng = np.random.default_rng(comm.rank)
found = []
for shape in [(7,), (40, 33), (300, 301)]:  # below and above MPICH's 2 KB switch of algorithm
    x = rng.standard_normal(shape)
    whole = np.rint(x * 1000)  # whole numbers: every order of summation gives the same bits
    flat = Grid(comm, nodes=1)
    for nodes in range(1, comm.size + 1):
        grid = Grid(comm, nodes=nodes)
        y, y_whole = grid.allsum(x), grid.allsum(whole)
        copies = comm.allgather(y.tobytes())
        found.append({"nodes": nodes, "hierarchical": bool(grid._levels),
                      "same_on_every_rank": all(c == copies[0] for c in copies),
                      "relative_to_flat": float(np.abs(y - flat.allsum(x)).max() / np.abs(y).max()),
                      "whole_exact": bool(np.array_equal(y_whole, flat.allsum(whole))),
                      "bytes_sent": grid.bytes_sent})
        grid.close()
    flat.close()
if comm.rank == 0:
    print(json.dumps(found))
"""


@pytest.mark.parametrize("ranks", [4, 8])
def test_node_aware_allsum_over_faked_nodes(tmp_path, ranks):
    """Grid(nodes=k): within each faked node, then across the leaders; the same bits on every rank,
    whole numbers exactly the flat sum, other sums within rounding of it; flat for 1 and P nodes."""
    script = tmp_path / "node_aware.py"
    script.write_text(NODE_AWARE_SCRIPT)
    from tests.helpers import mpiexec
    import subprocess
    import sys

    proc = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    for row in found:
        nodes_made = -(-ranks // -(-ranks // row["nodes"]))  # consecutive blocks of ceil(P / k) ranks
        assert row["hierarchical"] == (1 < nodes_made < ranks), row
        assert row["same_on_every_rank"] and row["whole_exact"], row
        assert row["relative_to_flat"] < 1e-13, row
        assert row["bytes_sent"] > 0
    assert any(row["hierarchical"] for row in found)


def test_node_aware_bad_setting_is_one_line(tmp_path, dataset):
    proc = run_admm(2, "train", "--data", dataset, "--iters", 1, "--no-progress", "--out", tmp_path / "run",
                    env=child_env(ADMM_MPI_PSEUDO_NODES="two"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "admm-mpi: error: ADMM_MPI_PSEUDO_NODES must be a whole number of nodes >= 1, got 'two'"
