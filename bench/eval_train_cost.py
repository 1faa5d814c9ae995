"""What evaluating the training rows every epoch costs: ``--eval-train every`` against ``end``, on
the public suite's large sets with the package defaults (bench/suite.py's common flags).

    python bench/eval_train_cost.py --repeats 3                      # the suite's 14 sets of >= 5 000 rows
    python bench/eval_train_cost.py --sets letter,banana --epochs 5

Each set runs ``mpiexec -n 2 admm-mpi train --data SET.h5 <suite flags> --iters E --no-early-stopping``
with ``--eval-train every`` and with ``--eval-train end``, interleaved (every, end, every, end, ...)
so the machine's load falls on both alike, one BLAS thread per rank. The two runs train the same
weights (tests/test_validation.py); only the evaluation after each epoch differs. Reports per set
the medians over repeats of the summed ``seconds`` of metrics.jsonl (step and evaluation: the wall
time the suite compares with scikit-learn's MLP), the ratio end / every of those medians, and the
evaluations' own seconds per epoch (a run's seconds less its steps'), the saving itself, which the
load moves less than it moves the steps. ``end``'s one forward pass over the training rows, on the
kept model after the loop, is not in metrics.jsonl (no more than the test split's is), nor in the
suite's seconds: one pass, against one per epoch. Writes results/eval_train_cost.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import suite
from common import RESULTS, mpiexec, write_result

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("every", "end")


def run_seconds(path, epochs, eval_train, out):
    """(summed metrics seconds, summed step seconds) of one run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "admm_mpi", "train", "--data", str(path), *suite.COMMON,
           "--iters", str(epochs), "--no-early-stopping", "--eval-train", eval_train, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return sum(r["seconds"] for r in rows), sum(r["step_seconds"] for r in rows)


def main():
    recorded = json.loads((RESULTS / "suite.json").read_text())["sets"]
    large = [s for s in suite.DEFAULT_SETS if recorded.get(s, {}).get("rows", 0) >= suite.LARGE]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default=",".join(large), help="suite sets (default: those of >= 5 000 rows)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-rows", type=int, default=10000, help="as bench/suite.py: MNIST/Fashion training rows")
    p.add_argument("--data-dir", default=str(suite.DATA_DIR))
    args = p.parse_args()
    sets, skipped = suite.prepare_all(args.sets.split(","), args.image_rows, args.data_dir)
    runs = {name: {v: [] for v in VARIANTS} for name in sets}
    steps = {name: {v: [] for v in VARIANTS} for name in sets}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, path in sets.items():
                for variant in VARIANTS:
                    seconds, step = run_seconds(path, args.epochs, variant, Path(tmp) / f"{name}-{variant}-{repeat}")
                    runs[name][variant].append(round(seconds, 4))
                    steps[name][variant].append(round(step, 4))
                    print(json.dumps({"set": name, "eval_train": variant, "repeat": repeat, "seconds": seconds,
                                      "step_seconds": step, "load_1min": os.getloadavg()[0]}), flush=True)
    medians = {n: {v: statistics.median(r[v]) for v in VARIANTS} for n, r in runs.items()}
    ratios = {n: round(m["end"] / m["every"], 4) for n, m in medians.items()}
    step_medians = {n: {v: statistics.median(r[v]) for v in VARIANTS} for n, r in steps.items()}
    # the evaluations' own seconds (a run's seconds less its steps'): the saving itself, less exposed to
    # the load than the whole run's seconds, whose steps vary between repeats by more than it
    evaluation = {n: {v: statistics.median((t - s) / args.epochs for t, s in zip(runs[n][v], steps[n][v]))
                      for v in VARIANTS} for n in runs}
    write_result("eval_train_cost", {
        "benchmark": "summed metrics seconds (step and evaluation) of --eval-train end against every, package "
                     "defaults with bench/suite.py's common flags, medians over interleaved repeats, 2 ranks, "
                     "one BLAS thread each",
        "epochs": args.epochs, "repeats": args.repeats,
        "command_per_run": ["mpiexec -n 2 admm-mpi train --data SET.h5", *suite.COMMON, "--iters", str(args.epochs),
                            "--no-early-stopping", "--eval-train", "every|end"],
        "load_1min_at_end": os.getloadavg()[0], "skipped": skipped,
        "median_seconds": medians, "median_step_seconds": step_medians, "ratio_end_over_every": ratios,
        "median_ratio_over_sets": statistics.median(ratios.values()) if ratios else None,
        "median_evaluation_seconds_per_epoch": evaluation,
        "evaluation_share_of_an_epoch_every": {n: round(evaluation[n]["every"] * args.epochs / medians[n]["every"], 4)
                                               for n in runs},
        "runs": runs, "step_runs": steps})
    print(json.dumps({"medians": medians, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
