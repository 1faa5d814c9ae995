"""Shared test helpers: brute-force minimisation and launching real mpiexec jobs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# The run settings of a test about something other than validation: no validation split, every
# iteration run, the last iterate kept (the defaults hold out 0.1, stop early and keep the best).
NO_VALIDATION = dict(validation_fraction=0.0, early_stopping=False, keep="last")
NO_VALIDATION_FLAGS = ("--validation-fraction", "0", "--no-early-stopping", "--keep", "last")


def brute_force_min(f, lo, hi, n_grid=2001, n_refine=3, chunk=2000):
    """Element-wise minimiser of ``f(z)`` (z shaped like ``lo``) by a dense grid, then refining.

    ``f`` maps an array ``z`` of shape ``(k, n_points)`` for the k elements of a chunk to
    objective values of the same shape; it receives ``idx`` (the chunk's element indices) too.
    Each refinement zooms into the two grid cells around the best point.
    """
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    best = np.empty_like(lo)
    for s in range(0, lo.size, chunk):
        idx = np.arange(s, min(s + chunk, lo.size))
        a, b = lo[idx], hi[idx]
        for _ in range(n_refine + 1):
            grid = a[:, None] + (b - a)[:, None] * np.linspace(0, 1, n_grid)[None, :]
            values = f(grid, idx)
            k = np.argmin(values, axis=1)
            step = (b - a) / (n_grid - 1)
            centre = grid[np.arange(idx.size), k]
            a, b = centre - step, centre + step
        best[idx] = centre
    return best


def mpiexec():
    """The mpiexec beside this Python (the pip MPICH wheel) or the one on PATH."""
    local = Path(sys.executable).with_name("mpiexec")
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("no mpiexec found: pip install 'admm-mpi[mpich]'")
    return found


def child_env(**extra):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("ADMM_MPI_NO_MPI", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_admm(ranks, *args, timeout=120, env=None, cwd=None):
    """Run ``mpiexec -n ranks python -m admm_mpi ARGS`` for real; a hang fails by timeout."""
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or child_env(), cwd=cwd)


def blobs(n, d, classes, seed=0, spread=1.0):
    """Gaussian blobs as (X rows = samples, y) for small exact tests."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)) * 2
    y = rng.integers(0, classes, n)
    X = centres[y] + spread * rng.standard_normal((n, d))
    return X, y


def failing_rank_script(path, out, *, rank=1, iteration=3):
    """Write a script that trains (Taylor) and raises ZeroDivisionError on ``rank`` at ``iteration``.

    The other ranks are then waiting in a collective: the job must end, not hang.
    """
    import textwrap

    path.write_text(textwrap.dedent(f"""
        import sys
        from admm_mpi.solvers.taylor import TaylorADMM
        from admm_mpi.cli import main

        original = TaylorADMM.step
        def step(self, state, Y, iteration):
            if self.grid.rank == {rank} and iteration == {iteration}:
                raise ZeroDivisionError("injected failure")
            return original(self, state, Y, iteration)
        TaylorADMM.step = step
        sys.exit(main(["train", "--solver", "taylor", "--iters", "20", "--no-progress", "--out", r"{out}"]))
    """))
    return path


def bench_module(name):
    """The script ``bench/<name>.py`` imported as a module (with ``bench/`` on the path for its imports)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module
