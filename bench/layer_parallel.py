"""Layer-parallel pdADMM: speed-up of 2 ranks (one layer group each) over the serial run.

    python bench/layer_parallel.py [--repeats 3] [--iters 6] [--eval-every K]

A deep net, 784-1000×7-10 (8 layers), ReLU, cross-entropy, float32, on 6 000 synthetic
MNIST-shaped samples (timing only). Each configuration is trained through the real command line
(``mpiexec -n P admm-mpi train``) with one BLAS thread per rank, so the serial run and the
2-rank run use the same per-rank resources; the 2-rank run is given both cores.
Per run the medians over its iterations of the seconds of the ADMM step alone and of the whole
iteration (step + the pipelined evaluation of train and test accuracy) are read from
summary.json; the figure is the median over ``repeats`` runs, alternating serial and parallel
runs so the machine's background load hits both alike. Also recorded: boundary bytes sent per
rank and iteration, unquantised and with 8-bit codes. ``--eval-every K`` passes the same flag to
every run (the pipelined evaluation of train and validation accuracy then runs every K-th
iteration and the last; ``results/layer_parallel_eval<K>.json``): with K = ``--iters`` the
iteration's median is the step alone, which says what the evaluation costs at K = 1.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import ALL_ROWS, mpiexec, write_result

from admm_mpi.data import write_dataset

HIDDEN = "1000,1000,1000,1000,1000,1000,1000"
TARGET = 1.6


def make_data(path, n=6000, n_test=1000):
    rng = np.random.default_rng(0)
    write_dataset(path, rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n),
                  rng.random((n_test, 784), dtype=np.float32), rng.integers(0, 10, n_test),
                  name="mnist-shaped synthetic", n_classes=10)


def train(ranks, data, out, iters, quantize=0, eval_every=1):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", "train", "--data", data,
           "--solver", "pdadmm", "--layout", "layer", *ALL_ROWS, "--hidden", HIDDEN, "--dtype", "float32",
           "--iters", str(iters), "--quantize", str(quantize), "--eval-every", str(eval_every), "--no-progress",
           "--out", out]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=3600)
    return cmd, json.loads((Path(out) / "summary.json").read_text())


def run(repeats, iters, eval_every=1):
    tmp = tempfile.mkdtemp(prefix="bench-layer-")
    data = os.path.join(tmp, "data.h5")
    make_data(data)
    runs = {1: [], 2: []}
    commands = {}
    for r in range(repeats):
        for ranks in (1, 2):
            commands[ranks], summary = train(ranks, data, os.path.join(tmp, f"run-{ranks}-{r}"), iters,
                                             eval_every=eval_every)
            runs[ranks].append(summary)
    _, quantised = train(2, data, os.path.join(tmp, "run-q8"), 2, quantize=8)
    step = {p: statistics.median(s["step_seconds_per_iteration"] for s in runs[p]) for p in runs}
    whole = {p: statistics.median(s["seconds_per_iteration"] for s in runs[p]) for p in runs}
    bytes32 = runs[2][0]["bytes_per_iteration_per_rank"]
    bytes8 = quantised["bytes_per_iteration_per_rank"]
    return {
        "benchmark": "layer-parallel pdADMM speed-up at 2 ranks",
        "shape": f"784-{HIDDEN.replace(',', '-')}-10", "samples": 6000, "dtype": "float32",
        "commands": {str(p): " ".join(c) for p, c in commands.items()},
        "data": "6 000 + 1 000 MNIST-shaped synthetic samples (make_data, seed 0) that this script writes to a "
                "temporary directory; rerun the script, not the inner commands",
        "repeats": repeats, "iterations_per_run": iters, "eval_every": eval_every,
        "step_seconds": {str(p): step[p] for p in step},
        "iteration_seconds": {str(p): whole[p] for p in whole},
        "step_speedup": step[1] / step[2],
        "iteration_speedup": whole[1] / whole[2],
        "all_step_seconds": {str(p): [s["step_seconds_per_iteration"] for s in runs[p]] for p in runs},
        "target_speedup": TARGET,
        "boundary_bytes_per_rank_float32": bytes32,
        "boundary_bytes_per_rank_8bit": bytes8,
        "bytes_reduction_8bit": sum(bytes32) / sum(bytes8),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--eval-every", type=int, default=1, help="admm-mpi train --eval-every K for every run")
    args = parser.parse_args()
    result = run(args.repeats, args.iters, args.eval_every)
    path = write_result("layer_parallel" + (f"_eval{args.eval_every}" if args.eval_every != 1 else ""), result)
    print("| ranks | step s/it | iteration s/it |\n|---|---|---|")
    for p in ("1", "2"):
        print(f"| {p} | {result['step_seconds'][p]:.3f} | {result['iteration_seconds'][p]:.3f} |")
    print(f"step speed-up {result['step_speedup']:.2f}x, whole iteration {result['iteration_speedup']:.2f}x "
          f"(target {TARGET}x); 8-bit boundary bytes {result['bytes_reduction_8bit']:.3f}x fewer; {path}")


if __name__ == "__main__":
    main()
