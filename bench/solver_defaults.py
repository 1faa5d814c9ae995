"""Validation and model-selection defaults per solver, chosen on held-out rows over small suite sets.

    OMP_NUM_THREADS=1 python bench/solver_defaults.py [--solvers taylor,dladmm] [--sets digits,vowel]

The run settings that decide how a run is monitored (early stopping, patience, the kept iterate)
were chosen for the epoch-based default solver. A full-batch solver makes many cheap, noisy
iterations, so each is scored here under every candidate below, on the bundled digits (the
README's solver table: 64-1000-1000-10) and on small public suite sets where a full-batch solver
runs in seconds (256-256 hidden, the suite's width), 60 iterations.

Nested validation. "Keep the best validation iterate" is itself a choice made on the validation
rows, so its validation accuracy is the maximum of many noisy scores and cannot be compared with
"keep the last iterate" on the same rows. Each set's training rows are therefore split three ways
(stratified, seeded): the rows a default run holds out for validation (``validation_rows(y, 0.1,
seed 0)``, written as the file's ``X_val``: what the run monitors and selects on), a second tenth
(written as the file's *test* split: it scores the candidates, the selection score), and the rest
(training). The sets' real test splits are never read here. The pick per solver is the candidate
with the best mean selection score; ties go to the cheaper candidate (fewer iterations run).
Writes results/solver_defaults.json and .md.
"""

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from common import RESULTS, mpiexec, write_result

SOLVERS = ("taylor", "dladmm", "pdadmm", "mdlam", "sigmoid_admm")
SETS = ("digits", "vowel", "vehicle", "segment", "movement_libras", "breast_cancer_sk")
COMMON = ["--iters", "60", "--eval-test", "end", "--no-progress"]
# candidates: explicit flags, so a result does not depend on the defaults it helps choose
CANDIDATES = {
    "patience-10": ["--early-stopping", "--patience", "10", "--keep", "best"],
    "patience-30": ["--early-stopping", "--patience", "30", "--keep", "best"],
    "no-early-stopping": ["--no-early-stopping", "--keep", "best"],
    "last-iterate": ["--no-early-stopping", "--keep", "last"],
}
OUT_ROOT = Path("runs") / "bench-solver-defaults"


DATA = Path("bench") / ".data" / "solver_defaults"


def data_path(name):
    """The set's training rows split three ways (see the module's docstring), as an HDF5 file."""
    import h5py
    import numpy as np

    from admm_mpi.data import validation_rows, write_dataset

    if name == "digits":
        source, width = Path(__file__).resolve().parents[1] / "admm_mpi" / "datasets" / "digits.h5", "1000,1000"
    else:
        import suite

        source, width = suite.prepare(name, 0), "256,256"
    path = DATA / f"{name}.h5"
    if not path.exists():
        with h5py.File(source, "r") as f:
            X, y, n_classes = f["X"][...], f["y"][...], int(f.attrs["n_classes"])
        monitored = validation_rows(y, 0.1, seed=0)
        rest = np.setdiff1d(np.arange(len(y)), monitored)
        scoring = rest[validation_rows(y[rest], 0.1 / 0.9, seed=1)]
        train = np.setdiff1d(rest, scoring)
        DATA.mkdir(parents=True, exist_ok=True)
        write_dataset(str(path), X[train], y[train], X[scoring], y[scoring], X_val=X[monitored], y_val=y[monitored],
                      name=f"{name} (training rows: train / monitored validation / scoring)", n_classes=n_classes)
    return str(path), ["--hidden", width]


def run(solver, set_name, candidate, ranks):
    data, width = data_path(set_name)
    out = OUT_ROOT / f"{solver}-{set_name}-{candidate}"
    command = [mpiexec(), "-n", str(ranks), "admm-mpi", "train", "--solver", solver, "--data", data, *width,
               *COMMON, *CANDIDATES[candidate], "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        return {"solver": solver, "set": set_name, "candidate": candidate, "error": completed.stderr.strip()[-300:]}
    summary = json.loads((out / "summary.json").read_text())
    return {"solver": solver, "set": set_name, "candidate": candidate,
            "command": " ".join(["mpiexec", *command[1:]]),
            "iterations": summary["iterations"], "kept_iteration": summary["kept_iteration"],
            "validation_accuracy": summary["validation_accuracy"], "selection_score": summary["test_accuracy"],
            "seconds": summary["seconds_per_iteration"] * summary["iterations"]}


def picks(rows):
    """Per solver: each candidate's mean validation/test accuracy and iterations, and the pick."""
    table = {}
    for solver in sorted({r["solver"] for r in rows}):
        means = {}
        for candidate in CANDIDATES:
            mine = [r for r in rows if r["solver"] == solver and r["candidate"] == candidate and "error" not in r]
            if mine:
                means[candidate] = {key: statistics.mean(r[key] for r in mine)
                                    for key in ("validation_accuracy", "selection_score", "iterations")}
                means[candidate]["sets"] = len(mine)
        best = max(means, key=lambda c: (round(means[c]["selection_score"], 6), -means[c]["iterations"]))
        table[solver] = {"candidates": means, "pick": best}
    return table


def markdown(result):
    lines = ["# Validation defaults per solver", "",
             "Generated by `python bench/solver_defaults.py` (command, commit and machine in `solver_defaults.json`). "
             "Mean over the sets of the kept model's accuracy on the monitored validation rows and on the "
             "scoring rows (a second tenth of the training rows, never seen by the run: the selection score); "
             "the pick has the best mean score, ties to fewer iterations. No test split is read.", "",
             "| solver | candidate | sets | mean monitored validation | mean score (selection) | mean iterations run | pick |",
             "|---|---|---|---|---|---|---|"]
    for solver, entry in result["picks"].items():
        for candidate, m in entry["candidates"].items():
            lines.append(f"| {solver} | {candidate} | {m['sets']} | {m['validation_accuracy']:.4f} | "
                         f"{m['selection_score']:.4f} | {m['iterations']:.1f} | "
                         f"{'yes' if candidate == entry['pick'] else ''} |")
    lines += ["", "Per run:", "", "| solver | set | candidate | iterations | kept | monitored validation | score | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['solver']} | {r['set']} | {r['candidate']} | error: {r['error'][:80]} | | | | |")
        else:
            lines.append(f"| {r['solver']} | {r['set']} | {r['candidate']} | {r['iterations']} | {r['kept_iteration']} | "
                         f"{r['validation_accuracy']:.4f} | {r['selection_score']:.4f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--name", default="solver_defaults", help="results/NAME.json and NAME.md")
    args = parser.parse_args()
    rows = []
    for solver in args.solvers.split(","):
        for set_name in args.sets.split(","):
            for candidate in CANDIDATES:
                rows.append(run(solver, set_name, candidate, args.ranks))
                print(json.dumps(rows[-1]), flush=True)
    result = {"candidates": CANDIDATES, "common_flags": COMMON, "runs": rows, "picks": picks(rows)}
    write_result(args.name, result)
    (RESULTS / f"{args.name}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
