"""Faults and bad input: the record.

``CASES`` is the table of bad-input and fault cases: each is one ``admm-mpi`` command line (with the
files it needs), the exit status it must end with and a fragment of the one line
``admm-mpi: error: ...`` it must print. Every case also checks the invariants: exactly one error
line, the same on every rank (no "rank N:" prefix), no traceback, no warning, no hang (a timeout),
no ``*.tmp`` left behind, and, where the case runs against a finished run, that run's checkpoints
and model untouched. Add a case by adding a row (and, if it needs one, a file maker to ``FILES``).

Besides the table: a rank killed mid-run ends the job (then resume reproduces the run); NaN stops
training and keeps the last good checkpoint.
"""

import json
import os
import signal
import subprocess
import shutil
import string
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from admm_mpi.data import write_dataset
from admm_mpi.model import ModelSpec, save_model

from tests.helpers import NO_VALIDATION_FLAGS, blobs, child_env, mpiexec, run_admm

# Taylor, every iteration, the last iterate kept (a --solver in a test's own arguments overrides it)
COMMON = ["--solver", "taylor", *NO_VALIDATION_FLAGS, "--hidden", "64,64", "--no-progress", "--dtype", "float64"]


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
        sys.exit(main(["train", "--solver", "taylor", "--hidden", "16", "--iters", "20", "--checkpoint-every", "2",
                       "--no-progress",
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


@pytest.mark.parametrize("scale", [1e9, 1e12])
@pytest.mark.parametrize("solver", ["dladmm", "pdadmm", "taylor"])
def test_features_that_overflow_float32_end_in_one_line_not_a_traceback(tmp_path, solver, scale):
    # dlADMM's step-size search once divided by a zero bound (its power iteration had overflowed),
    # and then, with an infinite bound, froze the layer and ran on as if nothing were wrong
    X, y = blobs(120, 5, 3, seed=1)
    write_dataset(str(tmp_path / "huge.h5"), (X * scale).astype(np.float32), y, name="huge", n_classes=3)
    proc = run_admm(2, "train", "--data", tmp_path / "huge.h5", "--solver", solver, "--iters", 3, "--no-progress",
                    "--out", tmp_path / "run", timeout=120)
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("admm-mpi:")]
    assert len(proc.stderr.splitlines()) == len(lines), proc.stderr  # nothing but admm-mpi's own lines
    if solver != "taylor":  # the gradient-step solvers cannot take a step: they must say so
        assert proc.returncode == 3 and "training diverged" in proc.stderr, proc.stderr
    else:
        assert proc.returncode in (0, 3), proc.stderr


# ---- the table ---------------------------------------------------------------------------------
# File makers: FILES[name](directory) writes one input a case names as {name} and returns its path.
def _blobs_file(directory, name, edit=None, test=True, **attrs):
    path = directory / f"{name}.h5"
    X, y = blobs(40, 64, 10, seed=1)   # 64 features: digits-shaped, so the model below fits
    if edit:
        edit(X, y)
    write_dataset(str(path), X, y, *((X[-8:], y[-8:]) if test else ()), name=name, n_classes=10)
    with h5py.File(path, "r+") as f:
        f.attrs.update(attrs)
    return path


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


def _model(directory, name="model", weights_edit=None, attrs=None, legacy=False):
    """A digits-shaped model file (64-8-10, float32) written by save_model, then optionally altered.

    ``legacy``: as written before checksums existed (format version 1, no ``sha256``).
    """
    path = directory / f"{name}.h5"
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((8, 64)).astype(np.float32), rng.standard_normal((10, 8)).astype(np.float32)]
    biases = [np.zeros(8, np.float32), np.zeros(10, np.float32)]
    if weights_edit:
        weights_edit(weights)
    save_model(str(path), ModelSpec((64, 8, 10), "relu", "least_squares", 10), weights, biases)
    with h5py.File(path, "r+") as f:
        if legacy:
            f.attrs["format_version"] = 1
            del f.attrs["sha256"]
        f.attrs.update(attrs or {})
    return path


def _flip_exponent_byte(directory):
    """One flipped bit in the exponent of W[0, 0], in the raw file: what a bad disk block does."""
    path = _model(directory, "flipped")
    with h5py.File(path, "r") as f:
        offset = f["layers/0/W"].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x40  # little-endian float32: byte 3 holds the sign and the exponent's top bits
    path.write_bytes(bytes(data))
    return path


def _without_checksum(path):
    with h5py.File(path, "r+") as f:
        del f.attrs["sha256"]  # and the format version still says 2
    return path


def _text(name, content):
    def make(directory):
        path = directory / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path
    return make


def _idx_type_7(directory):
    images = _text("images-idx3-ubyte", bytes([0, 0, 7, 1]) + (2).to_bytes(4, "big") + b"ab")(directory)
    labels = _text("labels-idx1-ubyte", bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + b"\0\1")(directory)
    return f"{images},{labels}"


def _set_big(X, y):
    X[5, 3] = 1e39


def _set_nan(weights):
    weights[1][4, 2] = np.nan


def _directory(directory):
    path = directory / "a-directory"
    path.mkdir()
    return path


def _npz(d, name, X, y):
    path = d / f"{name}.npz"
    np.savez(path, X=X, y=y)
    return path


def _npz_array(d, name, a):
    path = d / f"{name}.npz"
    np.savez(path, a)
    return path


def _virtual_file(d, keep_source):
    """A data file whose X is a virtual dataset over another file (removed unless ``keep_source``)."""
    source, path = d / "source.h5", d / ("virtual_ok.h5" if keep_source else "virtual.h5")
    with h5py.File(source, "w") as f:
        f["X"] = np.random.default_rng(0).random((40, 4))
    layout = h5py.VirtualLayout(shape=(40, 4), dtype="f8")
    layout[:] = h5py.VirtualSource(str(source), "X", shape=(40, 4))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("X", layout, fillvalue=0)
        f["y"] = np.arange(40) % 2
    if not keep_source:
        source.unlink()
    return path


def _external_file(d):
    """A data file whose X keeps its values in an outside file's raw bytes."""
    raw, path = d / "outside.bin", d / "external.h5"
    np.random.default_rng(0).random((40, 4)).tofile(raw)
    with h5py.File(path, "w") as f:
        f.create_dataset("X", shape=(40, 4), dtype="f8", external=[(str(raw), 0, 40 * 4 * 8)])
        f["y"] = np.arange(40) % 2
    return path


def _with_validation(path):
    with h5py.File(path, "r+") as f:
        f["X_val"], f["y_val"] = f["X"][:4], f["y"][:4]
    return path


FILES = {
    **{kind: (lambda d, kind=kind: _bad_file(d, kind)) for kind in ("corrupt", "names", "width", "inf")},
    "bad_toml": _text("bad.toml", "iterations = 3\n"),
    "toml_bool": _text("bool.toml", "iters = true\n"),
    "toml_fraction": _text("fraction.toml", "hidden = [64.5]\n"),
    "toml_quoted": _text("quoted.toml", 'iters = "5"\n'),
    "model": _model,
    "model_flipped": _flip_exponent_byte,
    "model_nan": lambda d: _model(d, "nan", weights_edit=_set_nan),
    "model_widths": lambda d: _model(d, "widths", attrs={"widths": np.array([64, 60, 10])}),
    "model_widths_v1": lambda d: _model(d, "widths_v1", attrs={"widths": np.array([64, 60, 10])}, legacy=True),
    "model_nan_v1": lambda d: _model(d, "nan_v1", weights_edit=_set_nan, legacy=True),
    "model_activation": lambda d: _model(d, "activation", attrs={"activation": "swish"}),
    "model_loss": lambda d: _model(d, "loss", attrs={"loss": "hinge7"}),
    "model_classes_v1": lambda d: _model(d, "classes_v1", attrs={"n_classes": 7}, legacy=True),
    "model_unsummed": lambda d: _without_checksum(_model(d, "unsummed")),
    "notest": lambda d: _blobs_file(d, "notest", test=False),
    "overflow": lambda d: _blobs_file(d, "overflow", edit=_set_big),
    "classes_ten": lambda d: _blobs_file(d, "classes_ten", n_classes="ten"),
    "classes_negative": lambda d: _blobs_file(d, "classes_negative", n_classes=-3),
    "classes_huge": lambda d: _blobs_file(d, "classes_huge", n_classes=10**9),
    "dir": _directory,
    "empty": _text("empty.h5", b""),
    "garbage": _text("garbage.h5", bytes(range(256)) * 4),
    "svm_token": _text("token.svm", "1 1:0.5 2:1\n0 abc\n"),
    "svm_value": _text("value.svm", "1 1:0.5 2:x\n"),
    "svm_index": _text("index.svm", "1 -5:0.5 2:1\n0 1:1\n"),
    "idx_type_7": _idx_type_7,
    "csv": _text("small.csv", "1,2,3\n0,1,2\n"),
    "ragged_csv": _text("ragged.csv", "1,2,3\n0,1,2\n1,2,3,4\n"),
    "big_csv": _text("big.csv", "".join(f"{i % 3}," + ",".join(["0.5"] * 99) + "\n" for i in range(2000))),
    "toml_train_scalar": _text("scalar.toml", "train = 5\n"),
    "toml_outside_train": _text("outside.toml", "iters = 3\n[train]\nhidden = [8]\n"),
    "npz_lengths": lambda d: _npz(d, "lengths", np.random.rand(10, 3), np.arange(9) % 2),
    "npz_onehot": lambda d: _npz(d, "onehot", np.random.rand(10, 3), np.eye(2)[np.arange(10) % 2]),
    "npz_column": lambda d: _npz(d, "column", np.random.rand(10, 3), (np.arange(10) % 2)[:, None]),
    "npz_strings": lambda d: _npz(d, "strings", np.array([["a", "b"]] * 10), np.arange(10) % 2),
    "npz_complex": lambda d: _npz(d, "complex", np.random.rand(10, 3) + 1j, np.arange(10) % 2),
    "npz_nan_label": lambda d: _npz(d, "nan_label", np.random.rand(10, 3), np.r_[np.arange(9) % 2, np.nan]),
    "npz_inf_label": lambda d: _npz(d, "inf_label", np.random.rand(10, 3), np.r_[np.inf, np.arange(9) % 2]),
    "virtual": lambda d: _virtual_file(d, keep_source=False),
    "virtual_ok": lambda d: _virtual_file(d, keep_source=True),
    "external": _external_file,
    "validation_h5": lambda d: _with_validation(_blobs_file(d, "with_val")),
    "adjacency": lambda d: _npz_array(d, "adjacency", np.eye(48)),
}


@dataclass(frozen=True)
class Case:
    """One fault or bad-input case.

    ``args`` is the ``admm-mpi`` command line: ``{name}`` stands for the path ``FILES[name]`` makes
    in the case's own directory, ``{tmp}`` for that directory and ``{run}`` for a copy of a
    finished run with a checkpoint (its checkpoints and model must come out untouched).
    """

    id: str
    args: tuple
    message: str               # fragment of the one "admm-mpi: error:" line ({names} allowed)
    exit_code: int = 2
    ranks: int = 2             # 0: one process without MPI (ADMM_MPI_NO_MPI=1)
    env: tuple = ()            # (NAME, value) pairs added to the environment
    file_size_limit: int = 0   # RLIMIT_FSIZE in bytes: a full disk, without root or a small file system
    absent: tuple = ()         # paths that must not exist afterwards: no output, no partial output


def _continue(*args):
    """Continue the finished run {run} with ``args``: the bad input must not reach its checkpoint."""
    return ("train", *args, "--out", "{run}", "--resume", "auto")


def _evaluate(model="{model}", data="digits"):
    return ("evaluate", "--model", model, "--data", data)


def _convert(source, *args, out="{tmp}/out.h5"):
    return ("data", "convert", source, "--out", out, *args)


NO_OUT = ("{tmp}/out",)
NO_H5 = ("{tmp}/out.h5",)

CASES = [
    # training input against an existing run
    Case("train-data-missing", _continue("--data", "{tmp}/missing.h5"), "does not exist"),
    Case("train-data-corrupt", _continue("--data", "{corrupt}"), "cannot read"),
    Case("train-data-names", _continue("--data", "{names}"), "no dataset 'X'"),
    Case("train-data-width", _continue("--data", "{width}"), "features"),
    Case("train-data-inf", _continue("--data", "{inf}"), "NaN or Inf"),
    Case("train-activation", _continue("--activation", "swish"), "unknown activation"),
    Case("train-beta", _continue("--beta", "-1"), "beta must be positive"),
    Case("train-iters-0", _continue("--iters", "0"), "iters must be at least 1"),
    Case("train-setting-of-another-solver", _continue("--solver", "dladmm", "--ridge", "0.1"),
         "has no setting ridge"),
    Case("train-config-unknown-key", _continue("--config", "{bad_toml}"), "unknown keys"),
    Case("train-resume-missing", ("train", "--resume", "{tmp}/nothing", "--out", "{run}"), "does not exist"),
    Case("train-hidden-negative", _continue("--hidden", "64,-3"), "positive layer width"),
    Case("train-fresh-into-a-run", ("train", "--out", "{run}"), "holds checkpoints of an earlier run"),
    # setting types (TOML values carry a type; environment and flags are text)
    Case("config-toml-bool-for-int", ("train", "--config", "{toml_bool}", "--out", "{tmp}/out"),
         "iters must be of type int, got True", absent=NO_OUT),
    Case("config-toml-fraction-width", ("train", "--config", "{toml_fraction}", "--out", "{tmp}/out"),
         "hidden must be comma-separated positive integers, got [64.5]", absent=NO_OUT),
    Case("config-toml-quoted-number", ("train", "--config", "{toml_quoted}", "--out", "{tmp}/out"),
         "iters must be of type int, got '5'", absent=NO_OUT),
    Case("config-env-not-a-number", ("train", "--out", "{tmp}/out"), "iters must be of type int, got 'true'",
         env=(("ADMM_MPI_ITERS", "true"),), absent=NO_OUT),
    # model files
    Case("model-missing", _evaluate("{tmp}/none.h5"), "does not exist"),
    Case("model-directory", _evaluate("{dir}"), "it is a directory, not an HDF5 file"),
    Case("model-not-a-model", _evaluate("{notest}"), "is not an admm-mpi model file"),
    Case("model-flipped-exponent-bit", _evaluate("{model_flipped}"), "checksum does not match"),
    Case("model-widths-changed", _evaluate("{model_widths}"), "checksum does not match"),
    Case("model-no-checksum-in-v2", _evaluate("{model_unsummed}"), "but no checksum"),
    Case("model-nan-weight", _evaluate("{model_nan}"), "layer 1 W contains NaN or Inf"),
    Case("model-v1-nan-weight", ("predict", "--model", "{model_nan_v1}"), "layer 1 W contains NaN or Inf"),
    Case("model-v1-widths-contradict-W", ("predict", "--model", "{model_widths_v1}"),
         "layer 0 has W (8, 64) and b (8,), but widths [64, 60, 10] give W (60, 64)"),
    Case("model-v1-classes-contradict-output", _evaluate("{model_classes_v1}"),
         "output width 10 does not fit 7 classes"),
    Case("model-unknown-activation", ("predict", "--model", "{model_activation}"), "unknown activation 'swish'"),
    Case("model-unknown-loss", _evaluate("{model_loss}"), "unknown loss 'hinge7'"),
    # data files given to evaluate and predict
    Case("data-directory", _evaluate(data="{dir}"), "cannot read {dir}: it is a directory, not an HDF5 file"),
    Case("data-empty-file", _evaluate(data="{empty}"), "the file is empty (0 bytes)"),
    Case("data-garbage-file", _evaluate(data="{garbage}"), "not an HDF5 file (no HDF5 signature)"),
    Case("data-n_classes-text", _evaluate(data="{classes_ten}"), "n_classes attribute must be a whole number"),
    Case("data-n_classes-negative", _evaluate(data="{classes_negative}"), "n_classes attribute is -3, outside 1..48"),
    Case("data-n_classes-huge", _evaluate(data="{classes_huge}"),
         "n_classes attribute is 1000000000, outside 1..48 (at most one class per sample"),
    Case("data-overflows-float32", _evaluate(data="{overflow}"),
         "X value 1e+39 at row 5, column 3 overflows float32"),
    # predict
    Case("predict-no-test-split", ("predict", "--model", "{model}", "--data", "{notest}"),
         "has no test split (no X_test and y_test); use --split train"),
    Case("predict-bad-split", ("predict", "--model", "{model}", "--split", "validation"), "--split must be"),
    # the output is checked before the data is even read
    Case("predict-output-unwritable", ("predict", "--model", "{model}", "--data", "{tmp}/missing.h5", "--output",
                                       "{tmp}/no/labels.txt"), "cannot write {tmp}/no/labels.txt: No such file"),
    Case("predict-output-directory", ("predict", "--model", "{model}", "--output", "{dir}"),
         "cannot write {dir}: it is a directory"),
    # data convert (serial: rank 0 works)
    Case("convert-libsvm-token", _convert("{svm_token}"), "line 2: 'abc' is not an index:value pair",
         ranks=1, absent=NO_H5),
    Case("convert-libsvm-value", _convert("{svm_value}"), "line 1: '2:x' needs an integer index and a numeric value",
         ranks=1, absent=NO_H5),
    Case("convert-libsvm-negative-index", _convert("{svm_index}"), "line 1: feature index -5 is negative",
         ranks=1, absent=NO_H5),
    Case("convert-idx-type-7", _convert("{idx_type_7}", "--format", "idx"), "IDX type code 0x07 is not one of",
         ranks=1, absent=NO_H5),
    Case("convert-label-column", _convert("{csv}", "--delimiter", ",", "--label-column", "7"),
         "--label 7 is out of range for rows of 3 columns", ranks=1, absent=NO_H5),
    Case("convert-ragged-rows", _convert("{ragged_csv}", "--delimiter", ",", "--chunk-rows", "1"),
         "rows of different widths", ranks=1, absent=NO_H5),
    Case("convert-out-under-a-file", _convert("{csv}", "--delimiter", ",", out="{csv}/out.h5"),
         "cannot write {csv}/out.h5: Not a directory", ranks=1),
    Case("convert-out-missing-directory", _convert("{csv}", "--delimiter", ",", out="{tmp}/no/out.h5"),
         "cannot write {tmp}/no/out.h5: No such file or directory", ranks=1),
    Case("convert-out-is-a-directory", _convert("{csv}", "--delimiter", ",", out="{dir}"),
         "cannot write {dir}: it is a directory", ranks=1),
    Case("convert-disk-full", _convert("{big_csv}", "--delimiter", ","), "cannot write {tmp}/out.h5: File too large",
         ranks=0, file_size_limit=100_000, absent=NO_H5),
    Case("data-info-garbage", ("data", "info", "{garbage}"), "not an HDF5 file", ranks=1),
    # issue 37: no silent conversion, no traceback for a user error
    Case("config-toml-train-not-a-table", ("train", "--config", "{toml_train_scalar}", "--out", "{tmp}/out"),
         "'train' must be a table", absent=NO_OUT),
    Case("config-toml-key-outside-train", ("train", "--config", "{toml_outside_train}", "--out", "{tmp}/out"),
         "keys ['iters'] lie outside the [train] table", absent=NO_OUT),
    Case("train-hidden-empty-item", ("train", "--hidden", "16,,16", "--out", "{tmp}/out"),
         "hidden must be comma-separated positive integers, got '16,,16'", absent=NO_OUT),
    Case("convert-npz-lengths", _convert("{npz_lengths}"), "do not have one row per label", ranks=1, absent=NO_H5),
    Case("convert-npz-onehot-labels", _convert("{npz_onehot}"), "one-hot labels", ranks=1, absent=NO_H5),
    Case("convert-npz-column-labels", _convert("{npz_column}"), "labels must be one value per row", ranks=1,
         absent=NO_H5),
    Case("convert-npz-string-features", _convert("{npz_strings}"), "features are non-numeric", ranks=1,
         absent=NO_H5),
    Case("convert-npz-complex-features", _convert("{npz_complex}"), "features are complex", ranks=1, absent=NO_H5),
    Case("convert-nan-label", _convert("{npz_nan_label}"), "label at row 9 is nan", ranks=1, absent=NO_H5),
    Case("convert-inf-label", _convert("{npz_inf_label}"), "label at row 0 is inf", ranks=1, absent=NO_H5),
    Case("convert-scale-inf", _convert("{csv}", "--delimiter", ",", "--scale", "inf"),
         "--scale must be a finite positive number", ranks=1, absent=NO_H5),
    Case("convert-virtual-refused", _convert("{virtual_ok}"), "is virtual", ranks=1, absent=NO_H5),
    Case("convert-virtual-missing-source", _convert("{virtual}", "--allow-virtual"),
         "its source", ranks=1, absent=NO_H5),
    Case("convert-external-refused", _convert("{external}", "--allow-virtual"), "external files", ranks=1,
         absent=NO_H5),
    Case("train-data-virtual", ("train", "--data", "{virtual}", "--out", "{tmp}/out"), "is virtual"),
    Case("train-data-external", ("train", "--data", "{external}", "--out", "{tmp}/out"), "external files"),
    Case("augment-drops-no-validation", ("data", "augment", "{validation_h5}", "--adjacency", "{adjacency}",
                                         "--out", "{tmp}/aug.h5"), "has a validation split", ranks=1,
         absent=("{tmp}/aug.h5",)),
    Case("augment-out-unwritable", ("data", "augment", "{notest}", "--adjacency", "{adjacency}",
                                    "--out", "{tmp}/no/aug.h5"), "cannot write {tmp}/no/aug.h5", ranks=1),
    Case("plot-out-unwritable", ("plot", "{run}", "--out", "{tmp}/no/m.png"), "cannot write {tmp}/no/m.png",
         ranks=1),
    # a full disk while model.h5 is written: one line, the partial .tmp removed
    Case("train-disk-full-model", ("train", "--iters", "2", "--no-progress", "--out", "{tmp}/full"),
         "cannot write {tmp}/full/model.h5: File too large", exit_code=3, ranks=0, file_size_limit=300_000,
         absent=("{tmp}/full/model.h5",)),
]

# sets RLIMIT_FSIZE, then runs the command (Python ignores SIGXFSZ, so a write fails with EFBIG)
_LIMIT_FILE_SIZE = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
                    "os.execv(sys.argv[2], sys.argv[2:])")
