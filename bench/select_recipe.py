"""Choose a recipe on a validation split, then read the test split once.

    python bench/select_recipe.py --config configs/mnist-minibatch_am.toml --data ../cache/mnist.h5 \\
        --validation-fraction 0.16667 --candidate "avg1=--average 1" --candidate "avg0=--average 0"

Each candidate runs as

    OMP_NUM_THREADS=1 mpiexec -n 2 admm-mpi train --config CONFIG --data DATA --validation-fraction F \\
        --iters N --early-stopping --patience K --keep best --eval-test never <candidate's flags>

so no candidate's training reads the test split (``--eval-test never``): MNIST's and Fashion-MNIST's
validation rows (``F = 0.16667``: 10 000 of the 60 000 official training images, stratified, drawn
from the seed) are carved from the training rows. The candidate with the best validation accuracy
(ties: the first listed) is the pick; its saved model (its best validation epoch, ``--keep best``)
is then scored once on the official test images with ``admm-mpi evaluate``. The other candidates
are never scored on test.

Writes ``results/selection_<name>.json``: every candidate's flags, settings as run, validation curve
and seconds; the pick; its test accuracy. ``--reuse`` reads back a candidate whose run directory
already holds a finished run (its ``summary.json`` records the settings it ran with) instead of
running it again.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, mpiexec, portable, run_record  # noqa: E402


def train_command(args, flags, out):
    return [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "admm_mpi", "train", "--config", args.config,
            "--data", args.data, "--validation-fraction", str(args.validation_fraction), "--iters", str(args.iters),
            "--early-stopping", "--patience", str(args.patience), "--keep", "best", "--eval-test", "never",
            "--no-progress", "--out", str(out), *flags]


def run_candidate(args, tag, flags):
    """Train one candidate (or read it back with --reuse): its validation record, no test figure."""
    out = Path(args.runs) / f"{args.name}-{tag}"
    summary_path = out / "summary.json"
    reused = args.reuse and summary_path.exists()
    if not reused:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(train_command(args, flags, out), check=True, env=env, timeout=args.timeout)
    summary = json.loads(summary_path.read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["config"]["eval_test"] == "never" and summary["test_accuracy"] is None
    return {"tag": tag, "flags": flags, "reused": reused, "out": str(out),
            "settings": {k: v for k, v in summary["config"].items() if k not in ("data", "out")},  # no paths
            "n_train": summary["n_train"], "n_validation": summary["n_validation"],
            "validation_accuracy": summary["validation_accuracy"], "kept_epoch": summary["kept_iteration"],
            "epochs_run": summary["iterations"],
            "curve": [[r["iteration"], r["validation_accuracy"], r["seconds"]] for r in rows],
            "train_seconds": sum(r["seconds"] for r in rows)}


def test_accuracy(args, model):
    """The pick's model scored once on the data set's test split."""
    cmd = [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "admm_mpi", "evaluate", "--model", str(model),
           "--data", args.data]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    result = json.loads(out)
    return result["test_accuracy"], result["n_test"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--candidate", action="append", required=True, metavar="TAG=FLAGS",
                        help="a candidate: its tag and its flags added to the config's (repeatable)")
    parser.add_argument("--validation-fraction", type=float, default=0.16667)
    parser.add_argument("--iters", type=int, default=20, help="epoch budget of every candidate")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--name", help="results/selection_<name>.json and the run directories' prefix "
                                       "(default: the config's name)")
    parser.add_argument("--runs", default="runs/selection", help="run directories")
    parser.add_argument("--reuse", action="store_true", help="read back finished runs instead of rerunning them")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    parser.add_argument("--out", help="the results file (default: results/selection_<name>.json)")
    args = parser.parse_args(argv)
    args.name = args.name or Path(args.config).stem
    candidates = [item.partition("=") for item in args.candidate]
    records = [run_candidate(args, tag, shlex.split(flags)) for tag, _, flags in candidates]
    best = max(records, key=lambda r: r["validation_accuracy"])  # max keeps the first of equals
    accuracy, n_test = test_accuracy(args, Path(best["out"]) / "model.h5")
    for r in records:
        r["out"] = Path(r["out"]).name
        print(f"{r['tag']:24s} validation {r['validation_accuracy']:.4f} (epoch {r['kept_epoch']} of "
              f"{r['epochs_run']}){'  <- pick' if r is best else ''}")
    print(f"pick {best['tag']}: test accuracy {accuracy:.4f} on {n_test} images (read once)")
    path = Path(args.out or RESULTS / f"selection_{args.name}.json")
    result = {
        "benchmark": "recipe chosen on validation accuracy, then the test split read once",
        "config": args.config, "data": Path(args.data).name, "ranks": args.ranks,
        "validation_fraction": args.validation_fraction, "iters": args.iters, "patience": args.patience,
        "candidates": records, "pick": best["tag"], "pick_validation_accuracy": best["validation_accuracy"],
        "pick_test_accuracy": accuracy, "n_test": n_test,
        "train_command": "OMP_NUM_THREADS=1 " + shlex.join(["mpiexec", "-n", str(args.ranks), "admm-mpi"]
                                                          + train_command(args, ["<flags>"], "<run>")[6:])}
    path.write_text(json.dumps(portable({**result, **run_record()}), indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
