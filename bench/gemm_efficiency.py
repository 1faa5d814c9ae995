"""GEMM efficiency of one Taylor ADMM iteration: achieved GFLOP/s over the machine's GEMM rate.

    python bench/gemm_efficiency.py [--repeats 5] [--samples 60000] [--threads 2]

784-1000-1000-10 ReLU, least-squares output, on MNIST-shaped synthetic samples (timing only),
float32 and float64, one process using ``--threads`` BLAS threads (the whole machine). The flops
are counted from the shapes of the products the iteration performs (``taylor_flops``); the
GEMM rate is a 2000³ matrix product measured in the same run with the same threads. The median
of ``repeats`` timed iterations (after one warm-up) is reported.
"""

import argparse
from dataclasses import asdict
import os

import numpy as np

from common import gemm_rate, median_step_seconds, save_plot, synthetic_mnist, write_result

WIDTHS = (784, 1000, 1000, 10)
DLADMM_GPU_SECONDS = (5.8, 13.4)  # the dlADMM paper's GPU code on this shape (GTX 1080 Ti), docs/design.md §11


def taylor_flops(widths, n):
    """Flops of one Taylor iteration as implemented (ops/linalg.py, solvers/taylor.py).

    Per layer: the Gram ``a aᵀ`` by syrk (n_in² N), ``z aᵀ`` (2 n_in n_out N), ``m = W a``
    (2 n_out n_in N); per hidden layer the a-update: ``Wᵀ T`` (2 n_next n_out N) and either
    ``K rhs`` (2 n_out² N) or, with Woodbury when n_next < n_out, three thin products
    (4 n_next n_out N + 2 n_next² N); plus the small factorisations (~2.3 n³ each).
    """
    total = 0.0
    L = len(widths) - 1
    for l in range(L):
        n_in, n_out = widths[l], widths[l + 1]
        total += n_in * n_in * n + 2 * n_in * n_out * n + 2 * n_out * n_in * n + 2.33 * (n_in + 1) ** 3
        if l < L - 1:
            n_next = widths[l + 2]
            total += 2 * n_next * n_out * n
            if n_next < n_out:
                total += 4 * n_next * n_out * n + 2 * n_next * n_next * n + 2.33 * n_next**3
            else:
                total += 2 * n_out * n_out * n + 2.33 * n_out**3
    return total


def run(repeats, n, threads):
    from threadpoolctl import threadpool_limits

    from admm_mpi.grid import Grid
    from admm_mpi.model import ModelSpec
    from admm_mpi.solvers.taylor import TaylorADMM

    rows = []
    with threadpool_limits(threads):
        for dtype in (np.float32, np.float64):
            rate = gemm_rate(dtype, n=2000, repeats=5)
            X, y = synthetic_mnist(n, dtype)
            spec = ModelSpec(WIDTHS, "relu", "least_squares", 10)
            Y = spec.loss_fn.targets(y, 10, dtype)
            solver = TaylorADMM(spec, Grid.serial(), n, **asdict(TaylorADMM.Params()))
            state = solver.init_state(X, Y, np.random.default_rng(0))
            seconds, times = median_step_seconds(solver, state, Y, repeats)
            flops = taylor_flops(WIDTHS, n)
            row = {"dtype": np.dtype(dtype).name, "samples": n, "threads": threads, "median_seconds": seconds,
                   "times": times, "gflop_per_iteration": flops / 1e9, "achieved_gflops": flops / seconds / 1e9,
                   "gemm_rate_gflops": rate}
            row["fraction_of_gemm_rate"] = row["achieved_gflops"] / rate
            rows.append(row)
            print(f"{row['dtype']}: {seconds:.3f} s/iteration, {row['achieved_gflops']:.0f} GFLOP/s = "
                  f"{100 * row['fraction_of_gemm_rate']:.0f}% of the GEMM rate {rate:.0f} GFLOP/s", flush=True)
            del state, X, Y
    return {"benchmark": "gemm_efficiency", "shape": "784-1000-1000-10", "solver": "taylor",
            "target_fraction_float32": 0.70, "dladmm_paper_gpu_seconds": DLADMM_GPU_SECONDS, "rows": rows}


def plot(result):
    def draw(ax):
        names = [r["dtype"] for r in result["rows"]]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [r["gemm_rate_gflops"] for r in result["rows"]], 0.4, label="GEMM rate (2000³)")
        ax.bar(x + 0.2, [r["achieved_gflops"] for r in result["rows"]], 0.4, label="Taylor iteration")
        for i, r in enumerate(result["rows"]):
            ax.text(i + 0.2, r["achieved_gflops"], f"{100 * r['fraction_of_gemm_rate']:.0f}%\n{r['median_seconds']:.2f} s",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"Taylor ADMM iteration, {result['shape']}, N = {result['rows'][0]['samples']}")
        ax.legend()
    return save_plot("gemm_efficiency", draw)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    result = run(args.repeats, args.samples, args.threads)
    print("wrote", write_result("gemm_efficiency", result), plot(result))


if __name__ == "__main__":
    main()
