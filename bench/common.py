"""Shared benchmark helpers: timing medians, the machine's GEMM rate, JSON output."""

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn, repeats=5, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def mpiexec():
    """The mpiexec beside this Python (the pip MPICH wheel), else the one on PATH."""
    import sys

    local = Path(sys.executable).with_name("mpiexec")
    return str(local) if local.exists() else "mpiexec"


def median_step_seconds(solver, state, Y, repeats):
    """Median seconds of ``solver.step`` over ``repeats`` iterations (after one warm-up iteration)."""
    iteration = [0]

    def one():
        iteration[0] += 1
        solver.step(state, Y, iteration[0])

    return median_seconds(one, repeats=repeats)


def gemm_rate(dtype, n=1000, repeats=7):
    """Measured GEMM rate of this machine (GFLOP/s) for n x n x n products, median of repeats."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n)).astype(dtype)
    B = rng.standard_normal((n, n)).astype(dtype)
    seconds, _ = median_seconds(lambda: A @ B, repeats=repeats)
    return 2 * n**3 / seconds / 1e9


def machine():
    info = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
            "threads": os.environ.get("OMP_NUM_THREADS", "(unset)")}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [f"{p['internal_api']} {p.get('version')} ({p['num_threads']} threads)" for p in threadpool_info()]
    except ImportError:
        pass
    return info


def write_result(name, result):
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def save_plot(name, draw, panels=1):
    """Draw with ``draw(ax)`` (``draw(axes)`` for several panels side by side) on a fresh figure and
    save ``results/<name>.png``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    fig, ax = plt.subplots(1, panels, figsize=(7 * panels, 4.2))
    draw(ax)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def synthetic_mnist(n, dtype, seed=0):
    """MNIST-shaped random data (784 x n pixels in [0, 1), 10 classes): for timing only."""
    rng = np.random.default_rng(seed)
    return rng.random((784, n), dtype=np.float64).astype(dtype), rng.integers(0, 10, n)
