"""The admm-mpi command under real mpiexec: default run, outputs, traffic, bad input, aborts."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from admm_mpi.data import write_dataset

from tests.helpers import NO_VALIDATION_FLAGS, blobs, child_env, failing_rank_script, mpiexec, run_admm


def _read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_default_run_on_bundled_digits_under_two_ranks(tmp_path):
    """The README's command: `mpiexec -n 2 admm-mpi train` reaches >= 0.97 with the defaults chosen
    on the public suite: minibatch_am, a tenth of the rows for validation, early stopping, keep best."""
    out = tmp_path / "run"
    exe = shutil.which("admm-mpi")
    cmd = [mpiexec(), "-n", "2"] + ([exe] if exe else [sys.executable, "-m", "admm_mpi"]) + ["train", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    print("default run:", {k: summary[k] for k in ("iterations", "kept_iteration", "validation_accuracy",
                                                   "test_accuracy", "seconds_per_iteration")})
    assert summary["ranks"] == 2 and summary["solver"] == "minibatch_am" and summary["layout"] == "data"
    config = summary["config"]
    assert (config["iters"], config["tol"], config["batch_size"]) == (60, 0, "auto")
    assert (config["validation_fraction"], config["early_stopping"], config["patience"], config["keep"]) == \
        (0.1, True, 10, "best")
    # 1500 digits rows: 150 held out for validation, 1350 train in batches of 100 (1350 // 20 clipped)
    assert (summary["n_train"], summary["n_validation"], summary["validation_source"]) == (1350, 150, "held_out")
    assert summary["batch_size"] == 100
    assert summary["iterations"] <= 60
    if summary["iterations"] < 60:
        assert summary["stopped"] == "early_stopping" and summary["iterations"] - summary["kept_iteration"] == 10
    assert summary["test_accuracy"] >= 0.97 and summary["validation_accuracy"] >= 0.97
    rows = _read_metrics(out)
    assert len(rows) == summary["iterations"]
    assert set(rows[0]) >= {"iteration", "objective", "residual", "train_accuracy", "validation_accuracy",
                            "test_accuracy", "seconds"}
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
    kept = rows[summary["kept_iteration"] - 1]
    assert kept["validation_accuracy"] == summary["validation_accuracy"] == max(r["validation_accuracy"] for r in rows)
    assert summary["bytes_per_iteration"] > 0
    # peak resident memory of each rank: more than the interpreter with numpy, less than the machine
    assert len(summary["peak_memory_bytes_per_rank"]) == 2
    assert all(20e6 < m < 16e9 for m in summary["peak_memory_bytes_per_rank"])
    with h5py.File(out / "model.h5", "r") as f:
        assert [f[f"layers/{l}/W"].shape for l in range(3)] == [(256, 64), (256, 256), (10, 256)]
        assert f["layers/2/b"].shape == (10,)
        assert list(f.attrs["widths"]) == [64, 256, 256, 10]
    # Only rank 0 speaks: one summary line on stdout, naming the validation accuracy; the digits
    # features lie in [0, 1]: no warning about standardisation
    assert proc.stdout.count("admm-mpi:") == 1 and "validation accuracy" in proc.stdout
    assert "warning" not in proc.stderr, proc.stderr

    # evaluate and predict reproduce the training run's accuracy from model.h5
    ev = run_admm(2, "evaluate", "--model", out / "model.h5", "--data", "digits")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    pred = run_admm(3, "predict", "--model", out / "model.h5", "--output", tmp_path / "labels.txt")
    assert pred.returncode == 0, pred.stderr
    labels = np.loadtxt(tmp_path / "labels.txt", dtype=int)
    from admm_mpi.data import resolve_path

    with h5py.File(resolve_path("digits"), "r") as f:
        y_test = f["y_test"][...]
    assert labels.shape == y_test.shape
    assert np.mean(labels == y_test) == pytest.approx(summary["test_accuracy"])


def test_bytes_per_iteration_do_not_grow_with_samples(tmp_path):
    """Transpose reduction: the traffic depends on the layer widths, not on N."""
    results = []
    for n in (400, 800):
        X, y = blobs(n, 12, 4, seed=n)
        path = tmp_path / f"n{n}.h5"
        write_dataset(str(path), X, y, name="blobs", n_classes=4)
        out = tmp_path / f"out{n}"
        proc = run_admm(2, "train", "--data", path, "--solver", "taylor", *NO_VALIDATION_FLAGS, "--hidden", "16,16",
                        "--iters", 3, "--out", out, "--no-progress")
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads((out / "summary.json").read_text()))
    assert results[0]["n_train"] * 2 == results[1]["n_train"]
    assert results[0]["bytes_per_iteration"] == results[1]["bytes_per_iteration"] > 0


def _bad_data(tmp_path, kind):
    X, y = blobs(30, 5, 3, seed=0)
    if kind == "nan":
        X[17, 2] = np.nan
    if kind == "labels":
        y[25] = 7
    if kind == "tiny":
        X, y = X[:3], np.array([0, 1, 2])
    path = tmp_path / f"{kind}.h5"
    write_dataset(str(path), X, y, name=kind, n_classes=3)
    return path


@pytest.mark.parametrize(
    "ranks, args, message",
    [
        (2, ["--data", "{tmp}/missing.h5"], "does not exist"),
        (2, ["--data", "{nan}"], "NaN"),
        (2, ["--data", "{labels}"], "label 7 outside"),
        (4, ["--data", "{tiny}"], "fewer than the 4 ranks"),
        (2, ["--solver", "sgd"], "unknown solver"),
        (2, ["--iters", "0"], "iters must be at least 1"),
        (2, ["--beta", "-1"], "beta must be positive"),
        (2, ["--out", "{file}/sub"], "not writable"),
        (2, ["--iters", "many"], "iters must be of type int, got 'many'"),
    ],
)
def test_bad_input_one_message_nonzero_exit_no_hang(tmp_path, ranks, args, message):
    names = {"tmp": tmp_path, "nan": _bad_data(tmp_path, "nan"), "labels": _bad_data(tmp_path, "labels"),
             "tiny": _bad_data(tmp_path, "tiny"), "file": tmp_path / "a-file"}
    (tmp_path / "a-file").write_text("x")
    args = [a.format(**names) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    proc = run_admm(ranks, "train", *args, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("admm-mpi: error:")]
    assert len(errors) == 1, proc.stderr
    assert message in errors[0]
    assert "Traceback" not in proc.stderr


def test_exception_on_one_rank_aborts_the_whole_job(tmp_path):
    """Rank 1 fails mid-run while rank 0 waits in a collective: the job must end, not hang."""
    script = failing_rank_script(tmp_path / "fail_on_rank1.py", tmp_path / "out")
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=child_env())
    assert proc.returncode != 0
    assert "rank 1: unexpected error, aborting the job: ZeroDivisionError: injected failure" in proc.stderr, \
        (proc.returncode, proc.stdout, proc.stderr)


def test_trains_serially_where_mpi4py_cannot_start(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["mpi4py"] = None  # any import of mpi4py now fails
        from admm_mpi.cli import main
        sys.exit(main(["train", "--iters", "3", "--hidden", "16", "--no-progress", "--out", r"{tmp_path / 'out'}"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ranks"] == 1 and summary["iterations"] == 3 and summary["bytes_per_iteration"] == 0


def test_info_reports_the_mpi_library():
    proc = run_admm(1, "info")
    assert proc.returncode == 0, proc.stderr
    assert "MPI library:" in proc.stdout and "world size 1" in proc.stdout


def test_unset_thread_count_limits_every_blas_library_of_every_rank(tmp_path):
    """numpy and scipy each bundle an OpenBLAS; both must get the per-rank share of the cores
    (scipy's, left at the machine's core count, made every rank oversubscribe: 10x slower)."""
    script = tmp_path / "threads.py"
    script.write_text(textwrap.dedent("""
        import json, os, warnings
        warnings.simplefilter("ignore")
        from admm_mpi.cli import _limit_blas_threads
        from admm_mpi.grid import Grid
        from threadpoolctl import threadpool_info
        _limit_blas_threads(Grid())
        print(json.dumps([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]))
    """))
    env = child_env()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name)
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    import os

    share = max(1, (os.cpu_count() or 1) // 2)
    import re

    reports = re.findall(r"\[[^\]]*\]", proc.stdout)  # the two ranks' lines may interleave
    assert len(reports) == 2, proc.stdout
    for report in reports:
        threads = json.loads(report)
        assert len(threads) >= 2 and all(t == share for t in threads), threads


def test_bench_help_lists_every_benchmark_script():
    import subprocess
    import sys

    from tests.helpers import REPO, child_env

    proc = subprocess.run([sys.executable, "-m", "admm_mpi", "bench", "--help"], capture_output=True, text=True,
                          timeout=60, env=child_env(ADMM_MPI_NO_MPI=1, COLUMNS=1000))
    scripts = {p.stem for p in (REPO / "bench").glob("*.py")} - {"common"}
    listed = proc.stdout.split("name", 1)[1]
    assert proc.returncode == 0 and scripts and all(name in listed for name in scripts), proc.stdout


@pytest.mark.parametrize("solver", ["taylor", "dladmm", "pdadmm", "mdlam", "sigmoid_admm", "minibatch_am"])
def test_train_help_for_a_solver_lists_its_settings_only_with_its_own_defaults(solver):
    """One meaning per flag: ``--solver X --help`` shows X's settings, each with X's help and default,
    and none of another solver's; the run settings show X's run defaults."""
    from dataclasses import fields

    from admm_mpi.config import run_defaults
    from admm_mpi.solvers import SOLVERS

    done = subprocess.run([sys.executable, "-m", "admm_mpi", "train", "--solver", solver, "--help"],
                          capture_output=True, text=True, timeout=60, env=child_env())
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split()).replace("- ", "-")  # argparse wraps lines after hyphens
    own = {f.name: f for f in fields(SOLVERS[solver].Params)}
    for name, f in own.items():
        shown = f.default if not isinstance(f.default, tuple) else ",".join(map(str, f.default))
        help_text = " ".join(f.metadata.get("help", "").split()).replace("- ", "-")
        assert f"--{name.replace('_', '-')}" in text and f"{help_text} (default: {shown})" in text, (solver, name)
    others = {f.name for cls in SOLVERS.values() for f in fields(cls.Params)} - set(own)
    for name in others:
        assert f"--{name.replace('_', '-')} " not in text, (solver, name)
    import re

    shown_keep = re.search(r"--keep best\|last the iterate written .*?\(default: (\w+)\)", text).group(1)
    assert shown_keep == run_defaults(solver)["keep"]


FAULTS_OF_A_BATCH_LOOP = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from admm_mpi.cli import _keep_freed_memory
    assert _keep_freed_memory()
def batch():  # two temporaries of 3 MiB, freed at the end of the batch
    a = np.ones(3 << 17)
    b = np.ones(3 << 17)
    del b, a
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
                    reason="the allocator settings are glibc's")
def test_freed_batch_memory_is_reused_not_faulted_in_again():
    env = {k: v for k, v in child_env().items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}

    def faults(mode):
        proc = subprocess.run([sys.executable, "-c", FAULTS_OF_A_BATCH_LOOP, mode], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout)

    assert faults("default") > 50 * 1000  # glibc's defaults: each batch's 6 MiB page-faulted in again
    assert faults("keep") < 1000


def test_a_malloc_variable_in_the_environment_keeps_the_users_allocator_settings(monkeypatch):
    from admm_mpi import cli

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert cli._keep_freed_memory() is False
