"""Weight-solve factorisations in float32 against float64: accuracy after training, solve residuals.

    python bench/factor_precision.py                       # digits (minibatch_am, taylor) and an MNIST subset
    python bench/factor_precision.py --mnist-train 10000 --mnist-epochs 2

Each case trains twice in this process (serial, one BLAS thread, float32 working precision), with
``--factor-dtype`` float64 and float32, from the same seed, and records
the test accuracy, the validation accuracy when the data has no validation split taken from the
last 10 % of the training samples (the run trains on the rest), and, for every weight solve of
the float32 run, the relative residual ``||(G + sI) X - R|| / ||R||`` of its rows (computed in
float64) and the relative difference from the float64 solve of the same system. Writes
results/factor_precision.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg

from common import RESULTS, machine, write_result

REPO = Path(__file__).resolve().parents[1]


def split_validation(path, out, n_train=None, fraction=0.1):
    """A copy of the data with the last ``fraction`` of the (first ``n_train``) training samples as its test split."""
    import h5py

    from admm_mpi.data import write_dataset

    with h5py.File(path, "r") as f:
        X, y = f["X"][:n_train], f["y"][:n_train]
        X_test, y_test = f["X_test"][:], f["y_test"][:]
        n_classes = int(f.attrs["n_classes"])
    cut = int(len(y) * (1 - fraction))
    write_dataset(out + ".val.h5", X[:cut], y[:cut], X[cut:], y[cut:], name="validation", n_classes=n_classes)
    write_dataset(out + ".test.h5", X[:cut], y[:cut], X_test, y_test, name="test", n_classes=n_classes)
    return out + ".val.h5", out + ".test.h5"


def record_solves(linalg, log):
    """Wrap the row solve: residual and distance to the float64 solve of every system, into ``log``."""
    original = linalg.solve_normal_equation_rows

    def checked(stats, factor, rows, anchor=None, anchor_weight=0.0):
        X = np.array(original(stats, factor, rows, anchor, anchor_weight), dtype=np.float64)
        k = stats.shape[0]
        shift = log[-1]["shift"]  # from the factorisation just before
        G = stats[:, :k].astype(np.float64)
        G[np.diag_indices(k)] += shift
        R = stats[:, k + rows[0]:k + rows[1]].T.astype(np.float64)
        if anchor is not None and anchor_weight:
            R += anchor_weight * np.hstack([anchor[0][rows[0]:rows[1]], anchor[1][rows[0]:rows[1], None]])
        X64 = np.linalg.solve(G, R.T).T
        L, _ = scipy.linalg.lapack.dpotrf(G, lower=1)
        rcond, _ = scipy.linalg.lapack.dpocon(L, np.abs(G).sum(axis=0).max(), uplo="L")
        log[-1].update(condition=1 / rcond, residual=float(np.linalg.norm(X @ G - R) / np.linalg.norm(R)),
                       difference=float(np.linalg.norm(X - X64) / np.linalg.norm(X64)), k=k)
        return X.astype(stats.dtype)

    factor = linalg.factor_normal_equations

    def remembered(stats, shift, dtype):
        log.append({"shift": float(shift)})
        return factor(stats, shift, dtype)

    linalg.solve_normal_equation_rows, linalg.factor_normal_equations = checked, remembered


def train_once(args, data, factor_dtype, log=None):
    from admm_mpi import config as cfg
    from admm_mpi.grid import Grid
    from admm_mpi.ops import linalg
    from admm_mpi.train import train

    saved = linalg.solve_normal_equation_rows, linalg.factor_normal_equations
    if log is not None:  # instruments the solves (the measurement), chooses nothing
        record_solves(linalg, log)
    try:
        config = cfg.resolve(file=args.get("config"), cli={**args.get("cli", {}), "data": data, "progress": False,
                                                           "factor_dtype": np.dtype(factor_dtype).name})
        t0 = time.perf_counter()
        summary = train(config, Grid.serial(), out=False)
        return summary.summary["test_accuracy"], time.perf_counter() - t0
    finally:
        linalg.solve_normal_equation_rows, linalg.factor_normal_equations = saved


def run_case(name, args, val_data, test_data):
    result = {"case": name, **{k: v for k, v in args.items() if k != "config"}, "config": args.get("config")}
    for dtype in (np.float64, np.float32):
        log = [] if dtype == np.float32 else None
        val, seconds = train_once(args, val_data, dtype, log)
        test, _ = train_once(args, test_data, dtype)
        entry = {"validation_accuracy": val, "test_accuracy": test, "train_seconds": round(seconds, 1)}
        if log:
            res = np.array([r["residual"] for r in log])
            diff = np.array([r["difference"] for r in log])
            cond = np.array([r["condition"] for r in log])
            entry.update(condition_1norm_estimate_median=float(np.median(cond)), condition_max=float(cond.max()))
            entry.update(solves=len(log), residual_median=float(np.median(res)), residual_max=float(res.max()),
                         difference_from_float64_median=float(np.median(diff)),
                         difference_from_float64_max=float(diff.max()))
        result[np.dtype(dtype).name] = entry
        print(name, np.dtype(dtype).name, entry, flush=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist-train", type=int, default=10000, help="first N MNIST training samples (0: skip MNIST)")
    p.add_argument("--mnist-epochs", type=int, default=2)
    p.add_argument("--cache", default=str(REPO / "bench" / ".data"))
    p.add_argument("--skip-digits", action="store_true")
    args = p.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    from admm_mpi.data import resolve_path

    tmp = str(Path(args.cache) / "factor_precision")
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    cases = []
    if not args.skip_digits:
        digits = split_validation(resolve_path("digits"), tmp + "-digits")
        cases.append(run_case("digits-minibatch_am", {"cli": {"solver": "minibatch_am", "hidden": (512, 512),
                                                             "iters": 20, "batch_size": 200}}, *digits))
        cases.append(run_case("digits-taylor", {"cli": {"solver": "taylor", "iters": 60}}, *digits))
    if args.mnist_train:
        from accuracy import data_file

        mnist = split_validation(data_file("mnist", args.cache), tmp + "-mnist", args.mnist_train)
        cases.append(run_case(f"mnist{args.mnist_train}-minibatch_am", {
            "config": str(REPO / "configs" / "mnist-minibatch_am.toml"),
            "cli": {"iters": args.mnist_epochs}}, *mnist))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    for case in cases:
        if case.get("config"):
            case["config"] = os.path.relpath(case["config"], REPO)
    old = RESULTS / "factor_precision.json"  # merged by case, so a partial run updates its cases only
    fresh = {c["case"]: c for c in cases}
    if old.exists():
        cases = [fresh.pop(c["case"], c) for c in json.loads(old.read_text())["cases"]] + list(fresh.values())
    write_result("factor_precision", {
        "benchmark": "weight-solve factorisation in float32 vs float64 (working dtype float32, serial)",
        "argv": ["python", "bench/factor_precision.py", *sys.argv[1:]], "commit": commit, "machine": machine(),
        "validation": "last 10 % of the training samples held out; test: the official test split, trained on the rest",
        "cases": cases})


if __name__ == "__main__":
    main()
