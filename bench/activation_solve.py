"""The a-update's two ways for a mini-batch: solving with the Cholesky factor against forming the
inverse and the operator P (``admm_mpi.ops.linalg.activation_solver``).

    OMP_NUM_THREADS=1 python bench/activation_solve.py --repeats 15

For each factored system size ``d`` (a square ``d x d`` layer, and a wide ``d x 4d`` one, whose
system is ``d``) and each number of columns per rank ``m`` (a fraction of ``d``), one call of
``activation_solver(W, beta, gamma, factor_solve_fraction=f)(T, H)`` is timed with ``f`` chosen
to force each way (``inf``, 0): the factor (two float64 triangular solves) or the inverse (potri, then a GEMM in
the working dtype). Both ways run interleaved, in the working dtype float32, one BLAS thread,
``repeats`` times each; the medians and their ratio factor / inverse are reported per case, and
the largest fraction at which the factor still wins on every size is what
``FACTOR_SOLVE_FRACTION`` should not exceed. Writes results/activation_solve.json.
"""

import argparse
import math
import os
import statistics
import time

import numpy as np

from common import write_result

from admm_mpi.ops import linalg

SIZES = (128, 256, 512, 1000)
FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
BETA, GAMMA = 1.0, 10.0


def timed_call(W, T, H, fraction):
    t0 = time.perf_counter()
    linalg.activation_solver(W, BETA, GAMMA, factor_solve_fraction=fraction)(T, H)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    cases = []
    for d in map(int, args.sizes.split(",")):
        for shape_name, shape in (("square", (d, d)), ("wide", (d, 4 * d))):
            W = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
            for fraction in map(float, args.fractions.split(",")):
                m = max(1, round(fraction * d))
                T = rng.standard_normal((shape[0], m)).astype(np.float32)
                H = rng.standard_normal((shape[1], m)).astype(np.float32)
                ways = {"factor": math.inf, "inverse": 0.0}  # the factor_solve_fraction forcing each
                seconds = {way: [] for way in ways}
                for _ in range(args.repeats):
                    for way, forcing in ways.items():
                        seconds[way].append(timed_call(W, T, H, forcing))
                medians = {way: statistics.median(s) for way, s in seconds.items()}
                case = {"shape": list(shape), "system": d, "layer": shape_name, "columns_per_rank": m,
                        "fraction": fraction, "median_ms": {w: round(s * 1e3, 4) for w, s in medians.items()},
                        "factor_over_inverse": round(medians["factor"] / medians["inverse"], 4)}
                cases.append(case)
                print(f"{shape_name:6s} {str(shape):12s} m={m:5d} ({fraction:5.3f} d): factor "
                      f"{case['median_ms']['factor']:8.3f} ms, inverse {case['median_ms']['inverse']:8.3f} ms, "
                      f"ratio {case['factor_over_inverse']:.3f}", flush=True)
    wins = sorted({c["fraction"] for c in cases}
                  - {c["fraction"] for c in cases if c["factor_over_inverse"] >= 1.0})
    write_result("activation_solve", {
        "benchmark": "one activation solve of a mini-batch: the Cholesky factor against the inverse and P, "
                     "float32 working dtype, one BLAS thread, medians of interleaved repeats",
        "beta": BETA, "gamma": GAMMA, "repeats": args.repeats, "load_1min_at_end": os.getloadavg()[0],
        "factor_solve_fraction_in_code": linalg.FACTOR_SOLVE_FRACTION,
        "fractions_where_the_factor_wins_on_every_case": wins, "cases": cases,
        })


if __name__ == "__main__":
    main()
