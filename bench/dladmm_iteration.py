"""Seconds per dlADMM iteration against the published code's figures, and GEMM efficiency.

    OMP_NUM_THREADS=2 python bench/dladmm_iteration.py [--repeats 5]

Shapes (docs/design.md §3): 64-1000-1000-10 on the 1 500 bundled digits samples, and
784-1000-1000-10 on 11 000 synthetic MNIST-shaped samples; float32 and float64. The published
dlADMM code needs 2.7 s and about 50 s per iteration for these on a 2-core machine like this one.
The achieved rate is the GEMM flop count of one iteration (from the layer shapes, see
``gemm_flops``) over the median time, compared with the machine's GEMM rate measured in the same
run.
"""

import argparse
from dataclasses import asdict

import numpy as np

from common import gemm_rate, median_step_seconds, write_result

from admm_mpi.data import load_shard
from admm_mpi.grid import Grid
from admm_mpi.model import ModelSpec
from admm_mpi.solvers import make_solver
from admm_mpi.solvers.dladmm import DLADMM

PUBLISHED = {"digits 64-1000-1000-10": 2.7, "synthetic 784-1000-1000-10": 50.0}
TARGET_SPEEDUP = {"digits 64-1000-1000-10": 5.0, "synthetic 784-1000-1000-10": 8.0}


def problem(name, dtype):
    if name.startswith("digits"):
        shard = load_shard("digits", Grid.serial(), dtype)
        return shard.X, shard.y
    rng = np.random.default_rng(0)
    X = rng.random((784, 11000)).astype(dtype)
    y = rng.integers(0, 10, 11000)
    return X, y


def gemm_flops(widths, n, w_steps):
    """GEMM flops of one dlADMM iteration (both sweeps), counted from the shapes.

    Per layer and sweep: the reduced statistics [a;1][a;1]ᵀ and T[a;1]ᵀ (2n(k² + k·out), k = in+1),
    the root's W G and one ∇G product per W step (2·(1 + w_steps)·out·in²), the forward product
    for z (2n·out·in);
    per hidden a-step: W a, Wᵀ r and W g (3·2n·out·in).
    """
    total = 0
    layers = list(zip(widths[:-1], widths[1:]))
    for i, (n_in, n_out) in enumerate(layers):
        k = n_in + 1
        per_sweep = 2 * n * (k * k + k * n_out) + 2 * (1 + w_steps) * n_out * n_in * n_in + 2 * n * n_out * n_in
        if i > 0:
            per_sweep += 3 * 2 * n * n_out * n_in
        total += 2 * per_sweep
    return total


def run(repeats):
    grid = Grid.serial()
    rows = []
    rates = {}
    for dtype in (np.float32, np.float64):
        rates[np.dtype(dtype).name] = gemm_rate(dtype)
    for name in PUBLISHED:
        for dtype in (np.float32, np.float64):
            X, y = problem(name, dtype)
            spec = ModelSpec((X.shape[0], 1000, 1000, 10), "relu", "cross_entropy", 10)
            Y = spec.loss_fn.targets(y, 10, dtype)
            solver = make_solver(DLADMM.name, spec, grid, X.shape[1], asdict(DLADMM.Params()))
            state = solver.init_state(X, Y, np.random.default_rng(0))
            seconds, times = median_step_seconds(solver, state, Y, repeats)
            row = {"shape": name, "dtype": np.dtype(dtype).name, "samples": X.shape[1],
                   "median_seconds": seconds, "times": times, "published_seconds": PUBLISHED[name],
                   "speedup_vs_published": PUBLISHED[name] / seconds,
                   "target_speedup": TARGET_SPEEDUP[name],
                   "gemm_rate_gflops": rates[np.dtype(dtype).name],
                   "gemm_gflop_per_iteration": gemm_flops(spec.widths, X.shape[1], solver.w_steps) / 1e9}
            row["achieved_gflops"] = row["gemm_gflop_per_iteration"] / seconds
            row["fraction_of_gemm_rate"] = row["achieved_gflops"] / row["gemm_rate_gflops"]
            rows.append(row)
            print(f"{name:28s} {row['dtype']}: {seconds:.3f} s/iteration (median of {repeats}), "
                  f"{row['speedup_vs_published']:.1f}x the published {PUBLISHED[name]} s "
                  f"(target {TARGET_SPEEDUP[name]}x); {row['achieved_gflops']:.1f} GFLOP/s achieved = "
                  f"{100 * row['fraction_of_gemm_rate']:.0f}% of the measured GEMM rate "
                  f"{row['gemm_rate_gflops']:.1f} GFLOP/s", flush=True)
    return {"benchmark": "dladmm_iteration", "rows": rows}


def markdown(result):
    """The README's table of a result."""
    lines = ["| shape | dtype | s/iteration | vs published | GFLOP/s (share of GEMM rate) |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['median_seconds']:.3f} | "
                     f"{r['speedup_vs_published']:.1f}× (target {r['target_speedup']:.0f}×) | "
                     f"{r['achieved_gflops']:.0f} ({100 * r['fraction_of_gemm_rate']:.0f}% of "
                     f"{r['gemm_rate_gflops']:.0f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    result = run(parser.parse_args().repeats)
    print("wrote", write_result("dladmm_iteration", result))
    print(markdown(result))
