"""Layouts of the transpose-reduced weight solve, at the MNIST recipe's sizes, on P ranks.

    python bench/spread_solve.py                # 2 ranks, the three layers of 784-4000-1000-10
    python bench/spread_solve.py --ranks 2 --repeats 5

For each layer (Gram ``k x k``, ``m`` rows of ``[W | b]``, 1000 samples per rank) and each
factorisation precision, the median wall time (the slowest rank's) of:

- root:      Reduce of the statistics, the root factors and solves every row, Bcast of ``[W | b]``
             (today's layout; the other ranks wait);
- allsum:    Reduce + Bcast of the statistics (bit-identical), every rank factors and solves its
             block of rows, Allgatherv of the rows (option a, what the library does);
- bcast-factor: Reduce, the root factors, Bcast of the factor and of the right-hand sides, every
             rank solves its block of rows, Allgatherv of the rows (option b).

Timings include the local statistics (the Gram), which every layout shares. Writes
results/spread_solve.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import machine, mpiexec, write_result

LAYERS = [(785, 4000), (4001, 1000), (1001, 10)]  # (k = n_in + 1, m = n_out) of 784-4000-1000-10
SAMPLES_PER_RANK = 1000  # a batch of 2000 over 2 ranks


def layouts(grid, a, z, ridge, factor_dtype):
    from admm_mpi.ops import linalg

    k, m = a.shape[0] + 1, z.shape[0]

    def root():
        stats = grid.sum_to_root(linalg.local_normal_equations(a, z))
        Wb = np.empty((m, k), dtype=a.dtype)
        if grid.is_root:
            factor = linalg.factor_normal_equations(stats, ridge, factor_dtype)
            Wb[...] = linalg.solve_normal_equation_rows(stats, factor, (0, m))
        return grid.bcast_from_root(Wb)

    def allsum():
        stats = grid.allsum_in_place(linalg.local_normal_equations(a, z))
        start, stop = grid.block_range(m)
        Wb = np.empty((m, k), dtype=a.dtype)
        factor = linalg.factor_normal_equations(stats, ridge, factor_dtype)
        Wb[start:stop] = linalg.solve_normal_equation_rows(stats, factor, (start, stop))
        return grid.allgather_rows(Wb)

    def bcast_factor():
        stats = grid.sum_to_root(linalg.local_normal_equations(a, z))
        if not grid.is_root:
            stats = np.empty((k, k + m), dtype=a.dtype)
        c = np.empty((k, k), dtype=factor_dtype)
        if grid.is_root:
            c[...] = linalg.factor_normal_equations(stats, ridge, factor_dtype)[0].T  # C-ordered copy of L^T
        grid.bcast_from_root(c)
        grid.bcast_from_root(stats)  # only the right-hand sides are needed; the whole buffer is simpler
        start, stop = grid.block_range(m)
        Wb = np.empty((m, k), dtype=a.dtype)
        Wb[start:stop] = linalg.solve_normal_equation_rows(stats, (c.T, True), (start, stop))
        return grid.allgather_rows(Wb)

    return {"root": root, "allsum": allsum, "bcast-factor": bcast_factor}


def worker(repeats, out):
    from admm_mpi.grid import Grid

    grid = Grid()
    rng = np.random.default_rng(grid.rank)
    rows = []
    for k, m in LAYERS:
        a = np.maximum(rng.standard_normal((k - 1, SAMPLES_PER_RANK)), 0).astype(np.float32)
        z = rng.standard_normal((m, SAMPLES_PER_RANK)).astype(np.float32)
        for factor_dtype in (np.float64, np.float32):
            results = {}
            for name, fn in layouts(grid, a, z, 20.0, factor_dtype).items():
                times = []
                for _ in range(repeats + 1):  # the first one warms the buffers up
                    grid.barrier()
                    t0 = time.perf_counter()
                    Wb = fn()
                    times.append(grid.allmax(np.array([time.perf_counter() - t0]))[0])
                results[name] = {"median_seconds": round(statistics.median(times[1:]), 4),
                                 "seconds": [round(t, 4) for t in times[1:]]}
                same = grid.allmax(np.array([np.max(np.abs(Wb - grid.bcast_decision(Wb)))]))[0]
                assert same == 0.0, f"{name}: the ranks' weights differ"
            rows.append({"k": k, "m": m, "factor_dtype": np.dtype(factor_dtype).name, "layouts": results})
            if grid.is_root:
                print(json.dumps({"k": k, "m": m, "dtype": np.dtype(factor_dtype).name,
                                  **{n: r["median_seconds"] for n, r in results.items()}}), flush=True)
    if grid.is_root:
        Path(out).write_text(json.dumps(rows))
    grid.close()


def main():
    if "--worker" in sys.argv:
        return worker(int(sys.argv[sys.argv.index("--repeats") + 1]), sys.argv[sys.argv.index("--worker") + 1])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"spread_solve.{os.getpid()}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    load = os.getloadavg()
    subprocess.run([mpiexec(), "-n", str(args.ranks), sys.executable, __file__, "--worker", str(out),
                    "--repeats", str(args.repeats)], env=env, check=True, timeout=3600)
    rows = json.loads(out.read_text())
    out.unlink()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    write_result("spread_solve", {
        "benchmark": "layouts of the transpose-reduced weight solve (slowest rank's seconds per solve)",
        "argv": ["python", "bench/spread_solve.py", *sys.argv[1:]], "commit": commit, "machine": machine(),
        "ranks": args.ranks, "samples_per_rank": SAMPLES_PER_RANK, "working_dtype": "float32",
        "load_average_before": [round(x, 2) for x in load], "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows})


if __name__ == "__main__":
    main()