TIMEOUT = 60


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-rank run with a checkpoint at iteration 2: cases copy it and must leave it untouched."""
    run = tmp_path_factory.mktemp("finished") / "run"
    ok = run_admm(2, "train", "--hidden", "8", "--iters", 2, "--checkpoint-every", 2, "--no-progress", "--out", run)
    assert ok.returncode == 0, ok.stderr
    assert (run / "checkpoints" / "ckpt-000002" / "manifest.json").exists()
    return run


def _snapshot(run):
    """Bytes and modification times of the run's checkpoints and model."""
    files = [run / "model.h5", *sorted(p for p in (run / "checkpoints").rglob("*") if p.is_file())]
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def _command(case, args):
    cmd = [sys.executable, "-m", "admm_mpi", *args]
    if case.ranks:
        cmd = [mpiexec(), "-n", str(case.ranks), *cmd]
    if case.file_size_limit:
        cmd = [sys.executable, "-c", _LIMIT_FILE_SIZE, str(case.file_size_limit), *cmd]
    env = child_env(**dict(case.env))
    if not case.ranks:
        env["ADMM_MPI_NO_MPI"] = "1"
    return cmd, env


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_fault_case(tmp_path, request, case):
    names = {field for text in case.args for _, field, _, _ in string.Formatter().parse(text) if field}
    paths = {"tmp": tmp_path}
    for name in sorted(names - {"tmp", "run"}):
        paths[name] = FILES[name](tmp_path)
    if "run" in names:
        paths["run"] = tmp_path / "run"
        shutil.copytree(request.getfixturevalue("finished_run"), paths["run"])  # copy2 keeps mtimes
        before = _snapshot(paths["run"])
    cmd, env = _command(case, [a.format(**paths) for a in case.args])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)  # a hang fails here

    assert proc.returncode == case.exit_code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("admm-mpi: error:")]
    assert len(errors) == 1, proc.stderr
    assert case.message.format(**paths) in errors[0], proc.stderr
    assert not errors[0].startswith("admm-mpi: error: rank "), errors[0]  # the same text on every rank
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert not list(tmp_path.rglob("*.tmp")), "a partial output was left behind"
    for path in case.absent:
        assert not Path(path.format(**paths)).exists(), path
    if "run" in names:
        assert _snapshot(paths["run"]) == before
