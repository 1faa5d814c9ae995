"""The README's digits figures, re-derived: quick start, solver table, ridge sweep, pdADMM runs.

    OMP_NUM_THREADS=1 python bench/digits.py [--only quick_start|defaults|solvers|ridge|pdadmm ...]

Every row is one training run on the bundled digits (1 500 training, 297 test images) through the
real command line, run from the repository root exactly as recorded in the row:

    OMP_NUM_THREADS=1 mpiexec -n 2 admm-mpi train [settings] --no-progress --out runs/bench-digits/<row>

(2 ranks; the ridge sweep 1 rank, as the README states it). Recorded per row: the last
iteration's test and training accuracy, the test accuracy at iterations 10 and 20 (the README
quotes a few), the median seconds per iteration, and the bytes each rank handed to MPI per
iteration. Accuracies are deterministic for a given rank count and dtype; seconds depend on the
machine's load. Writes results/digits.json (rows merged by name, so ``--only`` updates its
tables' rows only) and results/digits.md.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import ALL_ROWS, REPO, RESULTS, git_commit, mpiexec, write_result

OUT_ROOT = Path("runs") / "bench-digits"
# the solver table: 64-1000-1000-10, 60 iterations, every training row, the last iterate (the
# settings it was recorded with, before the defaults held out validation rows)
WIDE = ["--hidden", "1000,1000", "--iters", "60", *ALL_ROWS]
DEEP = ["--solver", "pdadmm", "--layout", "layer", "--hidden", "500,500,500,500", *ALL_ROWS]  # 64-500x4-10
DEFAULTS_SOLVERS = ("taylor", "dladmm", "pdadmm", "mdlam", "sigmoid_admm", "minibatch_am")
RIDGES = ("1e-6", "1e-5", "5e-5", "1e-4", "1e-3")


def planned_runs():
    """``(table, name, label, ranks, settings)`` of every row."""
    runs = []
    for dtype, seeds in (("float32", range(3)), ("float64", range(5))):
        for seed in seeds:
            runs.append(("quick_start", f"default-{dtype}-seed{seed}", f"default run, {dtype}, seed {seed}", 2,
                         ["--dtype", dtype, "--seed", str(seed)]))
    # every solver under the package defaults (its own validation and selection defaults), beside
    # its recipe (every training row, the last of 60 iterations): tests/test_solver_defaults.py
    # checks that the first stays within a point of the second
    for solver in DEFAULTS_SOLVERS:
        runs.append(("defaults", f"{solver}-recipe", f"{solver}: every row, last iterate", 2,
                     ["--solver", solver, *WIDE, "--dtype", "float64"]))
        runs.append(("defaults", f"{solver}-defaults", f"{solver}: package defaults", 2,
                     ["--solver", solver, "--hidden", "1000,1000", "--dtype", "float64"]))
    for solver in ("dladmm", "mdlam", "sigmoid_admm", "minibatch_am"):
        for dtype in ("float64", "float32"):
            runs.append(("solvers", f"{solver}-{dtype}", f"{solver}, {dtype}", 2,
                         ["--solver", solver, *WIDE, "--dtype", dtype]))
    for steps in (1, 3):
        runs.append(("solvers", f"dladmm-w_steps{steps}-float64", f"dladmm, w_steps {steps}, float64", 2,
                     ["--solver", "dladmm", *WIDE, "--w-steps", str(steps), "--dtype", "float64"]))
    runs.append(("solvers", "minibatch_am-batch200-float64", "minibatch_am, batches of 200, 20 epochs, float64", 2,
                 ["--solver", "minibatch_am", "--hidden", "1000,1000", "--iters", "20", "--batch-size", "200",
                  "--average", "0", *ALL_ROWS, "--dtype", "float64"]))
    for dtype in ("float64", "float32"):
        for ridge in RIDGES:
            runs.append(("ridge", f"ridge{ridge}-{dtype}", f"ridge {ridge}, {dtype}", 1,  # Taylor's ridge
                         ["--solver", "taylor", *ALL_ROWS, "--ridge", ridge, "--dtype", dtype]))
    for dtype, iters in (("float64", "50"), ("float32", "30")):
        for bits in ("0", "8"):
            runs.append(("pdadmm", f"pdadmm-layer-{dtype}-q{bits}",
                         f"pdADMM, 2 ranks --layout layer, {dtype}, {iters} it." + (", --quantize 8" if bits != "0" else ""),
                         2, [*DEEP, "--dtype", dtype, "--iters", iters, "--quantize", bits]))
    return runs


def train(name, ranks, settings):
    """One run from the repository root; returns its row (command, accuracies, cost)."""
    out = OUT_ROOT / name
    shutil.rmtree(REPO / out, ignore_errors=True)  # this script's own run directory: a fresh run each time
    args = ["train", *settings, "--no-progress", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # the hour-long timeout below guards against hangs; an inherited MPIEXEC_TIMEOUT would end a
    # slow but healthy run on a loaded machine (a 1000-1000 dlADMM run took 10 minutes here)
    env.pop("MPIEXEC_TIMEOUT", None)
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "admm_mpi", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}:\n{proc.stderr[-3000:]}")
    summary = json.loads((REPO / out / "summary.json").read_text())
    rows = [json.loads(line) for line in (REPO / out / "metrics.jsonl").read_text().splitlines()]
    return {
        "name": name, "ranks": ranks,
        "command": " ".join(["OMP_NUM_THREADS=1", "mpiexec", "-n", str(ranks), "admm-mpi", *args]),
        "test_accuracy": summary["test_accuracy"], "train_accuracy": summary["train_accuracy"],
        "iterations": summary["iterations"],
        "test_accuracy_at": {str(r["iteration"]): r["test_accuracy"] for r in rows if r["iteration"] in (10, 20)},
        "seconds_per_iteration": summary["seconds_per_iteration"],
        "bytes_per_iteration_per_rank": summary["bytes_per_iteration_per_rank"],
        "widths": summary["widths"], "commit": git_commit(),
    }


def save(rows):
    """Write results/digits.json and digits.md with ``rows`` (by name) in the planned order."""
    order = [name for _, name, *_ in planned_runs()]
    result = {"benchmark": "digits figures of the README",
              "rows": sorted(rows.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))}
    path = write_result("digits", result)
    (RESULTS / "digits.md").write_text(markdown(result))
    return path


def run(tables, names=()):
    """Run the rows of ``tables`` (only those named ``names``, if any), saving after each one (a
    failed run keeps the rows before it)."""
    path = RESULTS / "digits.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = {r["name"]: r for r in old.get("rows", [])}
    for table, name, label, ranks, settings in planned_runs():
        if table not in tables or (names and name not in names):
            continue
        rows[name] = {"table": table, "label": label, **train(name, ranks, settings)}
        r = rows[name]
        print(f"{label}: test {r['test_accuracy']:.4f} (train {r['train_accuracy']:.4f}), "
              f"{r['seconds_per_iteration']:.3f} s/iteration", flush=True)
        path = save(rows)
    return path


def _table(rows, header, cells):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    lines += ["", "Commands (from the repository root):", ""] + [f"    {r['command']}" for r in rows]
    return lines + [""]


def _at(r, iteration):
    value = r["test_accuracy_at"].get(str(iteration))
    return "" if value is None else f"{value:.4f}"


def markdown(result):
    by_table = {}
    for r in result["rows"]:
        by_table.setdefault(r["table"], []).append(r)
    lines = ["# The README's digits figures", "",
             "Generated by `python bench/digits.py` (commit and machine in `digits.json`); last-iteration "
             "test accuracy on the 297 test images, seconds per iteration on a shared machine.", ""]
    sections = {
        "quick_start": ("Quick start: the default run (64-512-512-10, 60 iterations, 2 ranks)",
                        ["run", "test accuracy", "s/iteration"],
                        lambda r: [r["label"], f"{r['test_accuracy']:.4f}", f"{r['seconds_per_iteration']:.3f}"]),
        "defaults": ("Every solver under its defaults: 64-1000-1000-10, float64, 2 ranks",
                     ["run", "test accuracy", "iterations", "s/iteration"],
                     lambda r: [r["label"], f"{r['test_accuracy']:.4f}", str(r["iterations"]),
                                f"{r['seconds_per_iteration']:.3f}"]),
        "solvers": ("Solver table: 64-1000-1000-10, 2 ranks",
                    ["run", "test accuracy", "at it. 10", "at it. 20", "s/iteration"],
                    lambda r: [r["label"], f"{r['test_accuracy']:.4f}", _at(r, 10), _at(r, 20),
                               f"{r['seconds_per_iteration']:.3f}"]),
        "ridge": ("Taylor ADMM ridge sweep: the default run otherwise, 1 rank",
                  ["run", "test accuracy", "s/iteration"],
                  lambda r: [r["label"], f"{r['test_accuracy']:.4f}", f"{r['seconds_per_iteration']:.3f}"]),
        "pdadmm": ("pdADMM: 64-500-500-500-500-10 ReLU, cross-entropy, one layer group per rank",
                   ["run", "test accuracy", "train accuracy", "bytes per rank and iteration"],
                   lambda r: [r["label"], f"{r['test_accuracy']:.4f}", f"{r['train_accuracy']:.4f}",
                              " / ".join(f"{b:,}".replace(",", " ") for b in r["bytes_per_iteration_per_rank"])]),
    }
    for table, (title, header, cells) in sections.items():
        if table in by_table:
            lines += [f"## {title}", ""] + _table(by_table[table], header, cells)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=["quick_start", "defaults", "solvers", "ridge", "pdadmm"],
                        help="run only this table (repeatable); the other rows are kept from the last run")
    parser.add_argument("--row", action="append", help="run only the row of this name (repeatable)")
    args = parser.parse_args(argv)
    path = run(set(args.only or ["quick_start", "defaults", "solvers", "ridge", "pdadmm"]), set(args.row or ()))
    print("wrote", path, RESULTS / "digits.md")


if __name__ == "__main__":
    main()
