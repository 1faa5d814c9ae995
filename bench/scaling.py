"""Data-parallel scaling of Taylor ADMM: 1 and 2 ranks × 1 thread, 1 rank × 2 threads.

    python bench/scaling.py [--repeats 3] [--iters 4] [--samples 60000]

784-1000-1000-10 ReLU, least-squares output, float32, on MNIST-shaped synthetic samples, trained
through the real command line (``mpiexec -n P admm-mpi train``). For each configuration the
median over its iterations of the seconds of the ADMM step (summary.json,
``step_seconds_per_iteration``) is taken, then the median over ``repeats`` runs; the runs of
the configurations alternate, so background load on this shared machine hits them alike.
Bytes per iteration are the counted bytes of the step at N and 2N samples on 2 ranks: the
transpose reduction's traffic does not depend on N.
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

from common import ALL_ROWS, mpiexec, save_plot, synthetic_mnist, write_result

from admm_mpi.data import write_dataset

CONFIGS = [(1, 1), (2, 1), (1, 2)]  # (ranks, threads per rank)
TARGET = 1.8


def make_data(path, n):
    X, y = synthetic_mnist(n, np.float32)
    Xt, yt = synthetic_mnist(1000, np.float32, seed=1)
    write_dataset(path, X.T, y, Xt.T, yt, name="mnist-shaped synthetic", n_classes=10)


def train(ranks, threads, data, out, iters):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", "train", "--data", data,
           "--solver", "taylor", *ALL_ROWS,
           "--hidden", "1000,1000", "--dtype", "float32", "--iters", str(iters), "--no-progress", "--out", out]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=3600)
    return cmd, json.loads((Path(out) / "summary.json").read_text())


def run(repeats, iters, n):
    tmp = tempfile.mkdtemp(prefix="bench-scaling-")
    data, data2 = os.path.join(tmp, "n.h5"), os.path.join(tmp, "2n.h5")
    make_data(data, n)
    runs = {c: [] for c in CONFIGS}
    commands = {}
    for r in range(repeats):
        for ranks, threads in CONFIGS:
            cmd, summary = train(ranks, threads, data, os.path.join(tmp, f"run-{ranks}x{threads}-{r}"), iters)
            commands[f"{ranks}x{threads}"] = f"OMP_NUM_THREADS={threads} " + " ".join(cmd)
            runs[(ranks, threads)].append(summary["step_seconds_per_iteration"])
    _, s_n = train(2, 1, data, os.path.join(tmp, "bytes-n"), 2)
    make_data(data2, 2 * n)
    _, s_2n = train(2, 1, data2, os.path.join(tmp, "bytes-2n"), 2)
    bytes_n, runs_bytes = s_n["bytes_per_iteration_per_rank"], s_2n["bytes_per_iteration_per_rank"]
    seconds = {f"{r}x{t}": statistics.median(v) for (r, t), v in runs.items()}
    return {
        "benchmark": "data-parallel scaling", "solver": "taylor", "shape": "784-1000-1000-10", "dtype": "float32",
        "samples": n, "repeats": repeats, "iterations_per_run": iters, "commands": commands,
        "data": "MNIST-shaped synthetic samples (make_data: seed 0, 1 000 test samples of seed 1) that this "
                "script writes to a temporary directory; rerun the script, not the inner commands",
        "step_seconds": seconds, "all_step_seconds": {f"{r}x{t}": v for (r, t), v in runs.items()},
        "speedup_2_ranks": seconds["1x1"] / seconds["2x1"], "speedup_2_threads": seconds["1x1"] / seconds["1x2"],
        "target_speedup_2_ranks": TARGET,
        "bytes_per_iteration_per_rank_N": bytes_n, "bytes_per_iteration_per_rank_2N": runs_bytes,
        "bytes_equal_at_N_and_2N": bytes_n == runs_bytes,
    }


def plot(result):
    def draw(ax):
        names = list(result["step_seconds"])
        ax.bar(names, [result["step_seconds"][k] for k in names], color=["grey", "tab:blue", "tab:orange"])
        for i, k in enumerate(names):
            ax.text(i, result["step_seconds"][k], f"{result['step_seconds']['1x1'] / result['step_seconds'][k]:.2f}×",
                    ha="center", va="bottom")
        ax.set_xlabel("ranks x BLAS threads per rank")
        ax.set_ylabel("seconds per Taylor step (median)")
        ax.set_title(f"Data-parallel scaling, {result['shape']}, N = {result['samples']}, float32")
    return save_plot("scaling", draw)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--samples", type=int, default=60000)
    args = parser.parse_args(argv)
    result = run(args.repeats, args.iters, args.samples)
    print(json.dumps({k: result[k] for k in ("step_seconds", "speedup_2_ranks", "speedup_2_threads",
                                             "bytes_equal_at_N_and_2N")}, indent=2))
    print("wrote", write_result("scaling", result), plot(result))


if __name__ == "__main__":
    main()
