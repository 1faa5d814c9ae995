"""Faults: a rank killed mid-run ends the job (then resume reproduces the run); NaN stops
training and keeps the last good checkpoint; bad input never touches an existing checkpoint."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from admm_mpi.data import write_dataset

from tests.helpers import blobs, child_env, mpiexec, run_admm

COMMON = ["--hidden", "64,64", "--no-progress", "--dtype", "float64"]


def _descendants(pid):
    """All descendant process ids of ``pid`` (from /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _python_ranks(pid):
    ranks = []
    for child in _descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"python") or b"admm_mpi" in b" ".join(cmdline[:3]):
            ranks.append(child)
    return ranks


def _weights(run):
    with h5py.File(run / "model.h5", "r") as f:
        return [f[f"layers/{l}/W"][...] for l in range(3)]


def test_sigkill_of_one_rank_ends_the_job_and_resume_reproduces_the_run(tmp_path):
    run, full = tmp_path / "run", tmp_path / "full"
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", *COMMON, "--iters", "300",
           "--checkpoint-every", "2", "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "checkpoints" / "latest").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    ranks = _python_ranks(proc.pid)
    assert len(ranks) == 2, ranks
    killed_at = time.time()
    os.kill(ranks[-1], signal.SIGKILL)
    proc.communicate(timeout=30)                       # the job must end, not hang
    assert proc.returncode != 0 and time.time() - killed_at < 30
    latest = (run / "checkpoints" / "latest").read_text().strip()
    stopped = int(latest[5:11])
    assert stopped < 300
    target = stopped + 3
    resumed = run_admm(2, "train", *COMMON, "--iters", target, "--resume", "auto", "--out", run, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["first_iteration"] == stopped + 1
    uninterrupted = run_admm(2, "train", *COMMON, "--iters", target, "--out", full, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    for W, W_ref in zip(_weights(run), _weights(full)):
        assert np.array_equal(W, W_ref)


def test_nan_in_the_iterates_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "nan_at_5.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        from admm_mpi.solvers.taylor import TaylorADMM
        from admm_mpi.cli import main

        original = TaylorADMM.step
        def step(self, state, Y, iteration):
            original(self, state, Y, iteration)
            if iteration == 5 and self.grid.rank == 1:
                state.z[-1][0, 0] = np.nan   # one bad number on one rank
        TaylorADMM.step = step
        sys.exit(main(["train", "--hidden", "16", "--iters", "20", "--checkpoint-every", "2", "--no-progress",
                       "--out", r"{run}"]))
    """))
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=child_env())
    assert proc.returncode == 3, proc.stderr
    assert "diverged at iteration 5" in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == "ckpt-000004"
    for rank in range(2):
        with h5py.File(run / "checkpoints" / "ckpt-000004" / f"part-{rank:05d}.h5", "r") as f:
            assert all(np.all(np.isfinite(f[f"samples/z/{i}"][...])) for i in range(2))


def _bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.h5"
    X, y = blobs(40, 64, 10, seed=1)
    if kind == "corrupt":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    elif kind == "names":
        with h5py.File(path, "w") as f:
            f["data"], f["labels"] = X, y
    elif kind == "width":
        write_dataset(str(path), X, y, X[:, :10], y, name="w", n_classes=10)
    elif kind == "inf":
        X[3, 3] = np.inf
        write_dataset(str(path), X, y, name="i", n_classes=10)
    return path


BAD = [
    (["--data", "{tmp}/missing.h5"], "does not exist"),
    (["--data", "{corrupt}"], "cannot read"),
    (["--data", "{names}"], "no dataset 'X'"),
    (["--data", "{width}"], "features"),
    (["--data", "{inf}"], "NaN or Inf"),
    (["--activation", "swish"], "unknown activation"),
    (["--beta", "-1"], "beta must be positive"),
    (["--iters", "0"], "iters must be at least 1"),
    (["--solver", "dladmm", "--ridge", "0.1"], "has no setting ridge"),
    (["--config", "{tmp}/bad.toml"], "unknown keys"),
    (["--resume", "{tmp}/nothing"], "does not exist"),
    (["--hidden", "64,-3"], "positive layer width"),
    ([], "holds checkpoints of an earlier run"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_leaves_an_existing_checkpoint_untouched(tmp_path, args, message):
    run = tmp_path / "run"
    ok = run_admm(2, "train", "--hidden", "8", "--iters", 2, "--checkpoint-every", 2, "--no-progress", "--out", run)
    assert ok.returncode == 0, ok.stderr
    ckpt = run / "checkpoints" / "ckpt-000002" / "part-00000.h5"
    before = (ckpt.read_bytes(), ckpt.stat().st_mtime_ns, (run / "model.h5").read_bytes())
    (tmp_path / "bad.toml").write_text("iterations = 3\n")
    names = {"tmp": tmp_path, **{k: _bad_file(tmp_path, k) for k in ("corrupt", "names", "width", "inf")}}
    start = time.time()
    args = [a.format(**names) for a in args]
    if args and "--resume" not in args:
        args += ["--resume", "auto"]  # continuing this run: the bad input must not reach its checkpoint
    proc = run_admm(2, "train", *args, "--out", run, timeout=30)
    assert time.time() - start < 30
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("admm-mpi: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert (ckpt.read_bytes(), ckpt.stat().st_mtime_ns, (run / "model.h5").read_bytes()) == before
